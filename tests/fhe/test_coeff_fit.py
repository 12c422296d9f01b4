"""The coefficient-encoded encrypted fit (``linalign.fhe.coeff_fit``): exactness of its
arithmetic, agreement with the plaintext statistics, what a reply reveals, hostile inputs."""

import math

import numpy as np
import pytest
from scipy import stats

from linalign.fhe import base, coeff_fit, fitting, wire
from linalign.fhe.params import F4096, CoeffFitParams, InsecureParamsError, HE_STANDARD_MAX_LOGQ_128
from linalign.fhe.privacy import FloodPolicy

pytestmark = pytest.mark.fhe
ALPHA = 1e-3


def _pair(n=300, d_b=37, d_a=50, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    z_b = rng.standard_normal((n, d_b)) / np.sqrt(d_b) + 0.3
    z_a = scale * (z_b @ rng.standard_normal((d_b, d_a)) / np.sqrt(d_b) + 0.05 * rng.standard_normal((n, d_a)) - 0.5)
    return z_b, z_a


def _bound(client, ann):
    """Per entry of X^T Z_A: 6 flood std plus 6 std of the embeddings' rounding (entries of a
    unit column times errors uniform in +-2^-(z_bits+1): std 2^-(z_bits+1) / sqrt(3)), in the
    client's units (|X_j| / za_scale)."""
    z_round = 2.0 ** -(client.params.z_scale_bits + 1) / math.sqrt(3)
    per = 6 * ann["flood_std"] + 6 * z_round + 1e-9
    return per * np.linalg.norm(client._x, axis=0)[:, None] / ann["za_scale"]


# -- arithmetic -----------------------------------------------------------------------------

def test_params_against_the_128_bit_table():
    assert F4096.log_q == 92 <= HE_STANDARD_MAX_LOGQ_128[4096]
    assert F4096.max_terms == 254 and F4096.headroom_bits == 7
    with pytest.raises(InsecureParamsError, match="128-bit"):
        CoeffFitParams(2048, 23, 3, 46, 14).check()  # 92 bits > 54 at N = 2048
    with pytest.raises(InsecureParamsError, match="prime_bits"):
        CoeffFitParams(4096, 27, 3, 50, 20).check()  # products no longer exact in float64
    with pytest.raises(InsecureParamsError, match="leave 3 bits"):
        CoeffFitParams(4096, 23, 3, 50, 14).check()
    with pytest.raises(InsecureParamsError, match="fields"):
        CoeffFitParams.from_dict({**F4096.to_dict(), "extra": 1})
    with pytest.raises(InsecureParamsError, match="not an int"):
        CoeffFitParams.from_dict({**F4096.to_dict(), "prime_bits": 1e999})
    assert CoeffFitParams.from_dict(F4096.to_dict()) == F4096


def test_products_are_exact():
    """The NTT-domain matrix products, reductions and extraction agree with Python integers."""
    rng = np.random.default_rng(0)
    q = 8273921
    a = rng.integers(-q // 2, q // 2, size=(7, F4096.max_terms)).astype(np.float64)
    b = rng.integers(0, q, size=(F4096.max_terms, 5)).astype(np.float64)
    got = coeff_fit._fmod_inplace(a @ b, q)
    want = (a.astype(np.int64).astype(object) @ b.astype(np.int64).astype(object)) % q
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))
    x = rng.integers(0, q, size=5000).astype(np.float64)
    np.testing.assert_array_equal(coeff_fit._centre_inplace(x.copy(), q), np.where(x > q // 2, x - q, x))
    # The centred reduction of the plaintext builder: congruent, |r| <= q/2 + 1, up to 2^53,
    # half-integer quotients included.
    big = np.concatenate([rng.integers(-2**52, 2**52, size=20000), [q // 2, -(q // 2), q // 2 + 1, 2**52 - 1],
                          (np.arange(-50, 50) * q + q // 2)]).astype(np.float64)
    got = coeff_fit._cmod_inplace(big.copy(), q)
    assert np.abs(got).max() <= q // 2 + 1
    np.testing.assert_array_equal(np.mod(big.astype(np.int64) - got.astype(np.int64), q), 0)


def test_secure_ternary_is_uniform_and_maps_to_residues():
    digits = coeff_fit._secure_ternary(64, 4096)
    assert digits.dtype == np.uint8 and digits.shape == (64, 4096) and digits.max() <= 2
    counts = np.bincount(digits.ravel(), minlength=3)
    assert stats.chisquare(counts).pvalue > ALPHA
    moduli = [8183809, 8257537, 8273921]
    res = coeff_fit._ternary_residues(digits, moduli, np.empty((64, 3, 4096), np.uint64))
    u = digits.astype(np.int64) - 1
    for p, q in enumerate(moduli):
        np.testing.assert_array_equal(res[:, p].astype(np.int64), np.mod(u, q))


def test_powers_match_python_pow():
    q = 8273921
    rng = np.random.default_rng(3)
    r = rng.integers(0, q, size=9).astype(np.uint64)
    exps = np.array([0, 1, 63, 64, 65, 127, 128, 4095, 8191, 5000])
    got = coeff_fit._powers(r, exps, q)
    want = np.array([[pow(int(x), int(e), q) for x in r] for e in exps], np.uint64)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="exponents >= 0"):
        coeff_fit._powers(r, np.array([-1]), q)


def test_secure_noise_is_the_centred_binomial():
    """e = pop(24 bits) - pop(24 bits): e + 24 ~ Binomial(48, 1/2) (chi-square over the bins
    with at least 5 expected), std sqrt(12)."""
    e = coeff_fit._secure_noise((4, 1, 50000))
    assert e.shape == (4, 1, 50000) and e.dtype == np.int64 and np.abs(e).max() <= 24
    counts = np.bincount((e + 24).ravel(), minlength=49)
    expected = stats.binom.pmf(np.arange(49), 48, 0.5) * e.size
    keep = expected >= 5
    obs, exp = counts[keep], expected[keep]
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > ALPHA
    assert abs(e.std() - math.sqrt(12)) < 0.02


def test_switch_and_crt_match_python_integers():
    moduli = [8183809, 8257537, 8273921]
    big = math.prod(moduli)
    rng = np.random.default_rng(1)
    vals = [int(v) for v in rng.integers(0, 2**62, size=20000)] + [big - 5, 3, big // 2 - 7, 0, big - 1]
    vals += [k * moduli[-1] + moduli[-1] // 2 + d for k in (0, 1, 12345) for d in (0, 1)]  # rounding ties
    for mods in (moduli, moduli[1:]):  # three primes (two kept) and two (one kept)
        res = np.array([[v % q for v in vals] for q in mods], np.uint64)
        got = coeff_fit._switch_crt(res, mods)
        for v, g in zip(vals, got.tolist()):
            t = v % mods[-1]
            t = t - mods[-1] if t > mods[-1] // 2 else t
            assert g == ((v - t) // mods[-1]) % math.prod(mods[:-1])
    with pytest.raises(ValueError, match="two or three primes"):
        coeff_fit._switch_crt(res, [moduli[0]])
    small = [int(v) for v in rng.integers(-2**61, 2**61, size=200)]
    res = np.array([[v % q for v in small] for q in moduli], np.uint64)
    np.testing.assert_array_equal(coeff_fit._crt_small(res, moduli), np.array(small, np.int64))


def test_layout_choice_respects_the_limits():
    for n, h, d_a in [(4096, 385, 768), (300, 38, 50), (2048, 129, 384), (70, 2, 3)]:
        lay = coeff_fit.choose_layout(n, h, d_a, F4096)
        assert lay.chunk * lay.cols * lay.batch <= 4096
        assert lay.queries <= F4096.max_terms and lay.queries * lay.replies <= coeff_fit.MAX_PLAINTEXTS
        assert lay.queries * lay.chunk >= n and lay.replies * lay.cols >= d_a


# -- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("n,d_b,d_a,scale", [(300, 37, 50, 1.0), (700, 9, 30, 300.0)])
def test_encrypted_stats_match_plaintext(n, d_b, d_a, scale):
    from linalign.align.solve import solve
    from linalign.align.stats import from_arrays

    z_b, z_a = _pair(n, d_b, d_a, scale=scale)  # scale 300: columns far above norm 64 (za_scale)
    client = fitting.make_fit_client(z_b, d_a)
    provider = fitting.make_fit_provider(client.public_context(), z_a)
    assert isinstance(provider, coeff_fit.CoeffFitProvider) and not provider.is_private()
    cross, sizes = fitting.encrypted_cross(client, provider)
    ann = provider.announce()
    assert 0 < ann["flood_std"] < 1e-3 and ann["za_col_norm"] <= 64
    err = np.abs(cross - client._x.T @ z_a)
    bound = _bound(client, ann)
    assert np.all(err <= bound), float((err / bound).max())
    assert sizes["up_bytes"] > 0 and sizes["down_bytes"] > 0
    w, b = solve(client.stats(cross), 1e-2)
    w0, b0 = solve(from_arrays(z_b, z_a), 1e-2)
    scale_w = max(1.0, float(np.abs(np.asarray(w0)).max()))
    np.testing.assert_allclose(np.asarray(w), np.asarray(w0), rtol=0, atol=2e-3 * scale_w)
    np.testing.assert_allclose(np.asarray(b), np.asarray(b0), rtol=0, atol=2e-3 * max(1.0, float(np.abs(b0).max())))


def test_groups_messages_and_exactly_the_declared_coefficients():
    """Several groups and messages; the last group is partial and only its real columns are
    answered: the replies carry exactly (d_b + 1) d_a score coefficients."""
    z_b, z_a = _pair(n=250, d_b=40, d_a=21)
    lay = coeff_fit.choose_layout(250, 41, 21, F4096)
    small = coeff_fit.CoefficientLayout(d=lay.d, k=lay.k, n=lay.n, chunk=lay.chunk, cols=lay.cols, batch=16)
    client = coeff_fit.CoeffFitClient(z_b, 21, groups_per_message=2, _layout=small)
    assert client.geo.groups == 3 and client.num_messages == 2  # 16 + 16 + 9 columns
    provider = coeff_fit.CoeffFitProvider(client.public_context(), z_a)
    client.set_provider_bounds(provider.announce())
    sent = 0
    rows = []
    for i in range(client.num_messages):
        rep = provider.cross(client.encrypt_message(i))
        meta, blobs = base.unpack_blobs(rep)
        for blob, j in zip(blobs, client.message_groups(i)):
            counts = client.geo.counts(j)
            assert len(blob) == wire.sparse_reply_bytes(client.geo.q_kept, 4096, counts, client.drop_bits)
            sent += sum(counts)
        rows.append(client.decrypt_message(rep, i))
    assert sent == 41 * 21
    assert provider.done
    err = np.abs(np.concatenate(rows) - client._x.T @ z_a)
    assert np.all(err <= _bound(client, provider.announce()))


# -- what a reply reveals --------------------------------------------------------------------

def _one_group(seed=0):
    z_b, z_a = _pair(n=300, d_b=12, d_a=20, seed=seed)
    client = coeff_fit.CoeffFitClient(z_b, 20)
    provider = coeff_fit.CoeffFitProvider(client.public_context(), z_a, FloodPolicy(12))
    client.set_provider_bounds(provider.announce())
    return z_b, z_a, client, provider


def test_sent_coefficients_are_the_product_plus_the_announced_flood():
    """Every decrypted coefficient minus the exact product of the encoded columns and
    embeddings is N(0, announced std^2): KS test (the c1 rounding and the switch add < 1 %)."""
    z_b, z_a, client, provider = _one_group()
    ann = provider.announce()
    vals = client._decrypt_group(base.unpack_blobs(provider.cross(client.encrypt_message(0)))[1][0], 0,
                                 client.drop_bits)
    lay = client.layout
    x_int = client._group_coeffs(0)
    cols = client.geo.group_columns(0)
    xs = x_int[:, : cols * lay.chunk].reshape(lay.queries, cols, lay.chunk).transpose(1, 0, 2).reshape(cols, -1)
    zs = np.rint(z_a * ann["za_scale"] * 2.0**client.params.z_scale_bits)
    exact = (xs[:, :300].astype(np.float64) @ zs) / client.geo.scale
    resid = (vals - exact).ravel() / ann["flood_std"]
    assert stats.kstest(resid, "norm").pvalue > ALPHA
    assert np.abs(resid).max() < 10


def test_c1_is_rerandomised():
    """Without re-randomisation c1 = sum_t a_t W_tg is a public function of the client's seeds
    and Z_A; every c1 the provider sends differs from it in (nearly) every coefficient."""
    z_b, z_a, client, provider = _one_group()
    msg = client.encrypt_message(0)
    groups, cts = provider._parse(msg)
    _, plain_c1 = provider._coefficients(provider._products(cts.copy(), private=False).copy(), 0, private=False)
    plain_c1 = plain_c1.copy()
    _, c1 = provider._coefficients(provider._products(cts, private=True), 0, private=True)
    assert np.mean(plain_c1 == c1) < 1e-3


def test_indicator_columns_yield_only_their_rows_and_the_machine_closes():
    n, d_a, d_b = 300, 20, 4
    _, z_a = _pair(n=n, d_b=3, d_a=d_a)
    rows = [5, 77, 190, 260]
    z_b = np.zeros((n, d_b))
    z_b[rows, np.arange(d_b)] = 1.0
    client = coeff_fit.CoeffFitClient(z_b, d_a)
    provider = coeff_fit.CoeffFitProvider(client.public_context(), z_a)
    cross, _ = fitting.encrypted_cross(client, provider)
    err = np.abs(cross - client._x.T @ z_a)
    assert np.all(err <= _bound(client, provider.announce()))
    with pytest.raises(fitting.FitProtocolError, match="already answered"):
        provider.cross(client.encrypt_message(0))


# -- hostile input ---------------------------------------------------------------------------

def test_state_machine_and_malformed_messages():
    z_b, z_a = _pair(n=200, d_b=40, d_a=9)
    lay = coeff_fit.choose_layout(200, 41, 9, F4096)
    small = coeff_fit.CoefficientLayout(d=lay.d, k=lay.k, n=lay.n, chunk=lay.chunk, cols=lay.cols, batch=16)
    client = coeff_fit.CoeffFitClient(z_b, 9, groups_per_message=1, _layout=small)
    provider = coeff_fit.CoeffFitProvider(client.public_context(), z_a)
    msg = client.encrypt_message(1)
    meta, blobs = base.unpack_blobs(msg)
    bad = [
        (base.pack_blobs({**meta, "kind": "x"}, blobs), base.DeserializationError, "kind"),
        (base.pack_blobs({**meta, "first": True}, blobs), base.DeserializationError, "int first"),
        (base.pack_blobs({**meta, "first": 3}, blobs), fitting.FitProtocolError, "out of range"),
        (base.pack_blobs({**meta, "count": 0}, blobs), fitting.FitProtocolError, "out of range"),
        (base.pack_blobs(meta, blobs[:-1]), base.DeserializationError, "ciphertexts"),
        (base.pack_blobs(meta, blobs[:-1] + [blobs[-1][:-1]]), base.DeserializationError, "bytes"),
        (base.pack_blobs(meta, blobs[:-1] + [blobs[-1][:-8] + b"\xff" * 8]), base.DeserializationError,
         "below its prime"),
    ]
    for m, err, match in bad:
        with pytest.raises(err, match=match):
            provider.cross(m)
    provider.cross(msg)  # a refused message spends nothing; once parsed, its groups are spent
    with pytest.raises(fitting.FitProtocolError, match="already answered"):
        provider.cross(msg)
    provider.cross(client.encrypt_message(0))
    provider.cross(client.encrypt_message(2))
    assert provider.done
    with pytest.raises(fitting.FitProtocolError, match="already answered"):
        provider.cross(client.encrypt_message(2))


def test_bad_contexts_and_inputs_are_refused():
    z_b, z_a = _pair(n=120, d_b=5, d_a=7)
    client = coeff_fit.CoeffFitClient(z_b, 7)
    meta, blobs = base.unpack_blobs(client.public_context())
    big = client.params.poly_modulus_degree
    cases = [
        ({**meta, "extra": 1}, blobs, "fields"),
        ({**meta, "batch": big}, blobs, "layout"),
        ({**meta, "chunk": 1, "cols": 1, "batch": 1}, blobs, "layout"),  # T = 120 is fine, batch ok
        ({**meta, "params": {**meta["params"], "prime_bits": 30}}, blobs, "params"),
        (meta, [b"junk"], "public key"),
        ({**meta, "backend": "seal-fit"}, blobs, "not a seal-coeff-fit"),
    ]
    for m, bl, match in cases:
        ctx = base.pack_blobs(m, bl)
        if match == "layout" and m.get("chunk") == 1:
            coeff_fit.CoeffFitProvider(ctx, z_a, bound=1e-10)  # a valid (if wasteful) layout is served
            continue
        with pytest.raises(base.DeserializationError, match=match):
            coeff_fit.CoeffFitProvider(ctx, z_a, bound=1e-10)
    with pytest.raises(base.FHEError, match="rows"):
        coeff_fit.CoeffFitProvider(client.public_context(), z_a[:100], bound=1e-10)
    with pytest.raises(base.FHEError, match="shape"):
        coeff_fit.CoeffFitProvider(client.public_context(), z_a[:, :5], bound=1e-10)
    bad = z_b.copy()
    bad[3, 1] = np.nan
    with pytest.raises(base.FHEError, match="non-finite"):
        coeff_fit.CoeffFitClient(bad, 7)
    with pytest.raises(base.FHEError, match="unknown fit backend"):
        fitting.make_fit_client(z_b, 7, "nope")


def test_corrupt_reply_is_refused_by_the_client():
    z_b, z_a, client, provider = _one_group()
    rep = provider.cross(client.encrypt_message(0))
    meta, blobs = base.unpack_blobs(rep)
    body = bytearray(blobs[0])
    body[wire._SPARSE_HDR.size + 5] ^= 0x10  # bit 44 of the first score's c0 (46-bit residues)
    with pytest.raises(base.FHEError, match="exceeds the possible|not below"):
        client.decrypt_message(base.pack_blobs(meta, [bytes(body)]), 0)
    with pytest.raises(base.DeserializationError, match="fit-reply"):
        client.decrypt_message(base.pack_blobs({**meta, "first": 1}, blobs), 0)

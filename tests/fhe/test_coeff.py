"""Coefficient-encoded linear layer (backend ``seal-coeff``): layout, precision, privacy, hostile bytes."""

import numpy as np
import pytest

from linalign.fhe import base, wire
from linalign.fhe.packing import CoefficientLayout, negacyclic
from linalign.fhe.params import (C4096, HE_STANDARD_MAX_LOGQ_128, CoeffParams, InsecureParamsError,
                                 get_coeff_params)
from linalign.fhe.privacy import FloodPolicy

pytestmark = pytest.mark.fhe


def _floats(coeffs, scale=2.0**50):
    """decrypt_coeffs' exact per-reply integers -> float values."""
    return [np.asarray([float(v) for v in g]) / scale for g in coeffs]


def _head(d, k, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(d) / np.sqrt(d), rng.standard_normal((d, k)) / np.sqrt(d) * 3,
            rng.standard_normal(k))


@pytest.mark.parametrize("d,k,n,b", [(768, 16, 4096, 1), (4096, 16, 4096, 1), (5000, 3, 4096, 1), (5, 3, 8, 1),
                                     (10, 7, 8, 1), (8, 8, 8, 1), (1, 1, 8, 1), (64, 3, 4096, 1), (768, 16, 4096, 4),
                                     (3, 3, 8, 2), (2, 5, 8, 4), (100, 7, 512, 3)])
def test_layout_replay_is_exact(d, k, n, b):
    _, v, c = _head(d, k, seed=d + k)
    x = np.random.default_rng(d).standard_normal((b, d))
    lay = CoefficientLayout.make(d, k, n, 3 * n, n, batch=b)
    assert lay.queries * lay.chunk >= d and lay.cols * lay.chunk * b <= n and lay.replies * lay.cols >= k
    np.testing.assert_allclose(lay.simulate(x, v, c), x @ v + c, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lay.simulate(x[0], v, c), x[0] @ v + c, rtol=0, atol=1e-10)
    if b > 1:  # a partial batch: the other queries' positions hold zeros, nothing leaks across
        np.testing.assert_allclose(lay.simulate(x[:1], v, np.zeros(k)), x[:1] @ v, rtol=0, atol=1e-10)
        full = lay.scores(lay.simulate_coeffs(x[:1], v), b)
        np.testing.assert_array_equal(full[1:], 0)
    # The score positions of a reply are distinct and every other coefficient is not a score.
    for g in range(lay.replies):
        pos = lay.positions(g)
        assert len(set(pos.tolist())) == len(pos) and pos.max() < n


def test_negacyclic_wraps_with_a_sign():
    a = np.array([0, 0, 0, 1.0])  # X^3
    np.testing.assert_array_equal(negacyclic(a, np.array([0, 1.0, 0, 0])), [-1.0, 0, 0, 0])  # X^4 = -1


def test_layout_minimises_bytes():
    # A query polynomial at 3 units, a reply at 1: d=768, K=16 at N=4096 is cheapest as one
    # chunk of 768 (5 columns per reply: 3 + 4 x 1 = 7) rather than two of 384 (2 x 3 + 2 = 8).
    assert CoefficientLayout.make(768, 16, 4096, 3, 1).queries == 1
    # With the real sizes (a seeded 60-bit query 30,760 B, a 32-bit rounded c1 16,384 B) two
    # chunks of 384 win: 61,520 + 2 x 16,384 = 94,288 B against 30,760 + 4 x 16,384 = 96,296 B.
    lay = CoefficientLayout.make(768, 16, 4096, 30_760, 16_384)
    assert (lay.queries, lay.replies, lay.chunk, lay.cols) == (2, 2, 384, 10)


def test_params_checked_against_the_security_table():
    assert C4096.prime_bits <= HE_STANDARD_MAX_LOGQ_128[4096]
    assert get_coeff_params("c4096") is C4096 and get_coeff_params(None) is C4096
    CoeffParams(2048, 54, 30, 12).check()  # the table's bound at N=2048 is 54 bits
    with pytest.raises(InsecureParamsError, match="exceeds the 54 bits"):
        CoeffParams(2048, 55, 30, 12).check()
    with pytest.raises(InsecureParamsError, match="not in the 128-bit table"):
        CoeffParams(3000, 40, 20, 10).check()
    with pytest.raises(InsecureParamsError, match="scores would wrap"):
        CoeffParams(4096, 50, 36, 12).check()
    with pytest.raises(InsecureParamsError, match=r"\[20, 60\]"):
        CoeffParams(8192, 61, 36, 14).check()
    with pytest.raises(InsecureParamsError, match="exactly the fields"):
        CoeffParams.from_dict({**C4096.to_dict(), "extra": 1})
    with pytest.raises(InsecureParamsError, match="not an int"):
        CoeffParams.from_dict({**C4096.to_dict(), "prime_bits": 60.0})
    with pytest.raises(InsecureParamsError, match="unknown coefficient preset"):
        get_coeff_params("n8192")
    assert CoeffParams.from_dict(C4096.to_dict()) == C4096


@pytest.mark.parametrize("d,k", [(768, 16), (4096, 16), (5, 1), (1000, 3)])
def test_scores_match_plaintext(d, k):
    x, v, c = _head(d, k, seed=d)
    client = base.make_client("seal-coeff", d, k)
    provider = base.make_provider(client.public_context())
    assert (provider.name, provider.d_in, provider.k_out) == ("seal-coeff", d, k)
    got = client.decrypt(provider.linear(client.encrypt(x), v, c))
    # The head is encoded at 2^14: each entry is off by <= 2^-15, a score by <= |x|_1 2^-15
    # (|x| = 1: <= 2e-3 at d = 4096, ~1e-5 typically); the noise is ~1e-10 and the reply's
    # rounding of c1 to 32 bits ~4e-6 (std; ``reply_drop_bits``).
    lay = client.layout
    vq = np.rint(v * 2.0**14) / 2.0**14
    xq = np.rint(x * 2.0**36) / 2.0**36
    np.testing.assert_allclose(got, xq @ vq + c, rtol=0, atol=3e-5)
    np.testing.assert_allclose(got, x @ v + c, rtol=0, atol=np.abs(x).sum() * 2.0**-15 + 3e-5)
    provider.reply_drop_bits = 0  # unrounded: the encryption noise alone
    full = client.decrypt_coeffs(provider.linear(client.encrypt(x), v, c), drop_bits=0)
    np.testing.assert_allclose(lay.scores(_floats(full)), xq @ vq + c, rtol=0, atol=1e-8)
    assert lay.queries * lay.replies == provider.layout.multiplies


def test_batched_queries_against_plaintext_and_batch_field_checked():
    d, k, b = 768, 16, 4
    _, v, c = _head(d, k, seed=5)
    xs = np.random.default_rng(5).standard_normal((b, d)) / np.sqrt(d)
    client = base.make_client("seal-coeff", d, k, batch=b)
    provider = base.make_provider(client.public_context())
    assert provider.queries_per_message == b == client.batch
    head = provider.prepare(v, c)
    atol = np.abs(xs).sum(1).max() * 2.0**-15 + 3e-5
    np.testing.assert_allclose(client.decrypt_batch(provider.apply(client.encrypt_batch(xs), head)),
                               xs @ v + c, rtol=0, atol=atol)
    np.testing.assert_allclose(client.decrypt_batch(provider.apply(client.encrypt_batch(xs[:3]), head), 3),
                               xs[:3] @ v + c, rtol=0, atol=atol)
    sizes = client.wire_sizes(provider, head)
    assert sizes.per_query_bytes / b < 100_000 / 2  # B queries share the upload
    with pytest.raises(base.FHEError, match=r"n <= 4"):
        client.encrypt_batch(xs.repeat(2, 0))
    meta, blobs = base.unpack_blobs(client.public_context())
    for bad, what in ((True, "not an int"), (3.0, "not an int"), (1, "not an int"), (1 << 20, "not an int"),
                      (8192, r"batch must be an int in \[1, N=4096\]"), (4096, "head plaintexts")):
        with pytest.raises(base.DeserializationError, match=what):
            base.make_provider(base.pack_blobs({**meta, "batch": bad}, blobs))
    policy = FloodPolicy()
    std = provider.enable_privacy(provider.calibrate(v, c, 1.5, policy), policy)
    got = client.decrypt_batch(provider.apply(client.encrypt_batch(xs), head))
    np.testing.assert_allclose(got, xs @ v + c, rtol=0, atol=atol + 6 * std)


def test_setup_has_no_galois_keys_and_messages_are_small():
    """d=768, K=16: the public context is the public key alone (< 1 MB), a query plus its
    reply <= 100 KB; d=4096: <= 200 KB."""
    for d, k, limit in ((768, 16, 100_000), (4096, 16, 200_000)):
        x, v, c = _head(d, k)
        client = base.make_client("seal-coeff", d, k)
        meta, blobs = base.unpack_blobs(client.public_context())
        assert len(blobs) == 1 and "steps" not in meta
        provider = base.make_provider(client.public_context())
        sizes = client.wire_sizes(provider)
        assert sizes.setup_bytes < 100_000 and sizes.per_query_bytes <= limit, sizes
        q = provider._q
        counts = [len(client.layout.positions(g)) for g in range(client.layout.replies)]
        body = base.unpack_blobs(provider.linear(client.encrypt(x), v, c))[1][0]
        # Exactly K coefficients of c0 travel: the partial sums at the other positions never do.
        assert sum(counts) == k
        assert len(body) == wire.sparse_reply_bytes(q, 4096, counts, provider.reply_drop_bits)


def test_secret_key_never_on_the_wire():
    import seal

    client = base.make_client("seal-coeff", 64, 4)
    sk = client.secret_key_bytes()
    window = sk[len(sk) // 2 : len(sk) // 2 + 64]
    q = client.encrypt(np.ones(64))
    assert window not in client.public_context() and window not in q
    from linalign.fhe.seal_backend import make_context

    ctx = make_context(client.params)
    for blob in base.unpack_blobs(client.public_context())[1] + base.unpack_blobs(q)[1]:
        with pytest.raises((RuntimeError, ValueError)):
            ctx.from_secret_str(blob)
    assert isinstance(ctx.from_secret_str(sk), seal.SecretKey)


@pytest.fixture(scope="module")
def flooded():
    d, k = 768, 16
    _, v, c = _head(d, k, seed=3)
    client = base.make_client("seal-coeff", d, k)
    provider = base.make_provider(client.public_context())
    policy = FloodPolicy()
    bound = provider.calibrate(v, c, 1.5, policy)
    std = provider.enable_privacy(bound, policy)
    return client, provider, provider.prepare(v, c), v, c, bound, std


def test_flooded_scores_keep_precision(flooded):
    client, provider, head, v, c, bound, std = flooded
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((8, 768)) / np.sqrt(768)
    want = xs @ v + c
    got = np.stack([client.decrypt(provider.apply(client.encrypt(x), head)) for x in xs])
    # std = 2^12 sqrt(K) B ~ 1e-4 at these scales; head rounding adds <= |x|_1 2^-15.
    assert 1e-7 < std < 1e-3, std
    np.testing.assert_allclose(got, want, rtol=0, atol=6 * std + 2e-4)
    assert np.abs(got - want).max() <= 1e-3 * (want.max() - want.min())


def test_flood_is_gaussian_with_the_announced_std_and_replies_are_rerandomised(flooded):
    """Each score's error is N(0, std^2) (the noise it floods is ~1e-6 std); two replies to one
    query differ in every score and in almost every c1 coefficient (fresh Enc_pk(0))."""
    from scipy import stats

    client, provider, head, v, c, bound, std = flooded
    x = np.full(768, 1 / np.sqrt(768))
    query = client.encrypt(x)
    exact = client.layout.simulate(x, np.rint(v * 2.0**14) / 2.0**14, c)
    errs = np.concatenate([client.decrypt(provider.apply(query, head)) - exact for _ in range(30)])
    assert stats.kstest(errs / std, "norm").pvalue > 1e-3
    r1, r2 = (base.unpack_blobs(provider.apply(query, head))[1][0] for _ in range(2))
    counts = [len(client.layout.positions(g)) for g in range(client.layout.replies)]
    p1 = wire.load_sparse(r1, "r", provider._q, 4096, counts, 2.0**50, provider.reply_drop_bits)
    p2 = wire.load_sparse(r2, "r", provider._q, 4096, counts, 2.0**50, provider.reply_drop_bits)
    for (a0, a1), (b0, b1) in zip(p1, p2):
        assert np.all(a0 != b0) and np.mean(a1 != b1) > 0.99


def test_calibrated_bound_covers_the_unflooded_error():
    from linalign.fhe.coeff_backend import CoeffClient, CoeffProvider, calibrate

    _, v, c = _head(768, 16, seed=4)
    policy = FloodPolicy()
    bound = calibrate(C4096, v, c, 1.0, policy)
    client = CoeffClient(768, 16)
    provider = CoeffProvider(client.public_context())
    provider.reply_drop_bits = 0
    head = provider.prepare(v, c)
    rng = np.random.default_rng(2)
    for x in rng.standard_normal((3, 768)) / np.sqrt(768):
        got = client.decrypt_coeffs(provider.apply(client.encrypt(x), head), drop_bits=0)
        exact = client.layout.simulate(np.rint(x * 2.0**36) / 2.0**36, np.rint(v * 2.0**14) / 2.0**14, c)
        err = np.abs(client.layout.scores(_floats(got)) - exact).max()
        assert err <= bound / policy.margin * 2  # B = margin x the largest error seen
        assert 1e-12 < bound < 1e-6


def test_hostile_bytes_named():
    d, k = 64, 3
    x, v, c = _head(d, k)
    client = base.make_client("seal-coeff", d, k)
    provider = base.make_provider(client.public_context())
    head = provider.prepare(v, c)
    q = client.encrypt(x)
    meta, blobs = base.unpack_blobs(q)
    with pytest.raises(base.DeserializationError, match="with 1 ciphertexts"):
        provider.apply(base.pack_blobs(meta, blobs * 2), head)
    with pytest.raises(base.DeserializationError, match="a ciphertext here has"):
        provider.apply(base.pack_blobs(meta, [blobs[0][:-1]]), head)
    for at, what in ((4, "bad header"), (6, "scale"), (200, "not below its prime")):
        bad = bytearray(blobs[0])
        bad[at : at + 16] = b"\xff" * 16
        with pytest.raises(base.DeserializationError, match=what):
            provider.apply(base.pack_blobs(meta, [bytes(bad)]), head)
    reply = provider.apply(q, head)
    rmeta, rblobs = base.unpack_blobs(reply)
    body = rblobs[0]
    with pytest.raises(base.DeserializationError, match="a reply here has"):
        client.decrypt(base.pack_blobs(rmeta, [body[:-1]]))
    for at, what in ((0, "bad header"), (5, "bad header"), (8, "scale"), (wire._SPARSE_HDR.size, "not below")):
        bad = bytearray(body)
        bad[at : at + 8] = b"\xff" * 8
        with pytest.raises(base.DeserializationError, match=what):
            client.decrypt(base.pack_blobs(rmeta, [bytes(bad)]))
    with pytest.raises(base.FHEError, match=r"shape \(64,\)"):
        client.encrypt(np.zeros(63))
    with pytest.raises(base.FHEError, match="exceeds the modulus"):
        client.encrypt(np.full(64, 1e9))
    with pytest.raises(base.FHEError, match="all zero"):
        provider.apply(q, provider.prepare(np.zeros((d, k)), np.zeros(k)))
    pmeta, pblobs = base.unpack_blobs(client.public_context())
    for change, what in (({"chunk": 32}, "chunk does not match"), ({"steps": [1]}, "fields"),
                         ({"params": {**pmeta["params"], "prime_bits": 200}}, "bad params")):
        with pytest.raises(base.DeserializationError, match=what):
            base.make_provider(base.pack_blobs({**pmeta, **change}, pblobs))
    with pytest.raises(base.DeserializationError, match="bad public key"):
        base.make_provider(base.pack_blobs(pmeta, [pblobs[0][:-10]]))


def test_poly_transform_round_trip_and_product_is_negacyclic():
    """SEAL's NTT through the ciphertext carrier: from_ntt(to_ntt(m)) = m, and decrypting
    Enc(m) x plaintext(w) gives the negacyclic product m w plus small noise (the property the
    whole layout rests on)."""
    import seal

    from linalign.fhe.seal_backend import make_context

    ctx = make_context(C4096)
    keygen = seal.KeyGenerator(ctx)
    enc = seal.Encryptor(ctx, keygen.secret_key())
    codec = wire.CompactCodec(ctx, enc.encrypt_symmetric)
    poly = wire.PolyTransform(codec)
    q = ctx.first_context_data().parms().coeff_modulus()[0].value()
    rng = np.random.default_rng(0)
    m = rng.integers(-1000, 1000, 4096)
    w = np.zeros(4096, np.int64)
    w[rng.choice(4096, 50, replace=False)] = rng.integers(-1000, 1000, 50)
    res = np.mod(m, q).astype(np.uint64)[None]
    np.testing.assert_array_equal(poly.from_ntt(poly.to_ntt(res, 1), 1), res)
    prod = seal.Evaluator(ctx).multiply_plain(enc.encrypt_symmetric(poly.plaintext(m, 2.0**10, 1)),
                                              poly.plaintext(w, 2.0**10, 1))
    plain = seal.Decryptor(ctx, keygen.secret_key()).decrypt(prod)
    # Read the NTT-form plaintext back through the carrier: its coefficients are m w + e.
    blob = plain.to_bytes()
    got = poly.from_ntt(np.frombuffer(blob, np.uint64, 4096, len(blob) - 4096 * 8)[None], 1)[0].astype(object)
    got = np.array([int(g) - q if g > q // 2 else int(g) for g in got])
    want = negacyclic(m.astype(object), w.astype(object))
    err = np.abs(got - np.asarray(want, dtype=np.int64))
    assert err.max() < 1e6, err.max()  # e w with |e| <= 19, 50 terms of |w| < 1000: < 1e6
    assert np.abs(want).max() > 1e6  # the product itself is far above the noise

"""Circuit privacy of replies: masked slots, flooding, re-randomisation, the fit's reveal.

Statistical tests state their false-positive rate: each Kolmogorov-Smirnov test runs at
alpha = 1e-4, so a correct implementation fails one of the few such tests in this file with
probability below 1e-3 (union bound).
"""

import numpy as np
import pytest
from scipy import stats

from linalign.fhe import base, fitting
from linalign.fhe.privacy import FloodPolicy
from linalign.fhe.seal_backend import calibrate

pytestmark = pytest.mark.fhe
ALPHA = 1e-4


def _head(d, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) / np.sqrt(d)
    return x, rng.standard_normal((d, k)) * 0.5, rng.standard_normal(k)


@pytest.fixture(scope="module")
def seal_pair():
    x, v, c = _head(768, 16, seed=3)
    policy = FloodPolicy(12)
    client = base.make_client("seal", 768, 16)
    provider = base.make_provider(client.public_context())
    bound = calibrate(provider.params, v, c, 1.0, policy)
    std = provider.enable_privacy(bound, policy)
    return client, provider, provider.prepare(v, c), (x, v, c), std


def test_flooded_scores_keep_precision(seal_pair):
    client, provider, head, (x, v, c), std = seal_pair
    # lambda_s = 12 at n8192: the flood adds ~3e-5 per slot (measured B ~ 1e-10), ~2e-6
    # per score after averaging the replicas.
    assert 1e-7 < std < 1e-4
    got = client.decrypt(provider.apply(client.encrypt(x), head))
    np.testing.assert_allclose(got, x @ v + c, rtol=0, atol=6 * std)


def test_two_replies_to_one_query_differ(seal_pair):
    client, provider, head, (x, v, c), std = seal_pair
    q = client.encrypt(x)
    r1, r2 = provider.apply(q, head), provider.apply(q, head)
    (b1,), (b2,) = base.unpack_blobs(r1)[1], base.unpack_blobs(r2)[1]
    assert b1 != b2
    # Both c0 and c1 are re-randomised: no 64-byte window of one appears in the other.
    mid = len(b1) // 2
    assert b1[mid : mid + 64] not in b2 and b1[-64:] not in b2
    d1, d2 = client.decrypt(r1), client.decrypt(r2)
    assert np.all(d1 != d2)
    np.testing.assert_allclose(d1, d2, rtol=0, atol=12 * std)


def test_non_score_slots_are_flooding_noise(seal_pair):
    """Every slot holds a replica of a score (or 0) plus N(0, std^2) noise and nothing else:
    KS test of the residuals at alpha = 1e-4."""
    client, provider, head, (x, v, c), std = seal_pair
    slots = client.decrypt_slots(provider.apply(client.encrypt(x * 3), head))
    resid = slots - client.layout.simulate_slots(x * 3, v, c)
    p = stats.kstest(resid / std, "norm").pvalue
    assert p > ALPHA, p
    assert np.abs(resid).max() < 10 * std
    # Averaging the M replicas divides the noise by sqrt(M).
    avg = client.decrypt(provider.apply(client.encrypt(x * 3), head))
    np.testing.assert_allclose(avg, 3 * x @ v + c, rtol=0, atol=6 * std / np.sqrt(client.layout.replicas))


def test_windowed_layout_masks_partial_sums():
    """seal-v1 (previous layout): every slot but the K scores is flooding noise only."""
    x, v, c = _head(64, 4, seed=5)
    policy = FloodPolicy(12)
    client = base.make_client("seal-v1", 64, 4)
    provider = base.make_provider(client.public_context())
    std = provider.enable_privacy(calibrate(provider.params, v, c, 1.0, policy, backend="seal-v1"), policy)
    slots = client.decrypt_slots(provider.apply(client.encrypt(x), provider.prepare(v, c)))
    other = np.delete(slots, client.layout.score_slots())
    assert stats.kstest(other / std, "norm").pvalue > ALPHA
    np.testing.assert_allclose(slots[client.layout.score_slots()], x @ v + c, rtol=0, atol=6 * std)


def test_small_ring_refused_for_private_replies():
    """N = 4096 cannot carry a flooded reply at useful precision (docs/notes/helix.md)."""
    client = base.make_client("seal", 64, 4, "n4096")
    provider = base.make_provider(client.public_context())
    with pytest.raises(base.FHEError, match="cannot carry"):
        provider.enable_privacy(1e-6, FloodPolicy(12))


def _fit_pair(n=300, d_b=6, d_a=20, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.standard_normal((n, d_b)) / np.sqrt(d_b)
    z_a = rng.standard_normal((n, d_a)) / np.sqrt(d_a) + 0.2
    return z_b, z_a


def test_fit_reply_reveals_only_the_declared_products():
    """Slot s of a fit reply is (X_j^T Z_A)[s mod D] (a replica) for s mod D < d_a and 0
    beyond, plus N(0, std^2) flooding noise, and nothing else: KS test of the residuals."""
    z_b, z_a = _fit_pair()
    client = fitting.FitClient(z_b, z_a.shape[1])
    provider = fitting.FitProvider(client.public_context(), z_a, FloodPolicy(12))
    ann = provider.announce()
    client.set_provider_bounds(ann)
    std = ann["flood_std"]
    slots = client.decrypt_slots(provider.cross(client.encrypt_column(0)))
    x0 = client._x[:, 0] * client._col_scale[0]
    res = np.zeros(client.layout.d_pad)
    res[: z_a.shape[1]] = ann["za_scale"] * z_a.T @ x0
    resid = slots - np.tile(res, client.layout.slots // client.layout.d_pad)
    p = stats.kstest(resid / std, "norm").pvalue
    assert p > ALPHA, p
    assert np.abs(resid).max() < 10 * std


def test_indicator_columns_yield_only_their_rows():
    """A client whose Z_B is indicator columns learns those rows of Z_A, nothing else."""
    n, d_a, d_b = 300, 20, 4
    _, z_a = _fit_pair(n=n, d_a=d_a)
    rows = [5, 77, 190, 260]
    z_b = np.zeros((n, d_b))
    z_b[rows, np.arange(d_b)] = 1.0  # centring makes column j = e_row - 1/n: still row-selective
    client = fitting.FitClient(z_b, d_a)
    provider = fitting.FitProvider(client.public_context(), z_a, FloodPolicy(12))
    cross, _ = fitting.encrypted_cross(client, provider)
    want = client._x.T @ z_a
    std = provider.announce()["flood_std"] / provider.announce()["za_scale"]
    np.testing.assert_allclose(cross, want, rtol=0, atol=6 * std * np.linalg.norm(client._x, axis=0).max())
    # No further column can be asked for: the provider's state machine has closed.
    with pytest.raises(fitting.FitProtocolError, match="already answered"):
        provider.cross(client.encrypt_column(0))


def test_fit_state_machine():
    z_b, z_a = _fit_pair(n=200, d_b=3)
    client = fitting.FitClient(z_b, z_a.shape[1])
    provider = fitting.FitProvider(client.public_context(), z_a, FloodPolicy(12), bound=1e-9)
    client.set_provider_bounds(provider.announce())
    col = client.encrypt_column(2)
    provider.cross(col)
    with pytest.raises(fitting.FitProtocolError, match="column 2 was already answered"):
        provider.cross(col)
    meta, blobs = base.unpack_blobs(col)
    for bad_j, msg in ((4, "out of range"), (-1, "out of range"), (10**9, "out of range")):
        with pytest.raises(fitting.FitProtocolError, match=msg):
            provider.cross(base.pack_blobs({**meta, "j": bad_j}, blobs))
    with pytest.raises(base.DeserializationError, match="int j"):
        provider.cross(base.pack_blobs({**meta, "j": True}, blobs))
    for j in (0, 1, 3):
        client.decrypt_column(provider.cross(client.encrypt_column(j)), j)
    assert provider.done
    with pytest.raises(fitting.FitProtocolError, match="all 4 columns"):
        provider.cross(client.encrypt_column(0))


def test_fit_reply_with_impossible_magnitude_refused():
    z_b, z_a = _fit_pair(n=200, d_b=2)
    client = fitting.FitClient(z_b, z_a.shape[1])
    provider = fitting.FitProvider(client.public_context(), z_a, FloodPolicy(12), bound=1e-9)
    ann = provider.announce()
    client.set_provider_bounds({**ann, "za_col_norm": ann["za_col_norm"] / 1000})  # a lying bound
    with pytest.raises(base.FHEError, match="exceeds the possible"):
        client.decrypt_column(provider.cross(client.encrypt_column(0)), 0)


def test_flood_noise_has_full_integer_resolution():
    """A rounded float Gaussian at sigma ~ 2^74 would only hit multiples of ~2^21 and leave the
    error's low bits readable; the (hi, lo) construction reaches every integer."""
    from linalign.fhe.privacy import _residues, integer_gaussian

    rng = np.random.default_rng(0)
    hi, lo = integer_gaussian(rng, 2.0**74, 4000)
    vals = [int(h) * 2**31 + int(l) for h, l in zip(hi, lo)]
    assert np.std(np.asarray(vals, dtype=np.float64)) == pytest.approx(2.0**74, rel=0.05)
    low = np.array([v % 1024 for v in vals])
    # Low 10 bits uniform over 0..1023: chi-square test at alpha = 1e-4 (16 bins).
    p = stats.chisquare(np.bincount(low // 64, minlength=16)).pvalue
    assert p > ALPHA, p
    qs = [1125899905744897, 1125899906629633, (1 << 59) - 55]
    res = _residues(hi, lo, qs)
    for j, q in enumerate(qs):
        assert [int(r) for r in res[j]] == [v % q for v in vals]

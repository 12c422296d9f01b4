"""Encrypted linear layer: every backend against plaintext scores, and key hygiene."""

import numpy as np
import pytest

from linalign.fhe import base
from linalign.fhe.packing import PackedLayout

pytestmark = pytest.mark.fhe

# (d, K) per backend: TenSEAL's matmul costs seconds at d=768, so it gets small shapes.
CASES = [
    ("seal", 768, 16),
    ("seal", 384, 5),
    ("seal", 1024, 3),
    ("tenseal-dot", 384, 5),
    ("tenseal", 64, 4),
]


def _head(d, k, seed=0):
    rng = np.random.default_rng(seed)
    # Unit-scale inputs: ||x|| ~ 1, columns of V ~ unit norm, as for normalised embeddings.
    return (
        rng.standard_normal(d) / np.sqrt(d),
        rng.standard_normal((d, k)) / np.sqrt(d) * 3,
        rng.standard_normal(k),
    )


@pytest.mark.parametrize("name,d,k", CASES)
def test_scores_match_plaintext(name, d, k):
    x, v, c = _head(d, k)
    client = base.make_client(name, d, k)
    provider = base.make_provider(client.public_context())
    assert provider.name == name and provider.d_in == d and provider.k_out == k
    assert not provider.is_private()
    got = client.decrypt(provider.linear(client.encrypt(x), v, c))
    np.testing.assert_allclose(got, x @ v + c, rtol=0, atol=1e-3)


@pytest.mark.parametrize("params", ["n4096", "n8192"])
def test_seal_presets(params):
    x, v, c = _head(768, 16, seed=1)
    client = base.make_client("seal", 768, 16, params)
    provider = base.make_provider(client.public_context())
    got = client.decrypt(provider.linear(client.encrypt(x), v, c))
    np.testing.assert_allclose(got, x @ v + c, rtol=0, atol=1e-3)


def test_layout_simulation_exact():
    rng = np.random.default_rng(2)
    for d, k, s in [(768, 16, 4096), (576, 5, 4096), (100, 3, 2048), (5, 40, 64)]:
        lay = PackedLayout.make(d, k, s)
        x, v, c = rng.standard_normal(d), rng.standard_normal((d, k)), rng.standard_normal(k)
        np.testing.assert_allclose(lay.simulate(x, v, c), x @ v + c, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        PackedLayout.make(5000, 2, 4096)


def test_seal_one_ciphertext_each_way_and_budget():
    client = base.make_client("seal", 768, 16)
    provider = base.make_provider(client.public_context())
    sizes = client.wire_sizes(provider)
    q = client.encrypt(np.zeros(768))
    assert len(base.unpack_blobs(q)[1]) == 1
    # Per-query target: <= 1 MB (setup keys are counted separately).
    assert sizes.per_query_bytes <= 1_000_000, sizes
    # Galois keys for only the 12 steps the layout needs (11 rotations + conjugation), ~1.6 MB
    # each at N=8192 with three data primes, plus the 0.5 MB public key for re-randomisation.
    assert sizes.setup_bytes < 22_000_000, sizes


def test_dot_baseline_returns_k_ciphertexts():
    client = base.make_client("tenseal-dot", 32, 3)
    provider = base.make_provider(client.public_context())
    r = provider.linear(client.encrypt(np.ones(32)), np.ones((32, 3)), np.zeros(3))
    assert len(base.unpack_blobs(r)[1]) == 3


@pytest.mark.parametrize("name", ["seal", "tenseal-dot"])
def test_public_context_has_no_secret_key(name):
    import seal

    client = base.make_client(name, 64, 4)
    pub = client.public_context()
    sk = client.secret_key_bytes()
    # A 64-byte window from the middle of the serialized secret key never appears on the wire.
    window = sk[len(sk) // 2 : len(sk) // 2 + 64]
    assert window not in pub
    q = client.encrypt(np.ones(64))
    assert window not in q
    provider = base.make_provider(pub)
    assert provider.is_private() is False
    if name == "seal":
        from linalign.fhe.seal_backend import make_context

        ctx = make_context(client.params)
        for blob in base.unpack_blobs(pub)[1] + base.unpack_blobs(q)[1]:
            with pytest.raises((RuntimeError, ValueError)):
                ctx.from_secret_str(blob)
        assert isinstance(ctx.from_secret_str(sk), seal.SecretKey)  # the check can succeed


def test_tenseal_provider_refuses_private_context():
    import tenseal as ts

    client = base.make_client("tenseal-dot", 16, 2)
    meta, _ = base.unpack_blobs(client.public_context())
    private = base.pack_blobs(meta, [client._ctx.serialize(save_secret_key=True)])
    with pytest.raises(base.PrivateContextError, match="secret key"):
        base.make_provider(private)
    assert ts.context_from(base.unpack_blobs(client.public_context())[1][0]).is_private() is False


def test_bad_inputs_named():
    client = base.make_client("seal", 16, 2)
    provider = base.make_provider(client.public_context())
    with pytest.raises(base.FHEError, match=r"shape \(16,\)"):
        client.encrypt(np.zeros(15))
    x = np.zeros(16)
    x[3] = np.nan
    with pytest.raises(base.FHEError, match=r"indices \[3\]"):
        client.encrypt(x)
    with pytest.raises(base.FHEError, match=r"head V must have shape \(16, 2\)"):
        provider.prepare(np.zeros((16, 3)), np.zeros(3))
    with pytest.raises(base.DeserializationError):
        provider.apply(b"garbage", provider.prepare(np.zeros((16, 2)), np.zeros(2)))
    q = client.encrypt(np.ones(16))
    meta, blobs = base.unpack_blobs(q)
    bad = base.pack_blobs(meta, [blobs[0][: len(blobs[0]) // 2]])
    with pytest.raises(base.DeserializationError, match="a ciphertext here has"):
        provider.apply(bad, provider.prepare(np.zeros((16, 2)), np.zeros(2)))
    flipped = bytearray(blobs[0])
    flipped[60:68] = b"\xff" * 8  # same length, corrupt header fields
    with pytest.raises(base.DeserializationError, match="not a valid SEAL ciphertext|polynomials|top level"):
        provider.apply(base.pack_blobs(meta, [bytes(flipped)]), provider.prepare(np.zeros((16, 2)), np.zeros(2)))
    with pytest.raises(base.DeserializationError, match="trailing"):
        base.unpack_blobs(q + b"x")
    with pytest.raises(base.FHEError, match="unknown FHE backend"):
        base.make_client("nope", 4, 2)


def test_seal_rejects_ciphertext_at_wrong_level():
    client = base.make_client("seal", 16, 2)
    provider = base.make_provider(client.public_context())
    from linalign.fhe.seal_backend import load_ciphertext

    import seal

    meta, blobs = base.unpack_blobs(client.encrypt(np.ones(16)))
    ct = load_ciphertext(client._ctx, blobs[0], "q")
    seal.Evaluator(client._ctx).mod_switch_to_next_inplace(ct)
    low = base.pack_blobs(meta, [ct.to_string()])
    with pytest.raises(base.DeserializationError, match="a ciphertext here has"):
        provider.apply(low, provider.prepare(np.zeros((16, 2)), np.zeros(2)))

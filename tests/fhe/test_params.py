"""Every CKKS parameter set linalign ships stays inside the 128-bit HE-standard table."""

import pytest

from linalign.fhe import params as P


def test_table_matches_standard():
    # HomomorphicEncryption.org standard, 128-bit classical, ternary secret.
    assert P.HE_STANDARD_MAX_LOGQ_128[4096] == 109
    assert P.HE_STANDARD_MAX_LOGQ_128[8192] == 218
    assert P.HE_STANDARD_MAX_LOGQ_128[16384] == 438


@pytest.mark.parametrize("name", sorted(P.PRESETS))
def test_presets_within_bound(name):
    p = P.PRESETS[name]
    assert p.log_q <= P.HE_STANDARD_MAX_LOGQ_128[p.poly_modulus_degree]
    assert p.depth >= 1
    assert p.check() is p


@pytest.mark.parametrize("name", sorted(P.FIT_PRESETS))
def test_fit_presets_within_bound(name):
    p = P.get_fit_params(name)
    assert p.log_q <= P.HE_STANDARD_MAX_LOGQ_128[p.poly_modulus_degree]
    assert p.check() is p
    # The fit encodes its columns at scale 2^85 and keeps 14 bits above the reply's scale.
    from linalign.fhe.fitting import REPLY_HEADROOM_BITS, input_scale_bits

    assert input_scale_bits(p) + REPLY_HEADROOM_BITS < sum(p.coeff_mod_bit_sizes[:-2])


def test_inference_chain_has_no_spare_prime():
    """The default chain is [q0, p1, special]: the reply after the one rescale is one prime wide,
    and q0 leaves 10 bits above the scale for the scores."""
    p = P.get_params("n8192")
    assert len(p.coeff_mod_bit_sizes) == 3 and p.headroom_bits == 10


def test_rejects_too_many_bits():
    with pytest.raises(P.InsecureParamsError, match="218 allowed at N=8192"):
        P.CKKSParams(8192, (60, 40, 40, 40, 60), 40).check()  # 240 bits
    with pytest.raises(P.InsecureParamsError, match="not in the 128-bit table"):
        P.CKKSParams(6000, (40, 30, 40), 30).check()
    with pytest.raises(P.InsecureParamsError, match="must equal scale_bits"):
        P.CKKSParams(8192, (60, 30, 60), 40).check()
    with pytest.raises(P.InsecureParamsError, match="unknown CKKS preset"):
        P.get_params("n9999")


def test_roundtrip_dict():
    p = P.PRESETS["n4096"]
    assert P.CKKSParams.from_dict(p.to_dict()) == p
    with pytest.raises(P.InsecureParamsError, match="unknown CKKS parameter fields"):
        P.CKKSParams.from_dict({**p.to_dict(), "extra": 1})


def test_untrusted_params_refused_with_typed_errors():
    """JSON from a peer: floats (1e999 -> inf would overflow int()), bools, huge ints, lists."""
    good = P.PRESETS["n8192"].to_dict()
    bad = [
        {**good, "poly_modulus_degree": float("inf")},
        {**good, "poly_modulus_degree": 8192.0},
        {**good, "poly_modulus_degree": 10**30},
        {**good, "poly_modulus_degree": True},
        {**good, "scale_bits": "50"},
        {**good, "coeff_mod_bit_sizes": [50] * 100},
        {**good, "coeff_mod_bit_sizes": "50,50"},
        {k: v for k, v in good.items() if k != "scale_bits"},
        [1, 2, 3],
    ]
    for d in bad:
        with pytest.raises(P.InsecureParamsError):
            P.CKKSParams.from_dict(d)


def test_public_context_with_absurd_ring_refused():
    from linalign.fhe import base

    client = base.make_client("seal", 16, 2)
    meta, blobs = base.unpack_blobs(client.public_context())
    for n in (2**40, 1e300):
        with pytest.raises(base.DeserializationError, match="bad params"):
            base.make_provider(base.pack_blobs({**meta, "params": {**meta["params"], "poly_modulus_degree": n}}, blobs))
    raw = base.pack_blobs(meta, blobs).replace(b'"poly_modulus_degree": 8192', b'"poly_modulus_degree": 1e999')
    with pytest.raises(base.DeserializationError, match="not JSON|finite"):
        base.make_provider(raw)


def test_tenseal_context_checked_against_declared_params():
    from linalign.fhe import base

    client = base.make_client("tenseal-dot", 16, 2)  # n8192 context
    meta, blobs = base.unpack_blobs(client.public_context())
    for other in ("n16384", "n4096"):
        lie = base.pack_blobs({**meta, "params": P.PRESETS[other].to_dict()}, blobs)
        with pytest.raises(base.DeserializationError, match="ring dimension|modulus chain|scale"):
            base.make_provider(lie)
    base.make_provider(client.public_context())  # the truthful one is accepted

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

"""concrete-ml-extensions encrypted x clear matmul for the fitting cross term Z_B^T Z_A."""

import numpy as np
import pytest

pytestmark = pytest.mark.fhe

pytest.importorskip("concrete_ml_extensions")

from linalign.fhe import concrete_matmul as cm  # noqa: E402


def test_rows_per_chunk_respects_the_27_bit_window():
    assert cm.rows_per_chunk(8, 8) == 4096
    for bits in (6, 7, 8, 9):
        rows = cm.rows_per_chunk(bits, bits)
        qmax = 2 ** (bits - 1) - 1
        assert rows * qmax * qmax < 2**26
    with pytest.raises(ValueError, match="exceeds"):
        cm.rows_per_chunk(16, 16)


def test_quantize_symmetric_per_column():
    z = np.array([[1.0, -0.01], [-2.0, 0.02], [0.5, 0.0]])
    q, s = cm.quantize_symmetric(z, 8)
    np.testing.assert_allclose(s, [2.0 / 127, 0.02 / 127], rtol=1e-12, atol=0)
    assert np.abs(q).max() == 127
    np.testing.assert_allclose(q * s, z, rtol=0, atol=np.max(s) / 2 + 1e-12)


def test_encrypted_cross_term_matches_plaintext():
    """Two chunks (n > 4096), mixed signs and a worst-case chunk sum near 2^26."""
    rng = np.random.default_rng(0)
    n, d_b, d_a = 4100, 5, 4
    z_b = rng.normal(size=(n, d_b)) * np.array([1.0, 3.0, 0.1, 0.5, 1.0])
    z_a = rng.normal(size=(n, d_a)) + 0.5
    # Column 0 of both: constant max-magnitude, so chunk 0's integer sum is 4096 * 127 * 127
    # = 66,064,384, just under 2^26 = 67,108,864: checks the chunk bound is tight enough.
    z_b[:, 0] = 1.0
    z_a[:, 0] = -1.0
    cross, cost, (q_cross, s_b, s_a) = cm.encrypted_cross_covariance(z_b, z_a, bits=8, return_int=True)
    assert cross.shape == (d_b, d_a) and cost.chunks == 2
    q_b, _ = cm.quantize_symmetric(z_b, 8)
    q_a, _ = cm.quantize_symmetric(z_a, 8)
    exact_int = q_b.T @ q_a
    assert exact_int[0, 0] == -n * 127 * 127
    # Decryption noise: a few integer units per chunk, bounded by NOISE_BOUND_UNITS.
    np.testing.assert_allclose(q_cross, exact_int, rtol=0, atol=cost.chunks * cm.NOISE_BOUND_UNITS)
    # Against the float product: quantization dominates (8-bit, per column).
    ref = z_b.T @ z_a
    rel = np.linalg.norm(cross - ref) / np.linalg.norm(ref)
    assert rel < 0.02, rel
    np.testing.assert_allclose(cross[0, 0], ref[0, 0], rtol=1e-4, atol=0)
    assert cost.key_bytes > 0 and cost.up_bytes > 0 and cost.down_bytes > 0


def test_bad_inputs_are_named():
    rng = np.random.default_rng(1)
    z_b = rng.normal(size=(10, 3))
    z_a = rng.normal(size=(9, 2))
    with pytest.raises(ValueError, match="rows must pair"):
        cm.encrypted_cross_covariance(z_b, z_a)
    bad = rng.normal(size=(10, 2))
    bad[6, 1] = np.inf
    with pytest.raises(ValueError, match="Z_A has NaN/inf in row 6"):
        cm.encrypted_cross_covariance(z_b, bad)
    with pytest.raises(ValueError, match=r"Z_B must be \[n, d\]"):
        cm.encrypted_cross_covariance(z_b[:, 0], z_a)

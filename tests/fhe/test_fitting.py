"""Encrypted fitting statistics equal the plaintext ones."""

import numpy as np
import pytest

from linalign.fhe import base, fitting

pytestmark = pytest.mark.fhe


def _pair(n, d_b, d_a, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.standard_normal((n, d_b)) / np.sqrt(d_b) + 0.3  # far-from-zero mean on purpose
    z_a = z_b @ rng.standard_normal((d_b, d_a)) / np.sqrt(d_b) + 0.05 * rng.standard_normal((n, d_a)) - 0.5
    return z_b, z_a


def _plain_replay(layout, z_na, x_n):
    """The provider's BSGS schedule and fold in numpy (np.roll = rotation) -> the d_a result slots."""
    s = layout.slots
    diag = layout.diagonals(z_na)
    xp = np.zeros(layout.chunks * s)
    xp[: len(x_n)] = x_n
    total = np.zeros(s)
    for g in range(layout.n2):
        inner = sum(diag[t, g, b] * np.roll(xp[t * s : (t + 1) * s], -b)
                    for t in range(layout.chunks) for b in range(layout.n1))
        total += np.roll(inner, -g * layout.n1)
    return layout.fold(total)[: layout.d_a]


@pytest.mark.parametrize("n,d_a,slots", [(300, 24, 64), (1000, 20, 256), (70, 64, 64)])
def test_layout_replay_exact(n, d_a, slots):
    z_b, z_a = _pair(n, 3, d_a)
    lay = fitting.FitLayout.make(n, 3, d_a, slots)
    assert lay.n1 * lay.n2 == lay.d_pad
    for j in range(3):
        np.testing.assert_allclose(_plain_replay(lay, z_a, z_b[:, j]), z_a.T @ z_b[:, j], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,params", [(400, "n8192"), (9000, "n8192")])  # 1 chunk; 3 chunks
def test_encrypted_stats_match_plaintext(n, params):
    from linalign.align.solve import solve
    from linalign.align.stats import from_arrays

    z_b, z_a = _pair(n, 12, 20)
    client = fitting.FitClient(z_b, 20, params)
    provider = fitting.FitProvider(client.public_context(), z_a)
    assert not provider.is_private()
    cross, sizes = fitting.encrypted_cross(client, provider)
    zc = z_b - z_b.mean(0)
    # Stated bound (absolute, per row j of X^T Z_A): the flood dominates; its std in the reply's
    # units (unit column, Z_A scaled by za_scale) is announced, and the client multiplies by
    # |X_j| / za_scale. Six standard deviations: false failure rate < 1e-8 per entry.
    x = np.concatenate([zc, np.full((n, 1), 1.0 / n)], axis=1)
    ann = provider.announce()
    assert 0 < ann["flood_std"] < 1e-3 and ann["za_col_norm"] <= 64
    bound = 6 * ann["flood_std"] * np.linalg.norm(x, axis=0)[:, None] / ann["za_scale"]
    err = np.abs(cross - x.T @ z_a)
    assert np.all(err <= bound), float((err / bound).max())
    stats = client.stats(cross)
    w, b = solve(stats, 1e-2)
    w_ref, b_ref = solve(from_arrays(z_b, z_a), 1e-2)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w_ref), rtol=0, atol=2e-3)
    np.testing.assert_allclose(np.asarray(b), np.asarray(b_ref), rtol=0, atol=2e-3)
    assert sizes["up_bytes"] > 0 and sizes["down_bytes"] > 0


def test_fitting_bad_inputs():
    z_b, z_a = _pair(50, 4, 6)
    bad = z_b.copy()
    bad[17, 2] = np.inf
    with pytest.raises(base.FHEError, match="row 17"):
        fitting.FitClient(bad, 6)
    client = fitting.FitClient(z_b, 6)
    with pytest.raises(base.FHEError, match="50"):
        fitting.FitProvider(client.public_context(), z_a[:40])
    with pytest.raises(base.FHEError, match=r"shape \(n, 6\)"):
        fitting.FitProvider(client.public_context(), z_a[:, :5])
    provider = fitting.FitProvider(client.public_context(), z_a)
    with pytest.raises(base.DeserializationError, match="fit-column"):
        provider.cross(base.pack_blobs({"kind": "query"}, [b"x"]))
    with pytest.raises(base.DeserializationError):
        provider.cross(b"\x00" * 10)

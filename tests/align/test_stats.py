"""Sufficient statistics: streaming, merging and sharding agree with float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linalign import align
from linalign.mesh import make_mesh


def _data(n=600, d_b=24, d_a=16, mean=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.normal(mean, 1.0, (n, d_b)).astype(np.float32)
    w = rng.normal(size=(d_b, d_a)) / np.sqrt(d_b)
    z_a = (z_b @ w + 0.3 * rng.normal(size=(n, d_a)) + mean).astype(np.float32)
    return z_b, z_a


def _ref(z_b, z_a):
    x, y = z_b.astype(np.float64), z_a.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    return dict(n=len(x), mean_b=x.mean(0), mean_a=y.mean(0), c_bb=xc.T @ xc, c_ba=xc.T @ yc,
                ss_a=(yc * yc).sum(0))


def _assert_stats_close(s, ref, rtol, atol_scale):
    got = align.stats_to_numpy(s)
    assert int(got["n"]) == ref["n"]
    for k in ("mean_b", "mean_a", "c_bb", "c_ba", "ss_a"):
        scale = np.abs(ref[k]).max()
        np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=atol_scale * scale, err_msg=k)


def test_one_shot_matches_float64_reference():
    z_b, z_a = _data()
    _assert_stats_close(align.from_arrays(z_b, z_a), _ref(z_b, z_a), rtol=1e-5, atol_scale=1e-5)


def test_seven_uneven_batches_equal_one_shot():
    z_b, z_a = _data(n=1000)
    cuts = [0, 3, 150, 151, 400, 777, 901, 1000]
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        acc.add(z_b[lo:hi], z_a[lo:hi])
    one = align.stats_to_numpy(align.from_arrays(z_b, z_a))
    _assert_stats_close(acc.stats, {k: np.asarray(v, np.float64) for k, v in one.items()},
                        rtol=1e-5, atol_scale=1e-5)


def test_merged_worker_stats_equal_the_whole_and_merge_is_associative():
    z_b, z_a = _data(n=900)
    parts = [align.from_arrays(z_b[a:b], z_a[a:b]) for a, b in ((0, 100), (100, 550), (550, 900))]
    left = align.merge(align.merge(parts[0], parts[1]), parts[2])
    right = align.merge(parts[0], align.merge(parts[1], parts[2]))
    ref = _ref(z_b, z_a)
    _assert_stats_close(left, ref, rtol=1e-5, atol_scale=1e-5)
    _assert_stats_close(right, ref, rtol=1e-5, atol_scale=1e-5)
    empty = align.init_stats(z_b.shape[1], z_a.shape[1])
    _assert_stats_close(align.merge(empty, left), ref, rtol=1e-5, atol_scale=1e-5)
    _assert_stats_close(align.merge(left, empty), ref, rtol=1e-5, atol_scale=1e-5)


def test_mask_ignores_rows():
    z_b, z_a = _data(n=300)
    keep = np.arange(300) % 3 != 0
    s = align.from_arrays(z_b, z_a, mask=keep, batch_size=70)
    _assert_stats_close(s, _ref(z_b[keep], z_a[keep]), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("mesh_spec", ["data=8", "data=4,model=2"])
def test_sharded_accumulation_equals_single_device(mesh_spec):
    z_b, z_a = _data(n=1003)  # not a multiple of the data axis: padding rows are masked
    mesh = make_mesh(mesh_spec)
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1], mesh=mesh)
    for lo in range(0, 1003, 250):
        acc.add(z_b[lo:lo + 250], z_a[lo:lo + 250])
    s = acc.stats
    if "model" in mesh_spec:
        # d_b rows of the accumulators really are split over the model axis.
        assert s.c_bb.sharding.spec[0] == "model"
        assert s.c_bb.addressable_shards[0].data.shape == (z_b.shape[1] // 2, z_b.shape[1])
    single = align.stats_to_numpy(align.from_arrays(z_b, z_a, batch_size=250))
    _assert_stats_close(s, {k: np.asarray(v, np.float64) for k, v in single.items()},
                        rtol=1e-5, atol_scale=1e-5)


def test_sharded_update_makes_no_hidden_host_transfers():
    z_b, z_a = _data(n=64)
    mesh = make_mesh("data=4,model=2")
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1], mesh=mesh)
    acc.add(z_b, z_a)  # compile outside the guard
    rows = acc._in_shardings[0]
    zb_dev, za_dev = jax.device_put(z_b, rows), jax.device_put(z_a, rows)
    mask = jax.device_put(np.ones(64, bool), acc._in_shardings[1])
    with jax.transfer_guard("disallow"):
        acc._stats = acc._update(acc._stats, zb_dev, za_dev, mask)
    assert int(acc._stats.n) == 128


def test_sharding_rules_refuse_collisions():
    rules = align.ShardingRules(batch="data", feat_b="data")
    with pytest.raises(ValueError, match="same mesh axis 'data'"):
        rules.spec(("batch", "feat_b"))
    with pytest.raises(ValueError, match="unknown logical axis"):
        rules.spec(("nope",))


def test_parse_mesh_errors():
    with pytest.raises(ValueError, match="needs 64 devices"):
        make_mesh("data=64")
    with pytest.raises(ValueError, match="name=size"):
        make_mesh("data")


def test_float32_accurate_with_mean_far_from_zero():
    # mean 50, std 1: the uncentred Gram would lose ~3.4 of float32's ~7 digits.
    z_b, z_a = _data(n=4000, mean=50.0, seed=3)
    s = align.from_arrays(z_b, z_a, batch_size=512)
    _assert_stats_close(s, _ref(z_b, z_a), rtol=1e-4, atol_scale=2e-5)
    # Contrast: the naive formula in float32 is far worse (shows the test can fail).
    x = z_b.astype(np.float32)
    naive = x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))
    ref = _ref(z_b, z_a)["c_bb"]
    assert np.abs(naive - ref).max() / np.abs(ref).max() > 1e-3


def test_update_donates_and_is_jitted():
    z_b, z_a = _data(n=32)
    s0 = align.init_stats(z_b.shape[1], z_a.shape[1])
    s1 = align.update(s0, jnp.asarray(z_b), jnp.asarray(z_a))
    assert int(s1.n) == 32
    assert s0.c_bb.is_deleted()  # buffers were donated to the update


def test_from_moments_shape_check():
    with pytest.raises(align.AlignInputError, match="inconsistent moment shapes"):
        align.from_moments(10, np.zeros(3), np.zeros(2), np.zeros((3, 3)), np.zeros((2, 3)))


def test_float32_streamed_stats_accurate_at_mean_1000():
    # Compensated running means + shifting by the running mean: streamed float32 statistics
    # stay within a few float32 ulps of the float64 reference even at |mean| / std = 1000.
    z_b, z_a = _data(n=5000, mean=1000.0, seed=4)
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1], chunk_rows=700)
    for lo, hi in ((0, 5), (5, 1900), (1900, 5000)):
        acc.add(z_b[lo:hi], z_a[lo:hi])
    _assert_stats_close(acc.stats, _ref(z_b, z_a), rtol=1e-5, atol_scale=2e-6)


def test_device_array_inputs_and_small_chunks_match_numpy_path():
    z_b, z_a = _data(n=500)
    acc_np = align.Accumulator(z_b.shape[1], z_a.shape[1])
    acc_np.add(z_b, z_a)
    acc_dev = align.Accumulator(z_b.shape[1], z_a.shape[1], chunk_rows=64)
    acc_dev.add(jnp.asarray(z_b[:300]), jnp.asarray(z_a[:300]))
    acc_dev.add(jnp.asarray(z_b[300:]), jnp.asarray(z_a[300:]))
    ref = {k: np.asarray(v, np.float64) for k, v in align.stats_to_numpy(acc_np.stats).items()}
    _assert_stats_close(acc_dev.stats, ref, rtol=1e-5, atol_scale=1e-5)

"""In-process streaming fit on an 8-device mesh: exactness, checkpoint integrity, input errors."""

import json
import os

import numpy as np
import pytest

from linalign.align.validate import AlignInputError
from linalign.distributed import runtime
from linalign.distributed import streaming_fit as sf
from linalign.distributed.checkpointing import CheckpointCorruptError, FitCheckpointer

from conftest import reference_stats

# float32 statistics of centred data against a float64 reference: the error grows with the
# number of merged batches and the data's scale, a few float32 ulps of the largest entry.
RTOL, ATOL = 2e-5, 2e-4


def _fit(src, tgt, ckpt=None, mesh="data=4,model=2", batch=64, every=3):
    mesh = runtime.global_mesh(runtime.parse_mesh(mesh))
    return sf.StreamingFit(src, tgt, mesh, batch, checkpoint_dir=ckpt, checkpoint_every=every)


@pytest.mark.parametrize("mesh, batch", [("data=4,model=2", 64), ("data=8", 40), ("data=2,model=4", 20)])
def test_fit_matches_float64_reference(pair_files, mesh, batch):
    src, tgt, z_b, z_a = pair_files
    got = sf.stats_to_host(_fit(src, tgt, mesh=mesh, batch=batch).run())
    ref = reference_stats(z_b, z_a)
    assert int(got["n"]) == len(z_b)
    for k in ("mean_b", "mean_a", "c_bb", "c_ba", "ss_a"):
        np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_store_input_equals_npy_input(tmp_path, pair_files):
    from linalign.extract.store import StoreWriter
    src, tgt, z_b, z_a = pair_files
    stores = []
    for name, z in (("sb", z_b), ("sa", z_a)):
        w = StoreWriter(tmp_path / name, per_token=False, dtype="float32", dim=z.shape[1],
                        model=name, total_rows=len(z))
        for i in range(0, len(z), 170):  # shard boundaries that do not line up with batches
            w.append(z[i:i + 170])
        w.finalize()
        stores.append(str(tmp_path / name))
    a = sf.stats_to_host(_fit(src, tgt).run())
    b = sf.stats_to_host(_fit(*stores).run())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_from_checkpoint_is_bit_identical(tmp_path, pair_files):
    src, tgt, _, _ = pair_files
    # No checkpoint directory, same fold schedule (every 2 steps): the same arithmetic.
    full = sf.stats_to_host(_fit(src, tgt, every=2).run())
    ckpt = tmp_path / "ck"
    fit = _fit(src, tgt, ckpt=str(ckpt), every=2)
    fit.run()
    steps = FitCheckpointer(str(ckpt)).all_steps()
    assert steps == [8, fit.plan.num_steps()]  # keep=2: only the last two survive
    # Roll back to step 8 as if the run had died there, then resume.
    final = steps[-1]
    for p in (ckpt / "orbax" / str(final), ckpt / "manifests" / f"{final}.json"):
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        else:
            p.unlink()
    resumed = _fit(src, tgt, ckpt=str(ckpt), every=2)
    assert resumed._resume()[0] == 8
    got = sf.stats_to_host(_fit(src, tgt, ckpt=str(ckpt), every=2).run())
    for k in full:
        np.testing.assert_array_equal(got[k], full[k], err_msg=k)


def _checkpointed(tmp_path, pair_files):
    src, tgt, _, _ = pair_files
    ckpt = tmp_path / "ck"
    fit = _fit(src, tgt, ckpt=str(ckpt), every=4)
    fit.run()
    step = FitCheckpointer(str(ckpt)).all_steps()[-1]
    return src, tgt, ckpt, step


def test_flipped_bytes_are_detected(tmp_path, pair_files):
    src, tgt, ckpt, step = _checkpointed(tmp_path, pair_files)
    files = [p for p in (ckpt / "orbax" / str(step)).rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)  # the array data
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=rf"step {step} is corrupt: sha256 of .*{victim.name}"):
        _fit(src, tgt, ckpt=str(ckpt)).run()


def test_deleted_file_is_reported_as_partial(tmp_path, pair_files):
    src, tgt, ckpt, step = _checkpointed(tmp_path, pair_files)
    victim = sorted(p for p in (ckpt / "orbax" / str(step)).rglob("*") if p.is_file())[0]
    victim.unlink()
    with pytest.raises(CheckpointCorruptError, match=rf"step {step} is partial: file .* is missing"):
        _fit(src, tgt, ckpt=str(ckpt)).run()


def test_step_without_manifest_is_skipped_and_older_one_used(tmp_path, pair_files):
    src, tgt, ckpt, step = _checkpointed(tmp_path, pair_files)
    (ckpt / "manifests" / f"{step}.json").unlink()  # as if killed between orbax and manifest
    with pytest.raises(CheckpointCorruptError, match=f"step {step} .* has no manifest"):
        FitCheckpointer(str(ckpt)).verify(step)
    older = FitCheckpointer(str(ckpt)).all_steps()[0]
    assert older < step
    assert _fit(src, tgt, ckpt=str(ckpt), every=4)._resume()[0] == older
    # The unfinished step was removed so the resumed run can write that step number again.
    assert FitCheckpointer(str(ckpt)).all_steps() == [older]


def test_checkpoint_of_a_different_fit_is_refused(tmp_path, pair_files):
    src, tgt, ckpt, _ = _checkpointed(tmp_path, pair_files)
    with pytest.raises(CheckpointCorruptError, match="belongs to a different fit"):
        _fit(src, tgt, ckpt=str(ckpt), batch=32).run()


def test_input_errors_are_named(tmp_path, pair_files):
    src, tgt, z_b, z_a = pair_files
    short = tmp_path / "short.npy"
    np.save(short, z_a[:-1])
    with pytest.raises(sf.FitInputError, match="has 600 rows but target .* has 599"):
        _fit(src, str(short))
    bad = z_b.copy()
    bad[517, 3] = np.nan
    nan_path = tmp_path / "nan.npy"
    np.save(nan_path, bad)
    with pytest.raises(AlignInputError, match="row 517 contains a non-finite value"):
        _fit(str(nan_path), tgt).run()
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((600, 4), np.int32))
    with pytest.raises(sf.FitInputError, match="expected a 2-D floating"):
        _fit(str(ints), tgt)
    with pytest.raises(sf.FitInputError, match="does not exist"):
        _fit(str(tmp_path / "nope.npy"), tgt)
    with pytest.raises(ValueError, match="multiple of"):
        _fit(src, tgt, batch=30)


def test_outputs_and_load_map(tmp_path, pair_files):
    src, tgt, z_b, z_a = pair_files
    fit = _fit(src, tgt)
    out = tmp_path / "out"
    stats_np = sf.finish(fit, fit.run(), str(out), lam=1e-2)
    assert sorted(os.listdir(out)) == ["fit.json", "map.npz", "stats.npz"]
    m = sf.load_map(str(out))
    ref = reference_stats(z_b, z_a)
    w_ref = np.linalg.solve(ref["c_bb"] + 1e-2 * np.eye(16), ref["c_ba"])
    np.testing.assert_allclose(np.asarray(m.w), w_ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(m.b), ref["mean_a"] - ref["mean_b"] @ w_ref, rtol=1e-3, atol=1e-3)
    assert json.loads((out / "fit.json").read_text())["n"] == int(stats_np["n"]) == 600


def test_steps_make_no_hidden_host_device_copies(pair_files):
    import jax
    src, tgt, z_b, z_a = pair_files
    fit = _fit(src, tgt)
    # Batches go to the devices explicitly (make_array_from_process_local_data); anything
    # implicit (a numpy array or Python scalar slipping into a jitted call) would raise here.
    with jax.transfer_guard("disallow"):
        stats = fit.run()
    assert int(sf.stats_to_host(stats)["n"]) == len(z_b)

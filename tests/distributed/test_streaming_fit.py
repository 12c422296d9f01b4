"""In-process streaming fit: the same result as the single-host fit, exact k-fold lambda,
checkpoint integrity and resume, input errors."""

import json

import numpy as np
import pytest

from linalign.align import fitting
from linalign.align.sources import open_embeddings
from linalign.align.validate import AlignInputError
from linalign.distributed import streaming_fit as sf
from linalign.distributed.checkpointing import CheckpointCorruptError, FitCheckpointer

from conftest import brute_force_cv


def _fit(src, tgt, ckpt=None, batch=64, every=3, **kw):
    kw = {"lam": "auto", "folds": 5, "heldout": 0.1, "dtype": "float64", **kw}
    return sf.StreamingFit(open_embeddings(src), open_embeddings(tgt), batch_size=batch,
                           checkpoint_dir=ckpt, checkpoint_every=every, **kw)


def _result(fit):
    folds, val = fit.run()
    return sf.finish(fit, folds, val, metadata=sf.source_metadata(fit.src, fit.tgt))


def test_equals_the_single_host_fit(pair_files):
    src, tgt, _, _ = pair_files
    got = _result(_fit(src, tgt, batch=64))
    ref = fitting.fit_sources(open_embeddings(src), open_embeddings(tgt), lam="auto",
                              val_fraction=0.1, folds=5, batch_size=100, dtype="float64",
                              progress=False)
    assert got.report["lambda"] == pytest.approx(ref.report["lambda"], rel=1e-12)
    assert np.argmin(got.report["scores"]) == np.argmin(ref.report["scores"])
    assert got.report["n_train"] == ref.report["n_train"] and got.report["n_val"] == ref.report["n_val"]
    np.testing.assert_allclose(got.report["scores"], ref.report["scores"], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(got.map.w), np.asarray(ref.map.w), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.map.metadata.heldout["r2"], ref.map.metadata.heldout["r2"], rtol=1e-9)
    assert got.map.metadata.lam_selection == "kfold-5" and got.map.metadata.n == ref.map.metadata.n


def test_kfold_lambda_equals_brute_force_cv(pair_files):
    src, tgt, z_b, z_a = pair_files
    rep = _result(_fit(src, tgt, batch=70, heldout=0.0)).report
    want = brute_force_cv(z_b, z_a, rep["grid"])
    np.testing.assert_allclose(rep["scores"], want, rtol=1e-6)
    assert rep["lambda"] == rep["grid"][int(np.argmin(want))]


def test_writes_the_one_map_format(tmp_path, pair_files):
    from linalign.align.affine_map import AffineMap

    src, tgt, z_b, z_a = pair_files
    res = _result(_fit(src, tgt, lam="1e-2", dtype="float32"))
    out = fitting.write_fit(res, tmp_path / "out")
    m = AffineMap.load(out)
    assert m.metadata.lam == 1e-2 and m.metadata.lam_selection == "fixed" and m.metadata.n == res.report["n_train"]
    assert m.metadata.source_model == "zb" and m.metadata.target_model == "za"
    assert json.loads((out / "report.json").read_text())["process_count"] == 1


def _checkpointed(tmp_path, pair_files, every=2):
    src, tgt, _, _ = pair_files
    ckpt = tmp_path / "ckpt"
    folds, val = _fit(src, tgt, ckpt=str(ckpt), every=every).run()
    return src, tgt, ckpt, FitCheckpointer(str(ckpt)).all_steps()[-1], folds


def test_resume_is_bit_identical(tmp_path, pair_files):
    src, tgt, _, _ = pair_files
    clean, _ = _fit(src, tgt, every=2).run()
    _, _, ckpt, step, _ = _checkpointed(tmp_path, pair_files)
    (ckpt / "manifests" / f"{step}.json").unlink()  # as if killed while saving the last step
    fit = _fit(src, tgt, ckpt=str(ckpt), every=2)
    older = fit._resume()[0]
    assert 0 < older < step
    resumed, _ = _fit(src, tgt, ckpt=str(ckpt), every=2).run()
    for a, b in zip(clean, resumed):
        for k in ("n", "mean_b", "c_bb", "c_ba", "ss_a"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_flipped_bytes_are_detected(tmp_path, pair_files):
    src, tgt, ckpt, step, _ = _checkpointed(tmp_path, pair_files)
    files = [p for p in (ckpt / "orbax" / str(step)).rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)  # the array data
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=rf"step {step} is corrupt: sha256 of .*{victim.name}"):
        _fit(src, tgt, ckpt=str(ckpt), every=2).run()


def test_deleted_file_is_reported_as_partial(tmp_path, pair_files):
    src, tgt, ckpt, step, _ = _checkpointed(tmp_path, pair_files)
    victim = sorted(p for p in (ckpt / "orbax" / str(step)).rglob("*") if p.is_file())[0]
    victim.unlink()
    with pytest.raises(CheckpointCorruptError, match=rf"step {step} is partial: file .* is missing"):
        _fit(src, tgt, ckpt=str(ckpt), every=2).run()


def test_checkpoint_of_a_different_fit_is_refused(tmp_path, pair_files):
    src, tgt, ckpt, _, _ = _checkpointed(tmp_path, pair_files)
    with pytest.raises(CheckpointCorruptError, match="belongs to a different fit"):
        _fit(src, tgt, ckpt=str(ckpt), batch=32, every=2).run()


def test_input_errors_are_named(tmp_path, pair_files):
    src, tgt, z_b, z_a = pair_files
    short = tmp_path / "short.npy"
    np.save(short, z_a[:-1])
    with pytest.raises(sf.FitInputError, match="row counts differ"):
        _fit(src, str(short))
    bad = z_b.copy()
    bad[123, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(AlignInputError, match="row 123"):
        _fit(str(tmp_path / "nan.npy"), tgt).run()
    with pytest.raises(FileNotFoundError, match="no embeddings"):
        _fit(str(tmp_path / "nope.npy"), tgt)
    with pytest.raises(ValueError, match="must be positive"):
        _fit(src, tgt, batch=0)

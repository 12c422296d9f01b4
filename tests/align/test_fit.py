"""End-to-end fitting from extraction stores and .npy files, through the absl entry point."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from linalign import align
from linalign.align import fitting
from linalign.align.sources import open_embeddings
from linalign.extract.store import StoreWriter


def _pair(n=1500, d_b=24, d_a=16, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.normal(2.0, 1.0, (n, d_b)).astype(np.float32)
    z_a = (z_b @ rng.normal(size=(d_b, d_a)) / 5 + 0.2 * rng.normal(size=(n, d_a))).astype(np.float32)
    return z_b, z_a


def _store(path, arr, model, fingerprint="f" * 64, shard=400):
    w = StoreWriter(path, per_token=False, dtype="float32", dim=arr.shape[1], model=model,
                    pooling="mean", text_fingerprint=fingerprint, total_rows=len(arr))
    for i in range(0, len(arr), shard):
        w.append(arr[i:i + shard])
    w.finalize()
    return path


def test_fit_from_stores_matches_direct_solve(tmp_path):
    z_b, z_a = _pair()
    src = open_embeddings(_store(tmp_path / "b", z_b, "model-b"))
    tgt = open_embeddings(_store(tmp_path / "a", z_a, "model-a"))
    res = fitting.fit_sources(src, tgt, lam=2.0, val_fraction=0.2, seed=3, batch_size=256,
                              progress=False)
    is_val = fitting.heldout_mask(np.arange(len(z_b)), 0.2, 3)
    assert 200 < is_val.sum() < 400
    x, y = z_b[~is_val].astype(np.float64), z_a[~is_val].astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(x.shape[1]), xc.T @ yc)
    b = y.mean(0) - x.mean(0) @ w
    np.testing.assert_allclose(np.asarray(res.map.w), w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.map.b), b, rtol=1e-4, atol=1e-5)
    assert res.report["n_train"] == (~is_val).sum() and res.report["n_val"] == is_val.sum()
    # Held-out R^2 comes exactly from the held-out rows' statistics.
    direct = res.map.evaluate(z_b[is_val], z_a[is_val])
    np.testing.assert_allclose(res.report["val"]["r2"], direct["r2"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.report["val"]["cosine"], direct["cosine"], rtol=1e-6, atol=1e-7)
    assert res.report["val"]["r2"] > 0.8
    md = res.map.metadata
    assert md.source_model == "model-b" and md.pooling == "mean" and md.lam_selection == "fixed"
    assert md.heldout["r2"] == res.report["val"]["r2"] and md.n == res.report["n_train"]
    out = fitting.write_fit(res, tmp_path / "out")
    assert {p.name for p in out.iterdir()} == {"map.safetensors", "report.json", "report.md"}
    loaded = align.AffineMap.load(out)
    np.testing.assert_allclose(np.asarray(loaded.w), np.asarray(res.map.w), rtol=0, atol=0)
    assert "lam=2 (fixed), n=" in repr(loaded) and "held-out R^2=" in repr(loaded)


def test_differing_text_fingerprints_are_refused(tmp_path):
    z_b, z_a = _pair(n=100)
    src = open_embeddings(_store(tmp_path / "b", z_b, "b", fingerprint="1" * 64))
    tgt = open_embeddings(_store(tmp_path / "a", z_a, "a", fingerprint="2" * 64))
    with pytest.raises(align.AlignInputError, match="text fingerprints differ"):
        fitting.fit_sources(src, tgt, lam=1.0, progress=False)


REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_cli(*args):
    """Runs ``python -m linalign.fit`` in a fresh process (absl flags are process-global)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "linalign.fit", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_on_npy_selects_lambda_and_writes_outputs(tmp_path):
    z_b, z_a = _pair()
    np.save(tmp_path / "b.npy", z_b)
    np.save(tmp_path / "a.npy", z_a)
    r = _run_cli(f"--source={tmp_path / 'b.npy'}", f"--target={tmp_path / 'a.npy'}",
                 f"--out_dir={tmp_path / 'out'}", "--lam_grid=0.01,1,100,1e4",
                 "--val_fraction=0.25", "--mesh=data=4,model=2", "--batch_size=300")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out R^2" in r.stdout and "kfold-5" in r.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["lambda_selection"] == "kfold-5" and report["lambda_spec"] == "auto"
    assert report["lambda"] in (0.01, 1.0, 100.0, 1e4)
    assert len(report["scores"]) == 4 and sum(report["fold_rows"]) == report["n_train"]
    assert (tmp_path / "out" / "lambda.png").stat().st_size > 1000
    m = align.AffineMap.load(tmp_path / "out" / "map.safetensors")
    assert m.metadata.lam == report["lambda"] and m.metadata.source_model == "b"


def test_cli_nan_row_leaves_no_output(tmp_path):
    z_b, z_a = _pair(n=300)
    z_b[211, 3] = np.nan
    np.save(tmp_path / "b.npy", z_b)
    np.save(tmp_path / "a.npy", z_a)
    r = _run_cli(f"--source={tmp_path / 'b.npy'}", f"--target={tmp_path / 'a.npy'}",
                 f"--out_dir={tmp_path / 'out'}", "--lam=1.0", "--batch_size=100")
    assert r.returncode != 0
    assert "source (z_b): row 211 contains a non-finite value" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy"]


def test_mismatched_rows_and_bad_files(tmp_path):
    z_b, z_a = _pair(n=100)
    np.save(tmp_path / "b.npy", z_b)
    np.save(tmp_path / "a.npy", z_a[:90])
    np.save(tmp_path / "i.npy", np.zeros((100, 3), np.int32))
    with pytest.raises(align.AlignInputError, match="row counts differ"):
        fitting.fit_sources(open_embeddings(tmp_path / "b.npy"), open_embeddings(tmp_path / "a.npy"),
                            lam=1.0, progress=False)
    with pytest.raises(align.AlignInputError, match="floating point"):
        open_embeddings(tmp_path / "i.npy")
    with pytest.raises(FileNotFoundError):
        open_embeddings(tmp_path / "none.npy")


def test_gcv_without_holdout_and_gcv_refused_when_rows_do_not_exceed_width(tmp_path):
    z_b, z_a = _pair(n=400)
    np.save(tmp_path / "b.npy", z_b)
    np.save(tmp_path / "a.npy", z_a)
    src, tgt = open_embeddings(tmp_path / "b.npy"), open_embeddings(tmp_path / "a.npy")
    res = fitting.fit_sources(src, tgt, lam="gcv", lam_grid=[0.1, 10.0, 1000.0], val_fraction=0.0,
                              progress=False)
    assert res.report["lambda_selection"] == "gcv" and "val" not in res.report
    direct = res.map.evaluate(z_b, z_a)
    np.testing.assert_allclose(res.report["train"]["r2"], direct["r2"], rtol=1e-4, atol=1e-5)
    # n = 20 <= d_b = 24: GCV is refused and k-fold CV used, with the reason recorded.
    m = align.AffineMap.load(fitting.write_fit(fitting.fit_sources(
        open_embeddings(tmp_path / "b.npy"), open_embeddings(tmp_path / "a.npy"), lam="gcv",
        val_fraction=0.95, progress=False), tmp_path / "small"))
    assert m.metadata.lam_selection == "kfold-5" and m.metadata.lam_spec == "gcv"
    assert "n <= d_b" in m.metadata.extra["gcv_refused"]


def test_cli_bad_lambda_spec_is_refused_before_reading(tmp_path):
    r = _run_cli(f"--source={tmp_path / 'missing.npy'}", f"--target={tmp_path / 'missing.npy'}",
                 f"--out_dir={tmp_path / 'out'}", "--lam=ridge")
    assert r.returncode == 2
    assert "--lam=ridge: lam must be a number, 'gcv', 'cv' or 'auto'; got 'ridge'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []

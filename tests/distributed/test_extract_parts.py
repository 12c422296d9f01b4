"""Per-process extraction into a parted store, and a multi-process extract-then-fit pipeline."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env, fit_cmd, load_npz

sys.path.insert(0, str(REPO / "tests" / "models"))
from encoder_parity import tiny_model_dir  # noqa: E402

from linalign import checkpoints, extract as extract_lib  # noqa: E402
from linalign.distributed import extract as dextract  # noqa: E402
from linalign.distributed.streaming_fit import FitInputError, open_rows  # noqa: E402
from linalign.extract.store import StoreError  # noqa: E402

RNG = np.random.default_rng(1)
TEXTS = [" ".join(f"w{RNG.integers(0, 90)}" for _ in range(RNG.integers(1, 30))) for _ in range(37)]
KW = dict(pooling="mean", max_length=40, batch_size=4, truncation="silent", progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    d, _ = tiny_model_dir(tmp, "bert")
    return d, checkpoints.load(d, cache_root=tmp / "cache")


def test_parts_read_back_as_the_whole_corpus(tiny, tmp_path):
    _, model = tiny
    whole = extract_lib.extract(model, TEXTS, **KW)
    for p in range(3):
        part = dextract.extract_part(model, TEXTS, tmp_path, p, 3, corpus="t", **KW)
        lo, hi = part.manifest["part"]["rows"]
        assert part.num_rows == hi - lo
    index = dextract.write_index(tmp_path, 3)
    assert index["num_rows"] == len(TEXTS) and [p["rows"] for p in index["parts"]] == [[0, 13], [13, 25], [25, 37]]
    parted = dextract.open_parted(tmp_path)
    # Other batch compositions than the whole-corpus run: equal to float32 rounding.
    np.testing.assert_allclose(parted.read_all(), whole, rtol=1e-5, atol=1e-6)
    rows = open_rows(str(tmp_path))  # the streaming fit's reader crosses part boundaries
    np.testing.assert_array_equal(rows.read(10, 30), parted.read_all()[10:30])
    assert rows.num_rows == len(TEXTS) and rows.identity()["kind"] == "parted_store"


def test_missing_or_mismatched_parts_are_refused(tiny, tmp_path):
    _, model = tiny
    dextract.extract_part(model, TEXTS, tmp_path, 0, 2, **KW)
    with pytest.raises(StoreError, match="part-00001-of-00002"):
        dextract.write_index(tmp_path, 2)
    with pytest.raises(StoreError, match="no parts.json"):
        dextract.open_parted(tmp_path)
    dextract.extract_part(model, TEXTS, tmp_path, 1, 2, **{**KW, "pooling": "first"})
    with pytest.raises(StoreError, match="pooling"):
        dextract.write_index(tmp_path, 2)
    # A part extracted from another corpus is refused as well.
    other = tmp_path / "other"
    dextract.extract_part(model, TEXTS, other, 0, 2, **KW)
    dextract.extract_part(model, TEXTS[:-1], other, 1, 2, **KW)
    with pytest.raises(StoreError, match="rows|corpus_fingerprint"):
        dextract.write_index(other, 2)
    assert not (other / "parts.json").exists() and not (tmp_path / "parts.json").exists()
    (tmp_path / "parts.json").write_text("{not json")
    with pytest.raises(FitInputError, match="parts.json"):
        open_rows(str(tmp_path))
    with pytest.raises(ValueError, match="would get none"):
        dextract.extract_part(model, TEXTS[:2], tmp_path / "few", 2, 3, **KW)


@pytest.mark.slow
def test_two_processes_extract_then_fit(tiny, tmp_path):
    """Two processes x two CPU devices extract both models' states into parted stores through
    launch/local_cpu.sh, then fit the map on two processes; everything equals one process."""
    bert_dir, bert = tiny
    mpnet_dir, _ = tiny_model_dir(tmp_path, "mpnet")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    env = cli_env(2)
    env["PYTHON"] = sys.executable
    env["LINALIGN_CACHE"] = str(tmp_path / "cache")

    def launch(*cmd):
        proc = subprocess.run(["bash", str(REPO / "launch" / "local_cpu.sh"), "-n", "2", "-m", "2",
                               "-t", "300", "--", *cmd], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=360)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc

    for name, d in (("zb", bert_dir), ("za", mpnet_dir)):
        launch(sys.executable, "-m", "linalign.distributed", "extract", f"--model={d}",
               f"--corpus={corpus}", f"--out_dir={tmp_path / name}", "--pooling=mean",
               "--max_length=40", "--forward_batch=4", "--truncation=silent")
    index = json.loads((tmp_path / "zb" / "parts.json").read_text())
    assert [p["name"] for p in index["parts"]] == ["part-00000-of-00002", "part-00001-of-00002"]
    z_b = dextract.open_parted(tmp_path / "zb").read_all()
    z_a = dextract.open_parted(tmp_path / "za").read_all()
    np.testing.assert_allclose(z_b, extract_lib.extract(bert, TEXTS, **KW), rtol=1e-5, atol=1e-5)

    launch(*fit_cmd(str(tmp_path / "zb"), str(tmp_path / "za"), tmp_path / "fit", "--batch_size=8",
                    "--mesh=data=4", "--checkpoint_every=2", "--lam=1e-1"))
    st = load_npz(tmp_path / "fit" / "stats.npz")
    x, y = z_b.astype(np.float64), z_a.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert int(st["n"]) == len(TEXTS)
    np.testing.assert_allclose(st["c_ba"], xc.T @ yc, rtol=1e-4, atol=1e-4)
    w = np.linalg.solve(xc.T @ xc + 1e-1 * np.eye(x.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(load_npz(tmp_path / "fit" / "map.npz")["W"], w, rtol=1e-3, atol=1e-3)

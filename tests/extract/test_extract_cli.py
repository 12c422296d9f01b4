"""python -m linalign.extract end to end on a tiny saved model and a .txt corpus."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from linalign import extract

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from encoder_parity import tiny_model_dir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_cli_writes_store_with_mesh(tmp_path):
    d, _ = tiny_model_dir(tmp_path, "bert")
    corpus = tmp_path / "texts.txt"
    lines = [" ".join(f"w{(i * 7 + j) % 90}" for j in range(1 + i % 13)) for i in range(20)]
    corpus.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
    out = tmp_path / "store"
    env = dict(os.environ, LINALIGN_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "linalign.extract", f"--model={d}", f"--corpus={corpus}",
           f"--out_dir={out}", "--batch_size=4", "--mesh=data=8", "--shard_rows=8"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"wrote {out}: 20 texts, dim 32, bert mean pooling"), summary
    st = extract.open_store(out, verify=True)
    assert st.manifest["text_fingerprint"] == extract.text_fingerprint(lines)
    assert st.manifest["corpus"] == "texts" and len(st.manifest["shards"]) == 3
    assert np.isfinite(st.read_all()).all()
    bad = subprocess.run(cmd[:4] + [f"--corpus={tmp_path / 'missing.txt'}", f"--out_dir={out}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "missing.txt: no such file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr

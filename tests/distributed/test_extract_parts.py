"""Extraction into a store of one part per process, read back by every command."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli_env

sys.path.insert(0, str(REPO / "tests" / "models"))
from encoder_parity import tiny_model_dir  # noqa: E402

from linalign import checkpoints, extract as extract_lib  # noqa: E402
from linalign.align.sources import open_embeddings, open_token_pairs  # noqa: E402
from linalign.extract import job  # noqa: E402
from linalign.extract.store import StoreError, join_parts, open_store, part_name  # noqa: E402

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
        part = job.extract_part(model, TEXTS, tmp_path, p, 3, corpus="t", **KW)
        lo, hi = part.manifest["part"]["rows"]
        assert part.num_rows == hi - lo
    st = join_parts(tmp_path, [part_name(p, 3) for p in range(3)])
    assert [p["rows"] for p in st.manifest["parts"]] == [[0, 13], [13, 25], [25, 37]]
    assert st.manifest["text_fingerprint"] == extract_lib.text_fingerprint(TEXTS)
    # Other batch compositions than the whole-corpus run: equal to float32 rounding.
    np.testing.assert_allclose(open_store(tmp_path).read_all(), whole, rtol=1e-5, atol=1e-6)
    src = open_embeddings(tmp_path)  # the fits' reader crosses part boundaries
    np.testing.assert_array_equal(src.read(10, 30), open_store(tmp_path).read_all()[10:30])


def test_missing_or_mismatched_parts_are_refused(tiny, tmp_path):
    _, model = tiny
    names = [part_name(0, 2), part_name(1, 2)]
    job.extract_part(model, TEXTS, tmp_path, 0, 2, **KW)
    with pytest.raises(StoreError, match="part-00001-of-00002"):
        join_parts(tmp_path, names)
    with pytest.raises(StoreError, match="did not finish on every process"):
        open_embeddings(tmp_path)
    job.extract_part(model, TEXTS, tmp_path, 1, 2, **{**KW, "pooling": "first"})
    with pytest.raises(StoreError, match="pooling"):
        join_parts(tmp_path, names)
    other = tmp_path / "other"  # a part extracted from another corpus
    job.extract_part(model, TEXTS, other, 0, 2, **KW)
    job.extract_part(model, TEXTS[:-1], other, 1, 2, **KW)
    with pytest.raises(StoreError, match="rows|corpus_fingerprint"):
        join_parts(other, names)
    assert not (other / "manifest.json").exists() and not (tmp_path / "manifest.json").exists()
    with pytest.raises(ValueError, match="would get none"):
        job.extract_part(model, TEXTS[:2], tmp_path / "few", 2, 3, **KW)


def _launch(tmp_path, *cmd):
    env = cli_env(2)
    env["PYTHON"] = sys.executable
    env["LINALIGN_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(["bash", str(REPO / "launch" / "local_cpu.sh"), "-n", "2", "-m", "1",
                           "-t", "300", "--", *cmd], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_two_process_extraction_is_read_by_linalign_fit(tiny, tmp_path):
    """Two processes extract both models through launch/local_cpu.sh; the single-host
    ``python -m linalign.fit`` reads the stores and writes a map that ``AffineMap.load`` and
    ``python -m linalign.helix query`` read."""
    from linalign.align.affine_map import AffineMap

    bert_dir, bert = tiny
    mpnet_dir, _ = tiny_model_dir(tmp_path, "mpnet")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    for name, d in (("zb", bert_dir), ("za", mpnet_dir)):
        _launch(tmp_path, sys.executable, "-m", "linalign.distributed", "extract", f"--model={d}",
                f"--corpus={corpus}", f"--out_dir={tmp_path / name}", "--pooling=mean",
                "--max_length=40", "--batch_size=4", "--truncation=silent")
    m = json.loads((tmp_path / "zb" / "manifest.json").read_text())
    assert [p["name"] for p in m["parts"]] == [part_name(0, 2), part_name(1, 2)]
    np.testing.assert_allclose(open_store(tmp_path / "zb").read_all(),
                               extract_lib.extract(bert, TEXTS, **KW), rtol=1e-5, atol=1e-5)
    env = cli_env(1)
    env["LINALIGN_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "linalign.fit", f"--source={tmp_path / 'zb'}",
                           f"--target={tmp_path / 'za'}", f"--out_dir={tmp_path / 'fit'}",
                           "--lam=rel:1e-2", "--val_fraction=0"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    amap = AffineMap.load(tmp_path / "fit")
    assert amap.metadata.n == len(TEXTS) and amap.metadata.lam_selection == "fixed-relative"
    # ... and HELIX serves a head for it: the client maps with the file and gets encrypted scores.
    rng = np.random.default_rng(0)
    v = rng.normal(size=(amap.d_a, 3))
    np.savez(tmp_path / "head.npz", v_dk=v, c_k=rng.normal(size=3))
    z = open_store(tmp_path / "zb").read_all()[:2]
    np.save(tmp_path / "q.npy", z)
    helix = [sys.executable, "-m", "linalign.helix"]
    server = subprocess.Popen(helix + ["serve", "--port=0", f"--port_file={tmp_path / 'port'}",
                                       f"--head={tmp_path / 'head.npz'}", "--max_connections=1",
                                       # the provider announces the largest query norm it serves
                                       f"--input_norm={2 * np.linalg.norm(amap(z), axis=1).max():.6g}",
                                       "--max_seconds=300"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "port").exists() or server.poll() is not None:
                break
            time.sleep(0.2)
        assert server.poll() is None, server.communicate()[1][-3000:]
        q = subprocess.run(helix + ["query", f"--port={(tmp_path / 'port').read_text()}",
                                    f"--map={tmp_path / 'fit'}", f"--embeddings={tmp_path / 'q.npy'}",
                                    f"--out={tmp_path / 's.npy'}"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert q.returncode == 0, q.stderr[-3000:]
    finally:
        server.kill()
    want = np.asarray(amap(z), np.float64) @ v + np.load(tmp_path / "head.npz")["c_k"]
    # The reply's circuit-privacy flooding (std < 5e-3 of these scores, asserted in
    # tests/helix/test_protocol.py) is the error; 0.05 is 10 of its std.
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), want, rtol=0, atol=0.05)


@pytest.mark.slow
def test_two_process_per_token_extraction_keeps_offsets(tiny, tmp_path):
    bert_dir, bert = tiny
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    _launch(tmp_path, sys.executable, "-m", "linalign.distributed", "extract",
            f"--model={bert_dir}", f"--corpus={corpus}", f"--out_dir={tmp_path / 'tok'}",
            "--per_token", "--max_length=40", "--batch_size=4", "--truncation=silent",
            "--shard_rows=8")
    st = open_store(tmp_path / "tok", verify=True)
    assert st.per_token and len(st.parts) == 2 and st.num_rows == len(TEXTS)
    ref = extract_lib.extract(bert, TEXTS, per_token=True, max_length=40, batch_size=4,
                              truncation="silent", progress=False)
    got = st.read_all()
    np.testing.assert_array_equal(got.offsets_n2, ref.offsets_n2)
    np.testing.assert_array_equal(got.lengths_b, ref.lengths_b)
    np.testing.assert_allclose(got.states_nd, ref.states_nd, rtol=1e-5, atol=1e-5)
    # A store paired with itself: every real token pairs with itself.
    src, tgt, text_of = open_token_pairs(tmp_path / "tok", tmp_path / "tok", progress=False)
    np.testing.assert_array_equal(src.read(0, src.num_rows), tgt.read(0, tgt.num_rows))
    assert src.num_rows == int((ref.offsets_n2[:, 1] > ref.offsets_n2[:, 0]).sum())
    assert text_of[0] == 0 and text_of[-1] == len(TEXTS) - 1

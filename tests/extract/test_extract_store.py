"""Embedding store: round trip, batching across shards, resume, integrity errors."""

import json

import numpy as np
import pytest

from linalign.extract import store as st


def _meta(**kw):
    m = dict(model="m", model_fingerprint="fp", tokenizer="tok", pooling="mean",
             text_fingerprint=st.text_fingerprint(["a", "b"]), total_rows=10)
    m.update(kw)
    return m


def _write(path, chunks, finalize=True, **kw):
    w = st.StoreWriter(path, per_token=False, dtype="float32", dim=4, **_meta(**kw))
    for c in chunks:
        w.append(c)
    return w.finalize() if finalize else w


def test_round_trip_and_batches(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    _write(tmp_path / "s", [x[:3], x[3:7], x[7:]])
    s = st.open_store(tmp_path / "s", verify=True)
    assert s.num_rows == 10 and s.dim == 4 and s.complete
    np.testing.assert_array_equal(s.read_all(), x)
    batches = list(s.iter_batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), x)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["model"] == "m" and len(m["shards"]) == 3 and all(len(e["sha256"]) == 64 for e in m["shards"])


def test_per_token_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    lens = np.array([2, 3, 1], np.int32)
    rows = st.TokenRows(rng.normal(size=(6, 4)).astype(np.float32), lens,
                        np.arange(6, dtype=np.int32), np.stack([np.arange(6), np.arange(6) + 1], 1))
    w = st.StoreWriter(tmp_path / "t", per_token=True, dtype="float32", dim=4, **_meta(total_rows=6))
    w.append(rows.slice_rows(0, 2))
    w.append(rows.slice_rows(2, 3))
    w.append(rows)
    s = w.finalize()
    got = s.read_all()
    assert len(got) == 6
    np.testing.assert_array_equal(got.states_nd[:6], rows.states_nd)
    b = list(s.iter_batches(2))
    assert [len(x) for x in b] == [2, 2, 2]
    st_, ids, off = b[1].row(0)  # global row 2 = the 1-token row of the first copy
    np.testing.assert_array_equal(ids, [5])
    np.testing.assert_array_equal(off, [[5, 6]])


def test_resume_keeps_prefix_and_drops_orphans(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    _write(tmp_path / "s", [x[:3]], finalize=False)
    # An interrupted later shard: its file exists but the manifest never listed it.
    (tmp_path / "s" / "shard-00001.npy").write_bytes(b"partial")
    w2 = st.StoreWriter(tmp_path / "s", per_token=False, dtype="float32", dim=4, **_meta())
    assert w2.num_rows == 3 and not w2.complete
    w2.append(x[3:])
    np.testing.assert_array_equal(w2.finalize().read_all(), x)


def test_incomplete_store_refused(tmp_path):
    _write(tmp_path / "s", [np.zeros((3, 4), np.float32)], finalize=False)
    with pytest.raises(st.StoreError, match="incomplete"):
        st.open_store(tmp_path / "s")
    assert st.open_store(tmp_path / "s", require_complete=False).num_rows == 3


def test_total_rows_checked(tmp_path):
    with pytest.raises(st.StoreError, match="total_rows=10"):
        _write(tmp_path / "s", [np.zeros((3, 4), np.float32)])


def test_mismatched_identity_refused(tmp_path):
    _write(tmp_path / "s", [np.zeros((3, 4), np.float32)], finalize=False)
    with pytest.raises(st.StoreError, match="model_fingerprint"):
        st.StoreWriter(tmp_path / "s", per_token=False, dtype="float32", dim=4,
                       **_meta(model_fingerprint="other"))
    w = st.StoreWriter(tmp_path / "s", per_token=False, dtype="float32", dim=4, overwrite=True,
                       **_meta(model_fingerprint="other"))
    assert w.num_rows == 0 and not (tmp_path / "s" / "shard-00000.npy").exists()


def test_missing_and_corrupt_shards(tmp_path):
    x = np.ones((10, 4), np.float32)
    _write(tmp_path / "s", [x[:5], x[5:]])
    p = tmp_path / "s" / "shard-00001.npy"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(st.StoreError, match="shard-00001.npy is corrupt"):
        st.open_store(tmp_path / "s").read_all()
    p.unlink()
    with pytest.raises(st.StoreError, match="shard-00001.npy listed in the manifest is missing"):
        st.open_store(tmp_path / "s")
    with pytest.raises(st.StoreError, match="manifest.json is missing"):
        st.open_store(tmp_path / "nothing")


def test_bad_appends(tmp_path):
    w = st.StoreWriter(tmp_path / "s", per_token=False, dtype="float32", dim=4, **_meta())
    with pytest.raises(st.StoreError, match=r"shape \[n, 4\]"):
        w.append(np.zeros((2, 3), np.float32))
    y = np.zeros((3, 4), np.float32)
    y[2, 1] = np.nan
    with pytest.raises(st.StoreError, match="row 2"):
        w.append(y)
    with pytest.raises(st.StoreError, match="dtype"):
        st.StoreWriter(tmp_path / "u", per_token=False, dtype="int8", dim=4)


def test_text_fingerprint_is_order_and_boundary_sensitive():
    assert st.text_fingerprint(["ab", "c"]) != st.text_fingerprint(["a", "bc"])
    assert st.text_fingerprint(["a", "b"]) != st.text_fingerprint(["b", "a"])
    assert st.text_fingerprint(["a", "b"]) == st.text_fingerprint(iter(["a", "b"]))

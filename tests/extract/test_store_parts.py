"""A store of several parts (one per process): joined, read as one, refused when the parts do not
match, and manifests that cannot point outside their store."""

import json

import numpy as np
import pytest

from linalign.align.sources import open_embeddings
from linalign.extract import store as st
from linalign.extract.job import load_texts

X = np.random.default_rng(0).normal(size=(11, 4)).astype(np.float32)


def _part(root, p, count, rows, dim=4, model="m", data=None, corpus_rows=11):
    w = st.StoreWriter(root / st.part_name(p, count), per_token=False, dtype="float32", dim=dim,
                       model=model, model_fingerprint="fp-" + model, pooling="mean",
                       text_fingerprint=f"slice{p}", total_rows=rows[1] - rows[0],
                       part={"index": p, "count": count, "rows": list(rows),
                             "corpus_rows": corpus_rows, "corpus_fingerprint": "corpus"})
    x = X[rows[0]:rows[1]] if data is None else data
    for i in range(0, len(x), 2):
        w.append(x[i:i + 2])
    return w.finalize()


def test_parts_read_as_one_store(tmp_path):
    for p, rows in enumerate([(0, 4), (4, 8), (8, 11)]):
        _part(tmp_path, p, 3, rows)
    joined = st.join_parts(tmp_path, [st.part_name(p, 3) for p in range(3)], corpus="c")
    s = st.open_store(tmp_path, verify=True)
    assert s.num_rows == 11 and len(s.parts) == 3 and s.num_shards == 6 and s.complete
    assert s.manifest["text_fingerprint"] == "corpus" and joined.manifest == s.manifest
    np.testing.assert_array_equal(s.read_all(), X)
    np.testing.assert_array_equal(np.concatenate(list(s.iter_batches(3))), X)
    src = open_embeddings(tmp_path)  # what every fit reads
    np.testing.assert_array_equal(src.read(3, 9), X[3:9])
    assert src.model == "m" and src.text_fingerprint == "corpus"
    # The manifest lists plain names only.
    assert [p["name"] for p in json.loads((tmp_path / "manifest.json").read_text())["parts"]] == \
        [st.part_name(p, 3) for p in range(3)]


@pytest.mark.parametrize("kw, field", [({"dim": 5, "data": np.ones((7, 5), np.float32)}, "dim"),
                                       ({"model": "other"}, "model")])
def test_parts_of_different_widths_or_models_are_refused_and_nothing_is_written(tmp_path, kw, field):
    _part(tmp_path, 0, 2, (0, 4))
    _part(tmp_path, 1, 2, (4, 11), **kw)
    with pytest.raises(st.StoreError, match=rf"part-00001-of-00002 differs .* in .*{field}"):
        st.join_parts(tmp_path, [st.part_name(0, 2), st.part_name(1, 2)])
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(st.StoreError, match="did not finish on every process"):
        st.open_store(tmp_path)


def test_missing_part_and_gaps_are_refused(tmp_path):
    _part(tmp_path, 0, 2, (0, 4))
    with pytest.raises(st.StoreError, match="part-00001-of-00002"):
        st.join_parts(tmp_path, [st.part_name(0, 2), st.part_name(1, 2)])
    _part(tmp_path, 1, 2, (5, 11), data=X[4:10])
    with pytest.raises(st.StoreError, match="expected it to start at row 4"):
        st.join_parts(tmp_path, [st.part_name(0, 2), st.part_name(1, 2)])
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.npy", "a/../../b.npy", ".."])
def test_manifest_entries_must_be_plain_names(tmp_path, bad):
    s = tmp_path / "s"
    _part(s, 0, 1, (0, 11))
    d = s / st.part_name(0, 1)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][0]["file"] = bad
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(st.StoreError, match="not a file name inside the store"):
        st.open_store(d)
    (s / "manifest.json").write_text(json.dumps({"format_version": 1, "per_token": False,
                                                 "dtype": "float32", "dim": 4, "num_rows": 11,
                                                 "complete": True, "parts": [{"name": bad}]}))
    with pytest.raises(st.StoreError, match="not a file name inside the store"):
        st.open_store(s)


def test_overwrite_never_deletes_outside_the_store(tmp_path):
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"precious")
    sibling = tmp_path / "shard-00000.npy"  # a store's file name, but outside the store
    sibling.write_bytes(b"also precious")
    store = tmp_path / "s"
    w = st.StoreWriter(store, per_token=False, dtype="float32", dim=4, model="m")
    w.append(X[:2])
    m = json.loads((store / "manifest.json").read_text())
    m["shards"][0]["file"] = str(victim)
    m["shards"].append({"file": "../shard-00000.npy", "rows": 1, "sha256": "0"})
    (store / "manifest.json").write_text(json.dumps(m))
    w2 = st.StoreWriter(store, per_token=False, dtype="float32", dim=4, model="m", overwrite=True)
    w2.append(X[:3])
    assert victim.read_bytes() == b"precious" and sibling.read_bytes() == b"also precious"
    np.testing.assert_array_equal(w2.finalize().read_all(), X[:3])
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "shard-00000.npy"]
    # Without overwrite the forged manifest is refused before anything is touched.
    m["complete"] = False
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(st.StoreError, match="not a file name inside the store"):
        st.StoreWriter(store, per_token=False, dtype="float32", dim=4, model="m")
    assert victim.exists()


def test_earlier_parts_json_layout_still_opens(tmp_path):
    for p, rows in enumerate([(0, 6), (6, 11)]):
        _part(tmp_path, p, 2, rows)
    (tmp_path / "parts.json").write_text(json.dumps({
        "version": 1, "num_rows": 11, "dim": 4, "per_token": False, "dtype": "float32",
        "model_fingerprint": "fp-m", "corpus_fingerprint": "corpus",
        "parts": [{"name": st.part_name(0, 2), "rows": [0, 6]},
                  {"name": st.part_name(1, 2), "rows": [6, 11]}]}))
    np.testing.assert_array_equal(st.open_store(tmp_path).read_all(), X)


def test_load_texts_joins_corpora_and_shuffles(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "b.txt").write_text("four\n")
    texts, name = load_texts(f"{tmp_path / 'a.txt'}+{tmp_path / 'b.txt'}")
    assert texts == ["one", "two", "three", "four"] and name == "a+b"
    shuffled, _ = load_texts(f"{tmp_path / 'a.txt'}+{tmp_path / 'b.txt'}", shuffle_seed=0)
    assert sorted(shuffled) == sorted(texts)
    assert load_texts(f"{tmp_path / 'a.txt'}+{tmp_path / 'b.txt'}", shuffle_seed=0, limit=2)[0] == shuffled[:2]
    with pytest.raises(ValueError, match="empty part"):
        load_texts(f"{tmp_path / 'a.txt'}+")

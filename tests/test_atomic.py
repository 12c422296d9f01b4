"""linalign.atomic: the one temporary-name-then-rename helper."""

import json
import os
import pathlib

import numpy as np
import pytest

from linalign.atomic import atomic_dir, atomic_file, atomic_write, atomic_write_json


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_text_bytes_and_json(tmp_path):
    atomic_write(tmp_path / "a.txt", "héllo")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "sub" / "c.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "sub" / "c.json").read_text()) == {"a": [1.5], "b": 1}
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_atomic_file_failure_keeps_old_and_leaves_nothing(tmp_path):
    target = tmp_path / "x.npy"
    np.save(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_file(target, suffix=".npy") as tmp:
            np.save(tmp, np.zeros(5))
            raise RuntimeError("died mid-write")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _leftovers(tmp_path) == []
    with atomic_file(target, suffix=".npz") as tmp:
        np.savez(tmp, a=np.ones(2))  # np.savez would append .npz to a name without it
        assert tmp.name.endswith(".npz")
    np.testing.assert_array_equal(np.load(target)["a"], np.ones(2))


def test_atomic_dir_refuses_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "f").write_text("1")
    assert (out / "f").read_text() == "1"
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(out):
            pass
    with pytest.raises(FileExistsError, match="not written by this command"):
        with atomic_dir(out, replace=True, may_replace=lambda p: (p / "marker").exists()):
            raise AssertionError("the body must not run")
    with pytest.raises(ValueError):
        with atomic_dir(out, replace=True) as d:
            (d / "f").write_text("half")
            raise ValueError("boom")
    assert (out / "f").read_text() == "1"
    with atomic_dir(out, replace=True) as d:
        (d / "g").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["g"]
    with atomic_dir(out, keep_existing=True) as d:
        (d / "h").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["g"]  # first writer wins
    assert _leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic_dir(tmp_path / "file", replace=True):
            pass


def test_jsonable_makes_strict_json(tmp_path):
    from linalign.atomic import jsonable

    obj = {1: np.float32(0.5), "a": np.arange(3), "p": tmp_path / "x", "bad": float("nan"),
           "t": (np.int64(7), np.float64("inf")), "s": "text"}
    out = json.loads(json.dumps(jsonable(obj), allow_nan=False))
    assert out == {"1": 0.5, "a": [0, 1, 2], "p": str(tmp_path / "x"), "bad": None,
                   "t": [7, None], "s": "text"}


def test_keep_existing_survives_a_writer_that_renames_in_first(tmp_path, monkeypatch):
    """Two processes converting the same checkpoint: the other one's rename lands between this
    one's existence check and its own rename (the rename then fails with ENOTEMPTY)."""
    import linalign.atomic as atomic

    real_replace = os.replace

    def other_process_first(src, dst):
        dst = pathlib.Path(dst)
        if dst.name.startswith("entry") and not dst.exists():
            other = tmp_path / ".other"
            other.mkdir()
            (other / "theirs").write_text("t")
            real_replace(other, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", other_process_first)
    out = tmp_path / "entry"
    with atomic_dir(out, keep_existing=True) as d:
        (d / "ours").write_text("o")
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]
    assert _leftovers(tmp_path) == []
    # Without keep_existing the same race is an error, not a silent loss of this writer's output.
    out2 = tmp_path / "entry2"
    with pytest.raises(OSError):
        with atomic_dir(out2) as d:
            (d / "ours").write_text("o")
    assert sorted(p.name for p in out2.iterdir()) == ["theirs"]

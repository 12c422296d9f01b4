"""Loading ``org/name`` from a local Hugging Face cache laid out as huggingface_hub lays it out
(blobs, snapshots/<commit> of links, refs/main), built in tmp_path; no network."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from linalign import checkpoints
from linalign.checkpoints import hub_cache
from linalign.models.base import CheckpointError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from encoder_parity import random_batch, tiny_model_dir  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def to_hub_layout(src: pathlib.Path, cache: pathlib.Path, repo_id: str, commit: str = COMMIT,
                  ref: str | None = "main") -> pathlib.Path:
    """Copies a saved model folder into ``cache`` the way huggingface_hub stores a download."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def test_org_name_loads_like_the_directory(tmp_path, hub):
    d, ref = tiny_model_dir(tmp_path, "bert")
    snap = to_hub_layout(d, hub, "acme/tiny-bert")
    assert (snap / "model.safetensors").is_symlink()
    assert checkpoints.resolve("acme/tiny-bert") == snap
    m = checkpoints.load("acme/tiny-bert", cache_root=tmp_path / "cache")
    direct = checkpoints.load(d, cache=False)
    assert m.name == "acme/tiny-bert" and m.source == str(snap)
    ids, mask = random_batch(2, 9, 101, 0, [9, 4])
    np.testing.assert_array_equal(np.asarray(m(ids, mask).last_hidden_state),
                                  np.asarray(direct(ids, mask).last_hidden_state))
    # The second load comes from the converted-model cache and gives the same states.
    again = checkpoints.load("acme/tiny-bert", cache_root=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(again(ids, mask).last_hidden_state),
                                  np.asarray(direct(ids, mask).last_hidden_state))


def test_cache_location_and_revisions(tmp_path, monkeypatch):
    d, _ = tiny_model_dir(tmp_path, "bert")
    home = tmp_path / "hf_home"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub_cache.cache_dir() == home / "hub"
    main = to_hub_layout(d, home / "hub", "acme/tiny")
    other = "f" * 40
    pinned = to_hub_layout(d, home / "hub", "acme/tiny", commit=other, ref=None)
    (home / "hub" / "models--acme--tiny" / "refs" / "v2").write_text(other)
    assert checkpoints.resolve("acme/tiny") == main
    assert checkpoints.resolve("acme/tiny@v2") == pinned
    assert checkpoints.resolve(f"acme/tiny@{other}") == pinned
    with pytest.raises(CheckpointError, match=r"no revision 'v3'.*refs there: \['main', 'v2'\]"):
        checkpoints.resolve("acme/tiny@v3")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub_cache.cache_dir() == tmp_path / "user" / ".cache" / "huggingface" / "hub"


def test_absent_model_names_where_it_looked(tmp_path, hub):
    with pytest.raises(CheckpointError, match="acme/nothing is not an existing path, and 'acme/nothing' is not in "
                                              "the local Hugging Face cache \\(looked for "
                                              + str(hub / "models--acme--nothing").replace(".", r"\.")):
        checkpoints.load("acme/nothing", cache=False)
    with pytest.raises(CheckpointError, match="neither an existing path nor a usable asset.*looked for "
                                              + str(hub / "models--no-such-model").replace(".", r"\.")):
        checkpoints.load("no-such-model", cache=False)
    d, _ = tiny_model_dir(tmp_path, "bert")
    snap = to_hub_layout(d, hub, "acme/broken")
    shutil.rmtree(snap)
    with pytest.raises(CheckpointError, match=f"points at commit {COMMIT}, but .* does not exist"):
        checkpoints.load("acme/broken", cache=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load("../acme/x", cache=False)  # never looked up in the cache


def test_single_gguf_snapshot_resolves_to_the_file(tmp_path, hub):
    src = tmp_path / "gguf_repo"
    src.mkdir()
    (src / "model.Q8_0.gguf").write_bytes(b"GGUF")
    (src / "README.md").write_text("a model")
    snap = to_hub_layout(src, hub, "acme/tiny-gguf")
    assert checkpoints.resolve("acme/tiny-gguf") == snap / "model.Q8_0.gguf"
    (snap / "model.Q4_0.gguf").symlink_to(snap / "model.Q8_0.gguf")
    with pytest.raises(CheckpointError, match="holds 2 GGUF files"):
        checkpoints.resolve("acme/tiny-gguf")

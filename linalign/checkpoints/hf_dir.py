"""Reads Hugging Face model directories: config.json, safetensors weights, tokenizer.

Handles a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``, and
sentence-transformers directories (``modules.json`` pointing at the transformer sub-folder, the
pooling mode in ``1_Pooling/config.json`` and ``max_seq_length`` in
``sentence_bert_config.json``). Every safetensors header is checked against the file size before
reading, so a truncated download is reported by name instead of failing deep inside the reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import struct
from typing import Optional

import numpy as np

from linalign.models.base import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclasses.dataclass
class HFDir:
    """What a directory holds.

    Attributes:
      root: the directory given.
      model_dir: the folder with config.json and weights (root, or the sentence-transformers
        Transformer module's sub-folder).
      weight_files: safetensors files, in order.
      default_pooling: "mean" / "first" / "last" from the pooling config, else None.
      max_seq_length: sentence-transformers' max_seq_length, else None.
      normalize: sentence-transformers pipeline L2-normalizes embeddings.
    """

    root: pathlib.Path
    model_dir: pathlib.Path
    weight_files: list[pathlib.Path]
    default_pooling: Optional[str] = None
    max_seq_length: Optional[int] = None
    normalize: bool = False


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


_POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "first",
                  "pooling_mode_lasttoken": "last"}


def _sentence_transformers(root: pathlib.Path) -> tuple[pathlib.Path, Optional[str], Optional[int], bool]:
    """(model_dir, pooling, max_seq_length, normalize) from a sentence-transformers layout."""
    model_dir, pooling, max_len, normalize = root, None, None, False
    modules = root / "modules.json"
    if modules.exists():
        for m in _read_json(modules):
            kind = m.get("type", "")
            sub = root / m.get("path", "")
            if kind.endswith("models.Transformer"):
                model_dir = sub
            elif kind.endswith("models.Pooling"):
                pcfg = _read_json(sub / "config.json")
                modes = [v for k, v in _POOLING_FLAGS.items() if pcfg.get(k)]
                others = [k for k, v in pcfg.items() if k.startswith("pooling_mode") and v
                          and k not in _POOLING_FLAGS]
                if others or len(modes) != 1:
                    logging.warning("%s: pooling %s not supported; defaulting to mean pooling",
                                    sub, others or modes)
                    pooling = "mean"
                else:
                    pooling = modes[0]
            elif kind.endswith("models.Normalize"):
                normalize = True
    elif (root / "1_Pooling" / "config.json").exists():
        pcfg = _read_json(root / "1_Pooling" / "config.json")
        modes = [v for k, v in _POOLING_FLAGS.items() if pcfg.get(k)]
        pooling = modes[0] if len(modes) == 1 else "mean"
    sbc = model_dir / "sentence_bert_config.json"
    if not sbc.exists():
        sbc = root / "sentence_bert_config.json"
    if sbc.exists():
        max_len = _read_json(sbc).get("max_seq_length")
    return model_dir, pooling, max_len, normalize


def inspect(path) -> HFDir:
    """Finds config, weights and pooling in a Hugging Face (or sentence-transformers) directory.

    Raises:
      CheckpointError: no config.json, no safetensors weights, or a shard named by the index
        that does not exist.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory")
    model_dir, pooling, max_len, normalize = _sentence_transformers(root)
    if not (model_dir / "config.json").exists():
        raise CheckpointError(f"{model_dir}: config.json is missing")
    if (model_dir / INDEX).exists():
        index = _read_json(model_dir / INDEX)
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{model_dir / INDEX} has an empty weight_map")
        weight_files = [model_dir / f for f in files]
        for f in weight_files:
            if not f.exists():
                raise CheckpointError(f"{f} is missing (listed in {INDEX})")
    elif (model_dir / WEIGHTS).exists():
        weight_files = [model_dir / WEIGHTS]
    else:
        others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
            p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {others}; only safetensors are read)" if others else ""
        raise CheckpointError(f"{model_dir}: neither {WEIGHTS} nor {INDEX} exists{hint}")
    return HFDir(root, model_dir, weight_files, pooling, max_len, normalize)


def _is_uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_header(path: pathlib.Path, header) -> None:
    """Every entry of a parsed safetensors header is ``{"dtype": str, "shape": [uint, ...],
    "data_offsets": [begin, end]}`` with begin <= end (``__metadata__`` a string map).

    Raises:
      CheckpointError naming the file, the tensor and the field.
    """
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object")
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise CheckpointError(f"{path}: safetensors header field '__metadata__' is "
                                      f"{type(entry).__name__}, expected an object")
            continue
        where = f"{path}: safetensors header entry {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where} is {entry!r} ({type(entry).__name__}), expected an object "
                                  "with dtype, shape and data_offsets")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in entry:
                raise CheckpointError(f"{where} lacks field {field!r}")
        if not isinstance(entry["dtype"], str):
            raise CheckpointError(f"{where}: field 'dtype' is {entry['dtype']!r}, expected a string")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(_is_uint(s) for s in shape):
            raise CheckpointError(f"{where}: field 'shape' is {shape!r}, expected a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets)
                or offsets[0] > offsets[1]):
            raise CheckpointError(f"{where}: field 'data_offsets' is {offsets!r}, expected [begin, end] "
                                  "with 0 <= begin <= end")


def safetensors_header(path: pathlib.Path) -> tuple[dict, int, bytes]:
    """Parses and size-checks a safetensors header.

    Returns:
      (header dict, header length, raw header bytes).

    Raises:
      CheckpointError naming the file if the header is unreadable or the file is shorter than
      the header says (a truncated download or copy).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes; no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CheckpointError(f"{path} is truncated or not a safetensors file "
                                  f"(header claims {n} bytes, file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    _check_header(path, header)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: header describes {8 + n + end} bytes, "
                              f"file has {size}")
    return header, n, raw


def read_tensors(files: list[pathlib.Path], expected: Optional[dict] = None) -> dict[str, np.ndarray]:
    """Reads all tensors (name -> numpy array) from safetensors files.

    Args:
      files: safetensors paths.
      expected: optional index weight_map (name -> file name) to cross-check.

    Raises:
      CheckpointError naming the file on truncation, corruption, duplicate names, or
      tensors the index promises but the shard lacks.
    """
    from safetensors import SafetensorError, safe_open

    out: dict[str, np.ndarray] = {}
    for f in files:
        header, _, _ = safetensors_header(f)
        try:
            with safe_open(str(f), framework="np") as st:
                for k in st.keys():
                    if k in out:
                        raise CheckpointError(f"{f}: tensor {k!r} also appears in another shard")
                    out[k] = st.get_tensor(k)
        except SafetensorError as e:
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from None
        if expected is not None:
            missing = [k for k, v in expected.items() if v == f.name and k not in out]
            if missing:
                raise CheckpointError(f"{f} lacks tensors its index lists: {missing[:5]}")
    return out


def fingerprint(d: HFDir) -> str:
    """Identity of a directory's weights without reading them: sha256 over config.json bytes and,
    per weight file, its name, size, mtime and sha256 of its header (which holds every tensor's
    name, dtype, shape and offsets)."""
    h = hashlib.sha256((d.model_dir / "config.json").read_bytes())
    h.update(json.dumps([d.default_pooling, d.max_seq_length]).encode())
    for f in d.weight_files:
        st = f.stat()
        _, _, raw = safetensors_header(f)
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}:".encode())
        h.update(hashlib.sha256(raw).digest())
    return h.hexdigest()


def read_hf_dir(path) -> tuple[dict, dict, "object", HFDir]:
    """Reads a Hugging Face directory.

    Returns:
      (hf_config dict, tensors name -> np.ndarray, linalign Tokenizer, HFDir).
    """
    from linalign.models.tokenizer import Tokenizer

    d = inspect(path)
    hf_config = _read_json(d.model_dir / "config.json")
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{d.model_dir / 'config.json'} holds a JSON {type(hf_config).__name__}, not an object")
    index = d.model_dir / INDEX
    expected = _read_json(index).get("weight_map") if index.exists() else None
    tensors = read_tensors(d.weight_files, expected)
    tok_dir = d.model_dir if (d.model_dir / "tokenizer.json").exists() else d.root
    try:
        tok = Tokenizer.from_dir(tok_dir)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    if d.max_seq_length:
        # The sentence-transformers pipeline truncates at max_seq_length, not the tokenizer's
        # model_max_length; embeddings are only comparable under the same limit.
        tok.model_max_length = int(d.max_seq_length)
    return hf_config, tensors, tok, d


def default_name(root: pathlib.Path) -> str:
    """A readable model name from a path (skipping generic folder names like "model")."""
    root = pathlib.Path(os.path.abspath(root))
    while root.name in ("model", "models", "snapshot", "") and root.parent != root:
        root = root.parent
    return root.name or "model"

"""The one weight-conversion runner: a checkpoint becomes a params pytree by running a table.

A table is data: one ``Rule`` per source tensor, naming the source key, the shape the config
implies for it, the destination path in the params pytree and a small transform. ``run_table``
checks every source shape before the transform runs (so no reshape ever sees a tensor of the
wrong size), checks the destination shape after it, and refuses tensors that are missing or that
no rule consumes. Every family (``llama``, ``gemma3``, ``bert``, ``mpnet``) and the GGUF reader
(llama.cpp names -> Hugging Face names) are tables run by this one function.

    rules = [Rule("model.norm.weight", (d,), ("norm", "scale")),
             Rule("lm_head.weight", (v, d), ("lm_head_proj", "kernel"), transpose)]
    params = run_table(tensors, rules, family="llama")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from linalign.models.base import CheckpointError


def identity(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """torch ``nn.Linear`` weight [out, in] -> kernel [in, out]."""
    return w.T


def transpose_to(shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
    """[out, in] -> transposed, then reshaped to ``shape`` (e.g. [in, heads, head_dim])."""
    return lambda w: w.T.reshape(shape)


def reshape_to(shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w.reshape(shape)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a conversion table.

    Attributes:
      src: source tensor name (e.g. ``model.layers.0.self_attn.q_proj.weight``).
      src_shape: the shape the config implies; asserted before ``fn`` runs.
      dst: path in the params pytree, outermost key first.
      fn: transform of the numpy array (transpose, reshape, un-permute, offset...).
      dst_shape: asserted after ``fn`` when given.
    """

    src: str
    src_shape: tuple
    dst: tuple
    fn: Callable[[np.ndarray], np.ndarray] = identity
    dst_shape: Optional[tuple] = None


def linear_rules(src: str, dst: tuple, d_in: int, d_out: int, kernel_shape: Optional[tuple] = None,
                 bias: bool = True, names: tuple = ("kernel", "bias"),
                 bias_shape: Optional[tuple] = None) -> list[Rule]:
    """Rules for a torch ``nn.Linear`` ``src`` (weight [d_out, d_in], bias [d_out]).

    Args:
      src: the Linear's name without ``.weight`` / ``.bias``.
      dst: params path of the layer; ``names`` are the kernel and bias leaf names under it.
      kernel_shape: destination kernel shape (default ``(d_in, d_out)``), reached by a transpose
        and a reshape; ``bias_shape`` likewise (default ``(d_out,)``).
      bias: whether the checkpoint carries a bias.
    """
    kshape = tuple(kernel_shape or (d_in, d_out))
    rules = [Rule(f"{src}.weight", (d_out, d_in), dst + (names[0],),
                  transpose if kshape == (d_in, d_out) else transpose_to(kshape), kshape)]
    if bias:
        bshape = tuple(bias_shape or (d_out,))
        rules.append(Rule(f"{src}.bias", (d_out,), dst + (names[1],),
                          identity if bshape == (d_out,) else reshape_to(bshape), bshape))
    return rules


def _names(xs: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(repr(x) for x in xs[:most])
    return shown + (f" ... ({len(xs)} in all)" if len(xs) > most else "")


def run_table(tensors: Mapping[str, Any], rules: Iterable[Rule], family: str,
              ignore: Callable[[str], bool] = lambda name: False) -> dict:
    """Runs a conversion table.

    Args:
      tensors: source name -> array (numpy, or anything ``np.asarray`` reads; a mapping that
        produces its values lazily is read once per rule, in table order).
      rules: the table.
      family: names the format in error messages ("llama", "gguf", ...).
      ignore: source names that are dropped knowingly (buffers, pooler heads, ...); it may
        raise ``CheckpointError`` itself to refuse a tensor it inspects.

    Returns:
      Nested dict of numpy arrays keyed by each rule's ``dst``.

    Raises:
      CheckpointError: a tensor is missing, has a shape other than its rule's, or is consumed
        by no rule and not ignored.
    """
    params: dict = {}
    missing, used = [], set()
    for r in rules:
        if r.src not in tensors:
            missing.append(r.src)
            continue
        w = np.asarray(tensors[r.src])
        if tuple(w.shape) != tuple(r.src_shape):
            raise CheckpointError(f"{family} tensor {r.src!r} has shape {tuple(w.shape)}, "
                                  f"config implies {tuple(r.src_shape)}")
        out = np.asarray(r.fn(w))
        if r.dst_shape is not None and tuple(out.shape) != tuple(r.dst_shape):
            raise CheckpointError(f"{family} tensor {r.src!r} converts to shape {tuple(out.shape)}, "
                                  f"expected {tuple(r.dst_shape)}")
        node = params
        for key in r.dst[:-1]:
            node = node.setdefault(key, {})
        if r.dst[-1] in node:
            raise CheckpointError(f"{family}: two rules write {'/'.join(r.dst)}")
        node[r.dst[-1]] = out
        used.add(r.src)
    if missing:
        noun = "tensor" if len(missing) == 1 else "tensors"
        raise CheckpointError(f"{family} checkpoint lacks {noun} {_names(missing)}")
    extra = sorted(k for k in tensors if k not in used and not ignore(k))
    if extra:
        raise CheckpointError(f"{family} checkpoint has tensors this port does not use: {_names(extra)}")
    return params


def strip_prefix(tensors: Mapping[str, Any], prefixes: Sequence[str]) -> dict:
    """Drops the first matching leading prefix of each name (e.g. ``bert.`` of a task model)."""
    out = {}
    for k, v in tensors.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out

"""Rotary position embeddings (RoPE) and the scaling types real checkpoints use.

Frequencies follow Hugging Face's ``modeling_rope_utils`` exactly (same float32 arithmetic), so
ports agree with transformers to float32 rounding. Supported ``rope_type`` values:

  default   inv_freq = 1 / base^(2i/d)
  linear    inv_freq / factor
  dynamic   NTK-aware base stretch; it only changes anything once the sequence is longer than
            ``max_position_embeddings``, so it is computed once for the static cache length
  llama3    Llama 3.1's wavelength-dependent smoothing
  yarn      YaRN ramp between interpolated and extrapolated frequencies plus an attention factor

Anything else (``longrope``, ``proportional``, a partial rotary factor) is refused with an error
naming it, instead of silently producing wrong positions.

The rotation uses the "rotate half" layout of Hugging Face checkpoints: the head dimension is split
into two halves [x1, x2] and rotated as [x1 cos - x2 sin, x2 cos + x1 sin].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from linalign.models.base import UnsupportedConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

_KEYS = {
    "default": {"rope_type", "type", "rope_theta"},
    "linear": {"rope_type", "type", "rope_theta", "factor"},
    "dynamic": {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings"},
    "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
    "yarn": {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings",
             "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
}


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """One layer type's rotary setup.

    Attributes:
      rope_type: one of ``ROPE_TYPES``.
      theta: base wavelength.
      params: the scaling parameters as sorted (key, value) pairs (hashable, so configs stay frozen).
    """

    rope_type: str
    theta: float
    params: tuple = ()

    @classmethod
    def from_hf(cls, rope: Optional[dict], default_theta: float, family: str) -> "RopeSpec":
        """Builds a spec from a ``rope_parameters`` / ``rope_scaling`` dict.

        Args:
          rope: the dict (``None`` means default RoPE at ``default_theta``).
          default_theta: base used when the dict has no ``rope_theta``.
          family: family name for error messages.

        Raises:
          UnsupportedConfigError: unknown ``rope_type`` or unknown keys for that type.
        """
        rope = dict(rope or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise UnsupportedConfigError(
                f"{family}: rope_type {rope_type!r} is not implemented (supported: {ROPE_TYPES})")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedConfigError(f"{family}: partial_rotary_factor != 1 is not implemented")
        rope.pop("partial_rotary_factor", None)
        unknown = sorted(set(rope) - _KEYS[rope_type])
        if unknown:
            raise UnsupportedConfigError(
                f"{family}: rope_type {rope_type!r} has unhandled parameter(s) {unknown}")
        theta = float(rope.get("rope_theta", default_theta))
        params = tuple(sorted((k, v) for k, v in rope.items() if k not in ("rope_type", "type", "rope_theta")))
        return cls(rope_type, theta, params)


def inv_freq_and_scale(spec: RopeSpec, head_dim: int, max_position_embeddings: int,
                       seq_len: Optional[int] = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies and the cos/sin scale factor for one spec.

    Args:
      spec: the layer type's rope spec.
      head_dim: rotary dimension (the full head dimension).
      max_position_embeddings: the config's context length (used by ``dynamic``, ``yarn``).
      seq_len: longest sequence the caller will run (``dynamic`` only).

    Returns:
      (inv_freq [head_dim // 2] float32, attention_factor) exactly as transformers computes them.
    """
    p: dict[str, Any] = dict(spec.params)
    dim = head_dim
    base = spec.theta
    # float32 like torch: arange(0, dim, 2) / dim, then base ** that.
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(base) ** exponent)).astype(np.float32)
    if spec.rope_type == "default":
        return inv_freq, 1.0
    if spec.rope_type == "linear":
        return (inv_freq / np.float32(p["factor"])).astype(np.float32), 1.0
    if spec.rope_type == "dynamic":
        factor = float(p["factor"])
        seq = max(seq_len or max_position_embeddings, max_position_embeddings)
        base = base * ((factor * seq / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return (1.0 / (np.float32(base) ** exponent)).astype(np.float32), 1.0
    if spec.rope_type == "llama3":
        factor, lo, hi = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
        old = float(p["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        smooth = ((old / wavelen - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    factor = p.get("factor")
    orig = p["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = p.get("attention_factor")
    if att is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            att = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            att = mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def corr_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = (np.float32(base) ** exponent).astype(np.float32)
    extra, inter = 1.0 / pos_freqs, 1.0 / (np.float32(factor) * pos_freqs)
    keep = 1 - ramp
    return (inter * (1 - keep) + extra * keep).astype(np.float32), float(att)


def cos_sin(positions_bt: jnp.ndarray, inv_freq_f: np.ndarray, scale: float = 1.0):
    """cos and sin tables for given positions.

    Args:
      positions_bt: [batch, seq] integer positions.
      inv_freq_f: [head_dim // 2] float32 inverse frequencies.
      scale: attention factor multiplied into both (YaRN).

    Returns:
      (cos_bth, sin_bth), each [batch, seq, head_dim] float32 (frequencies repeated twice).
    """
    freqs_btf = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_f)[None, None, :]
    emb_bth = jnp.concatenate([freqs_btf, freqs_btf], axis=-1)
    return jnp.cos(emb_bth) * scale, jnp.sin(emb_bth) * scale


def apply_rope(x_btnh: jnp.ndarray, cos_bth: jnp.ndarray, sin_bth: jnp.ndarray) -> jnp.ndarray:
    """Rotates queries or keys; computed in float32, returned in the input dtype.

    Args:
      x_btnh: [batch, seq, heads, head_dim].
      cos_bth, sin_bth: [batch, seq, head_dim] from ``cos_sin``.
    """
    x = x_btnh.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
    return out.astype(x_btnh.dtype)

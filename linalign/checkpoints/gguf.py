"""GGUF files (llama.cpp) -> Hugging Face-style config, HF-named float32 tensors, tokenizer.

``read_gguf(path) -> (hf_config, tensors, tokenizer)`` so that the same ``convert_params`` of a
family module serves safetensors directories and GGUF files.

* Tensors are dequantized with the ``gguf`` package (``gguf.quants.dequantize``: every ggml type
  it knows, Q4_K, Q6_K, Q8_0, ... to float32 numpy, no torch) and renamed from llama.cpp names
  (``blk.3.attn_q.weight``) to Hugging Face names (``model.layers.3.self_attn.q_proj.weight``).
* llama.cpp's converter permutes the rows of Llama q/k projections (it interleaves the two RoPE
  halves per head for its own rotation kernel); ``unpermute_qk`` undoes it, as transformers' GGUF
  loader does. Qwen2/Qwen3/Gemma 3 are stored unpermuted.
* llama.cpp stores Gemma's RMSNorm weights as ``1 + w`` (its norm multiplies by the weight
  directly, Gemma's by ``1 + w``); every Gemma ``*norm.weight`` gets 1 subtracted, matching
  transformers' ``Gemma2TensorProcessor``.
* The config is rebuilt from the metadata with the values transformers would use for what the
  file does not store (Gemma 3: sliding-window pattern 6, local RoPE base 10,000,
  ``query_pre_attn_scalar`` = head_dim; tied embeddings when ``output.weight`` is absent).
* The tokenizer is rebuilt from ``tokenizer.ggml.*`` metadata by transformers' own GGUF
  tokenizer converter (imported lazily) and wrapped in ``linalign.models.tokenizer.Tokenizer``.

Truncated or corrupt files, unknown architectures and tensors the table does not expect raise
``CheckpointError`` / ``UnsupportedConfigError`` naming the problem.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from linalign.models import convert
from linalign.models.base import CheckpointError, UnsupportedConfigError

ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}

# llama.cpp per-block tensor name -> HF name under model.layers.{i}.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",  # Gemma 3 overrides: pre_feedforward_layernorm
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GEMMA_BLOCK_NAMES = dict(_BLOCK_NAMES, ffn_norm="pre_feedforward_layernorm")
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation.

    Args:
      w: [n_heads * head_dim, ...] rows as llama.cpp stores them (per head: pairs interleaved).
      n_heads: query heads for q, kv heads for k.

    Returns:
      Rows in Hugging Face order (per head: first RoPE half, then second half).
    """
    if w.shape[0] % (2 * n_heads):
        raise CheckpointError(f"q/k tensor with {w.shape[0]} rows cannot hold {n_heads} heads")
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF order -> GGUF order); the inverse of ``unpermute_qk``."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path):
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad bytes
        size = os.path.getsize(path)
        raise CheckpointError(f"{path}: not a readable GGUF file ({size} bytes; truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None


def _fields(reader) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.rsplit(".", 1)[1] in ("tokens", "scores", "token_type", "merges"):
            out[key] = len(field.data)  # only the count is needed here; the tokenizer reads them itself
            continue
        try:
            out[key] = field.contents()
        except Exception as e:
            raise CheckpointError(f"GGUF metadata field {key!r} is unreadable: {e}") from None
    return out


def hf_config_from_metadata(meta: dict, tensor_names: set[str]) -> dict:
    """Builds a transformers-style config dict from GGUF metadata.

    Raises:
      UnsupportedConfigError: architecture not served, or metadata that changes the forward
        pass in a way the ports do not implement.
    """
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedConfigError(f"GGUF architecture {arch!r} is not supported (supported: {sorted(ARCHITECTURES)})")

    def get(key, default=None, required=True):
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if required and default is None:
            raise CheckpointError(f"GGUF metadata lacks {full!r}")
        return default

    def get_int(key, default=None, required=True, minimum=1):
        v = get(key, default, required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise CheckpointError(f"GGUF metadata field '{arch}.{key}' is {v!r}; expected an integer >= {minimum}")
        return int(v)

    n_heads = get_int("attention.head_count")
    hidden = get_int("embedding_length")
    n_layers = get_int("block_count")
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        if len(set(n_kv)) != 1:
            raise UnsupportedConfigError(f"GGUF: per-layer kv head counts {n_kv} are not supported")
        meta = dict(meta, **{f"{arch}.attention.head_count_kv": n_kv[0]})
    n_kv = get_int("attention.head_count_kv", n_heads)
    head_dim = (get_int("attention.key_length", 0, required=False, minimum=0)
                or get_int("rope.dimension_count", 0, required=False, minimum=0) or hidden // n_heads)
    if head_dim < 1:
        raise CheckpointError(f"GGUF metadata: embedding_length {hidden} gives no head size for {n_heads} heads")
    value_len = get_int("attention.value_length", head_dim, required=False)
    if value_len != head_dim:
        raise UnsupportedConfigError(f"GGUF: value_length {value_len} != key_length {head_dim}")
    vocab = meta.get(f"{arch}.vocab_size") or meta.get("tokenizer.ggml.tokens")
    if vocab is None:
        raise CheckpointError("GGUF metadata gives no vocabulary size")
    cfg: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": get_int("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "max_position_embeddings": get_int("context_length", 2048, required=False),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    theta = get("rope.freq_base", None, required=False)
    scaling = get("rope.scaling.type", None, required=False)
    if arch == "gemma3":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        cfg["query_pre_attn_scalar"] = head_dim
        cfg["sliding_window"] = get_int("attention.sliding_window", 4096, required=False)
        cfg["layer_types"] = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
        full = {"rope_type": "default", "rope_theta": float(theta or 1_000_000.0)}
        if scaling not in (None, "none"):
            full.update(rope_type=scaling, factor=float(get("rope.scaling.factor")))
        cfg["rope_parameters"] = {"full_attention": full,
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
        for soft in ("final_logit_softcapping", "attn_logit_softcapping"):
            if f"{arch}.{soft}" in meta:
                cfg[soft] = float(meta[f"{arch}.{soft}"])
        return cfg
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(theta or 10_000.0)}
    if scaling not in (None, "none"):
        rope["rope_type"] = scaling
        rope["factor"] = float(get("rope.scaling.factor"))
        orig = get("rope.scaling.original_context_length", None, required=False)
        if orig is not None:
            rope["original_max_position_embeddings"] = int(orig)
    cfg["rope_parameters"] = rope
    cfg["attention_bias"] = any(n.endswith("attn_q.bias") for n in tensor_names)
    return cfg


def llama3_rope_from_factors(factors: np.ndarray, head_dim: int, theta: float) -> dict:
    """Recovers Llama 3.x ``rope_parameters`` from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores Llama 3.1 RoPE scaling only as per-frequency divisors. The published
    Llama 3.x models use low/high frequency factors 1 and 4 over an original context of 8192 with
    a factor of 8 (3.1) or 32 (3.2); the candidate that reproduces the tensor is returned.

    Raises:
      UnsupportedConfigError: no candidate reproduces the stored factors.
    """
    from linalign.models import rope as rope_lib

    base = rope_lib.inv_freq_and_scale(rope_lib.RopeSpec("default", theta), head_dim, 8192)[0]
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
        params = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        spec = rope_lib.RopeSpec.from_hf(params, theta, "gguf")
        scaled = rope_lib.inv_freq_and_scale(spec, head_dim, 8192)[0]
        if factors.shape == base.shape and np.allclose(base / scaled, factors, rtol=1e-3, atol=0):
            return params
    raise UnsupportedConfigError("GGUF rope_freqs tensor matches no Llama 3.x RoPE scaling "
                                 "(factor 2-32, low 1, high 4, original context 8192)")


def _hf_name(gguf_name: str, arch: str) -> Optional[str]:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        table = _GEMMA_BLOCK_NAMES if arch == "gemma3" else _BLOCK_NAMES
        part = table.get(m.group(2))
        return None if part is None else f"model.layers.{m.group(1)}.{part}.{m.group(3)}"
    base, _, kind = gguf_name.rpartition(".")
    part = _TOP_NAMES.get(base)
    return None if part is None else f"{part}.{kind}"


class _Dequantized(Mapping):
    """GGUF tensor name -> float32 numpy array in Hugging Face layout, dequantized when read (so
    the conversion runner holds one dequantized tensor at a time besides its output)."""

    def __init__(self, reader):
        self._tensors = {t.name: t for t in reader.tensors}

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensors[name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"GGUF tensor {t.name!r} ({t.tensor_type.name}) cannot be dequantized: {e}") from None
        shape = _shape(t)
        if w.size != int(np.prod(shape)):
            raise CheckpointError(f"GGUF tensor {t.name!r}: {w.size} values for shape {shape}")
        return np.asarray(w, dtype=np.float32).reshape(shape)


def _shape(t) -> tuple:
    return tuple(int(s) for s in reversed(t.shape))  # ggml lists dimensions fastest-first


def _transform(gguf_name: str, hf_name: str, hf_cfg: dict, arch: str):
    if arch in ("llama", "mistral"):
        if gguf_name.endswith("attn_q.weight"):
            return lambda w: unpermute_qk(w, hf_cfg["num_attention_heads"])
        if gguf_name.endswith("attn_k.weight"):
            return lambda w: unpermute_qk(w, hf_cfg["num_key_value_heads"])
    if arch == "gemma3" and hf_name.endswith("norm.weight"):
        return lambda w: w - np.float32(1.0)
    return convert.identity


def conversion_table(reader, hf_cfg: dict, arch: str) -> list[convert.Rule]:
    """One ``convert.Rule`` per tensor: llama.cpp name -> Hugging Face name, with the un-permuting
    of Llama q/k rows and Gemma's norm offset as transforms.

    Raises:
      CheckpointError: a tensor with no Hugging Face counterpart.
    """
    rules = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # folded into the config by read_gguf
            continue
        name = _hf_name(t.name, arch)
        if name is None:
            raise CheckpointError(f"GGUF tensor {t.name!r} has no Hugging Face counterpart in the {arch} table")
        rules.append(convert.Rule(t.name, _shape(t), (name,), _transform(t.name, name, hf_cfg, arch), _shape(t)))
    return rules


def read_tensors(reader, hf_cfg: dict, arch: str) -> dict[str, np.ndarray]:
    """Dequantizes and renames every tensor (float32 numpy, HF names and layouts)."""
    return convert.run_table(_Dequantized(reader), conversion_table(reader, hf_cfg, arch), "gguf",
                             lambda name: name == "rope_freqs.weight")


def read_tokenizer(path, meta: dict, name: str):
    """A ``linalign.models.tokenizer.Tokenizer`` rebuilt from the GGUF tokenizer metadata."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    from linalign.models.tokenizer import Tokenizer

    if "tokenizer.ggml.tokens" not in meta:
        raise CheckpointError("GGUF has no tokenizer.ggml.tokens; cannot build a tokenizer")
    arch, tok_dict, tok_cfg = get_gguf_tokenizer(str(path))
    hf_tok, _ = convert_gguf_tokenizer(arch, tok_dict)
    bos, eos = tok_dict.get("bos_token_id"), tok_dict.get("eos_token_id")
    return Tokenizer(hf_tok, bos_id=bos, eos_id=eos, pad_id=tok_dict.get("pad_token_id"),
                     add_bos=bool(tok_cfg.get("add_bos_token", False)) and bos is not None,
                     chat_template=tok_cfg.get("chat_template"), name=name,
                     bos_token=tok_cfg.get("bos_token"), eos_token=tok_cfg.get("eos_token"))


def read_gguf(path, with_tokenizer: bool = True):
    """Reads a GGUF checkpoint.

    Args:
      path: the .gguf file.
      with_tokenizer: also rebuild the tokenizer (needs transformers; a few seconds).

    Returns:
      (hf_config dict, tensors: HF name -> float32 np.ndarray, tokenizer or None).

    Raises:
      CheckpointError: missing, truncated or corrupt file, or unexpected tensors.
      UnsupportedConfigError: architecture or metadata the ports do not implement.
    """
    reader = _open(path)
    try:
        meta = _fields(reader)
        names = {t.name for t in reader.tensors}
        cfg = hf_config_from_metadata(meta, names)
        arch = meta["general.architecture"]
        if "rope_freqs.weight" in names:
            import gguf

            t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
            factors = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(-1)
            if cfg["rope_parameters"]["rope_type"] != "default" or arch not in ("llama", "mistral"):
                raise UnsupportedConfigError(f"GGUF: rope_freqs tensor together with {cfg['rope_parameters']} "
                                             f"on {arch} is not supported")
            cfg["rope_parameters"] = llama3_rope_from_factors(factors, cfg["head_dim"],
                                                              cfg["rope_parameters"]["rope_theta"])
        tensors = read_tensors(reader, cfg, arch)
        name = str(meta.get("general.name") or pathlib.Path(path).stem)
        cfg["_name_or_path"] = name
        tok = read_tokenizer(path, meta, name) if with_tokenizer else None
    except (CheckpointError, UnsupportedConfigError) as e:
        raise type(e)(f"{path}: {e}") from None
    return cfg, tensors, tok

"""Tokenizer wrapper over Hugging Face ``tokenizers``: batched ids, masks and character offsets.

The Rust ``tokenizers`` library does the tokenization (it is what Hugging Face's fast tokenizers
run, so ids match transformers exactly); this wrapper adds what linalign needs on top:
fixed-shape numpy batches with left or right padding, explicit truncation policy, character
offsets into the original text for cross-tokenizer pairing, and chat templates rendered with
jinja2 the way transformers renders them.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from typing import Any, Optional, Sequence

import numpy as np

TRUNCATION_POLICIES = ("warn", "error", "silent")


class TruncationError(ValueError):
    """A text is longer than ``max_length`` tokens and the policy is "error"."""


@dataclasses.dataclass
class Encoded:
    """A padded batch of token ids.

    Attributes:
      ids: [B, T] int32 token ids (padding positions hold ``pad_id``).
      mask: [B, T] int32, 1 for real tokens, 0 for padding.
      offsets: [B, T, 2] int32 (start, end) character offsets of each token into its original
        text; special tokens and padding have (0, 0).
      lengths: [B] int32 number of real tokens per row.
      truncated: [B] bool, True where the text was cut at ``max_length``.
    """

    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray


def _token_content(tok: Any) -> Optional[str]:
    # tokenizer_config.json stores special tokens either as strings or AddedToken dicts.
    if tok is None:
        return None
    if isinstance(tok, dict):
        return tok.get("content")
    return str(tok)


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus special-token ids, padding and chat template.

    Args:
      hf_tokenizer: a ``tokenizers.Tokenizer``; the wrapper takes it over (do not share it).
      bos_id / eos_id / pad_id: special token ids (None when the vocabulary has none; padding
        falls back to eos, then 0, since padded positions are masked out anyway).
      add_bos: prepend ``bos_id`` when ``add_special_tokens`` and the tokenizer's own
        post-processor did not already put it there (GGUF tokenizers carry this as a flag).
      chat_template: jinja2 chat template or None.
      name: tokenizer name recorded in embedding-store manifests.
      model_max_length: default ``max_length`` for ``encode_batch``.
      padding_side: default padding side, "right" or "left".
      bos_token / eos_token: strings exposed to the chat template.
    """

    def __init__(self, hf_tokenizer, *, bos_id: Optional[int], eos_id: Optional[int],
                 pad_id: Optional[int], add_bos: bool, chat_template: Optional[str], name: str,
                 model_max_length: Optional[int] = None, padding_side: str = "right",
                 bos_token: Optional[str] = None, eos_token: Optional[str] = None):
        # The wrapper owns ``hf_tokenizer`` from here on (it switches its truncation setting);
        # not copying matters for 262k-token vocabularies, where a copy takes seconds.
        self._hf = hf_tokenizer
        self._hf.no_padding()
        self._hf.no_truncation()
        self._trunc_len: Optional[int] = None
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
        self.add_bos = bool(add_bos)
        if self.add_bos and bos_id is None:
            raise ValueError(f"tokenizer {name!r}: add_bos=True but no bos_id")
        self.chat_template = chat_template
        self.name = name
        self.model_max_length = model_max_length
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.bos_token = bos_token if bos_token is not None else (
            self._hf.id_to_token(bos_id) if bos_id is not None else None)
        self.eos_token = eos_token if eos_token is not None else (
            self._hf.id_to_token(eos_id) if eos_id is not None else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        """Reads a Hugging Face tokenizer directory.

        Args:
          path: directory with ``tokenizer.json`` and optionally ``tokenizer_config.json``,
            ``special_tokens_map.json`` and ``chat_template.jinja``.

        Raises:
          FileNotFoundError: ``tokenizer.json`` is missing.
        """
        import tokenizers

        path = pathlib.Path(path)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise FileNotFoundError(f"{path}: tokenizer.json is missing (only fast-tokenizer "
                                    "directories are supported)")
        hf = tokenizers.Tokenizer.from_file(str(tj))
        cfg: dict = {}
        for fname in ("special_tokens_map.json", "tokenizer_config.json"):
            p = path / fname
            if p.exists():
                cfg.update({k: v for k, v in json.loads(p.read_text()).items() if v is not None})

        def tid(key):
            s = _token_content(cfg.get(key))
            return None if s is None else hf.token_to_id(s)

        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates; use the default one
            template = {t["name"]: t["template"] for t in template}.get("default")
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        mml = cfg.get("model_max_length")
        mml = int(mml) if isinstance(mml, (int, float)) and mml < 1e9 else None
        # BERT-style tokenizers have no BOS: their post-processor adds [CLS]/[SEP].
        bos_id = tid("bos_token")
        name = cfg.get("name_or_path") or cfg.get("_name_or_path") or path.name
        return cls(hf, bos_id=bos_id, eos_id=tid("eos_token") if tid("eos_token") is not None
                   else tid("sep_token"), pad_id=tid("pad_token"),
                   add_bos=bool(cfg.get("add_bos_token", False)) and bos_id is not None,
                   chat_template=template, name=str(name), model_max_length=mml,
                   padding_side=cfg.get("padding_side", "right"),
                   bos_token=_token_content(cfg.get("bos_token")),
                   eos_token=_token_content(cfg.get("eos_token")))

    _STATE_KEYS = ("bos_id", "eos_id", "pad_id", "add_bos", "chat_template", "name",
                   "model_max_length", "padding_side", "bos_token", "eos_token")

    def to_dict(self) -> dict:
        """JSON-serialisable state (the tokenizer.json text plus the wrapper's settings)."""
        d = {k: getattr(self, k) for k in self._STATE_KEYS}
        d["tokenizer_json"] = self._hf.to_str()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        """Inverse of ``to_dict``."""
        import tokenizers

        kw = {k: d.get(k) for k in cls._STATE_KEYS}
        kw["padding_side"] = kw["padding_side"] or "right"
        return cls(tokenizers.Tokenizer.from_str(d["tokenizer_json"]), **kw)

    def same_tokens_as(self, other) -> bool:
        """True when ``other`` maps every text to the same ids and back (same vocabulary, merges,
        normalisation and pre-tokenisation: the same tokenizer.json). Chat templates may differ."""
        if other is self:
            return True
        hf = getattr(other, "_hf", None)
        return hf is not None and hf.to_str() == self._hf.to_str()

    # ------------------------------------------------------------------ encoding
    def _set_truncation(self, max_length: Optional[int]) -> None:
        if max_length == self._trunc_len:
            return
        if max_length is None:
            self._hf.no_truncation()
        else:
            self._hf.enable_truncation(max_length)
        self._trunc_len = max_length

    def _encode_raw(self, texts: Sequence[str], max_length: Optional[int],
                    add_special_tokens: bool) -> list:
        manual_bos = add_special_tokens and self.add_bos
        # Reserve room for a BOS we may prepend ourselves; tokenizers' truncation already
        # accounts for the special tokens its post-processor adds.
        limit = None if max_length is None else max_length - (1 if manual_bos else 0)
        if limit is not None and limit < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text tokens")
        self._set_truncation(limit)
        encs = self._hf.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out = []
        for e in encs:
            ids, offs = list(e.ids), list(e.offsets)
            if manual_bos and (not ids or ids[0] != self.bos_id):
                ids, offs = [self.bos_id] + ids, [(0, 0)] + offs
            out.append((ids, offs, bool(e.overflowing)))
        return out

    def encode_batch(self, texts: Sequence[str], max_length: Optional[int] = None,
                     truncation: str = "warn", add_special_tokens: bool = True,
                     padding_side: Optional[str] = None, pad_to: Optional[int] = None,
                     pad_to_multiple_of: Optional[int] = None) -> Encoded:
        """Tokenizes and pads a batch.

        Args:
          texts: B strings.
          max_length: most tokens per row (special tokens included); defaults to the
            tokenizer's ``model_max_length``; None with no default means unlimited.
          truncation: what to do with longer texts: "warn" (truncate and warn once per
            call naming the first row), "error" (raise TruncationError), "silent".
          add_special_tokens: add [CLS]/[SEP] or BOS as the checkpoint's pipeline does.
          padding_side: "right" or "left"; defaults to the tokenizer's.
          pad_to: pad to exactly this many positions (>= the longest row), for fixed shapes.
          pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
          Encoded with T = padded length.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of strings; use encode() for one text")
        if truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        if max_length is None:
            max_length = self.model_max_length
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, not str")
        rows = self._encode_raw(texts, max_length, add_special_tokens)
        cut = np.array([r[2] for r in rows], dtype=bool)
        if cut.any() and truncation != "silent":
            first = int(np.argmax(cut))
            self._set_truncation(None)
            full = len(self._hf.encode(texts[first], add_special_tokens=add_special_tokens).ids)
            msg = (f"{int(cut.sum())} of {len(texts)} text(s) exceed max_length={max_length} "
                   f"tokens (first: row {first}, {full} tokens)")
            if truncation == "error":
                raise TruncationError(msg)
            warnings.warn(msg + "; truncated", stacklevel=2)
        lengths = np.array([len(r[0]) for r in rows], dtype=np.int32)
        t_len = int(lengths.max()) if len(rows) else 0
        if pad_to is not None:
            if pad_to < t_len:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({t_len})")
            t_len = pad_to
        if pad_to_multiple_of:
            t_len = -(-t_len // pad_to_multiple_of) * pad_to_multiple_of
        b = len(rows)
        ids = np.full((b, t_len), self.pad_id, dtype=np.int32)
        mask = np.zeros((b, t_len), dtype=np.int32)
        offsets = np.zeros((b, t_len, 2), dtype=np.int32)
        for i, (row_ids, row_offs, _) in enumerate(rows):
            n = len(row_ids)
            sl = slice(0, n) if side == "right" else slice(t_len - n, t_len)
            ids[i, sl] = row_ids
            mask[i, sl] = 1
            if n:
                offsets[i, sl] = np.asarray(row_offs, dtype=np.int32).reshape(n, 2)
        return Encoded(ids=ids, mask=mask, offsets=offsets, lengths=lengths, truncated=cut)

    def token_lengths(self, texts: Sequence[str], max_length: Optional[int] = None,
                      add_special_tokens: bool = True) -> np.ndarray:
        """[B] int token counts after truncation to ``max_length`` (for length bucketing)."""
        if max_length is None:
            max_length = self.model_max_length
        return np.array([len(r[0]) for r in self._encode_raw(texts, max_length, add_special_tokens)],
                        dtype=np.int64)

    def encode(self, text: str, add_special_tokens: bool = True,
               max_length: Optional[int] = None, truncation: str = "warn") -> list[int]:
        """Token ids of one text (no padding)."""
        enc = self.encode_batch([text], max_length=max_length, truncation=truncation,
                                add_special_tokens=add_special_tokens)
        return enc.ids[0, : enc.lengths[0]].tolist()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids (padding and, by default, special tokens dropped)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def vocab(self) -> dict[str, int]:
        """Token string -> id, added tokens included."""
        return self._hf.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, i: int) -> Optional[str]:
        return self._hf.id_to_token(int(i))

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Renders a conversation with the checkpoint's chat template.

        Args:
          messages: [{"role": ..., "content": ...}, ...].
          add_generation_prompt: append the assistant turn opener.
          **extra: further template variables.

        Returns:
          The prompt string (encode it with add_special_tokens=False when the template
          already emits BOS).

        Raises:
          ValueError: the tokenizer has no chat template, or the template raises.
        """
        if not self.chat_template:
            raise ValueError(f"tokenizer {self.name!r} has no chat template")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        # Same environment settings transformers uses, so templates render identically.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent,
                                                                        ensure_ascii=False)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"chat template of {self.name!r} failed: {e}") from None

    def __repr__(self) -> str:
        return (f"Tokenizer(name={self.name!r}, vocab={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id}, pad={self.pad_id}, add_bos={self.add_bos})")

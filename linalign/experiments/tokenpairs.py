"""Chat-format fitting data for per-token maps: the records, each model's layout, paired rows.

Shared by the generation study and the layer study (``linalign.experiments.generation``,
``linalign.experiments.layers``): both read the same instruction/response conversations
(``linalign.experiments.chatdata``), each model in its own chat template, and pair tokens
of two models by character offsets within the shared content (``chatdata.to_content``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from linalign.eval import pairing
from linalign.experiments import chatdata
from linalign.experiments import common as C

WRITER = "smollm2-135m-instruct"  # the instruct model that writes the fitting responses
EVAL_SEED_OFFSET = 1000  # evaluation prompts are drawn with seed + this (and never fit on)


@dataclasses.dataclass
class ChatData:
    """Conversations and the split into fitting and held-out ones.

    Attributes:
      records: [{"prompt", "response", "finished", "n_tokens"}], fitting ones first.
      n_fit: the first n_fit records fit maps; the rest are held out (teacher-forced metrics).
      writer: the model that wrote the responses.
    """

    records: list
    n_fit: int
    writer: str

    @property
    def n_heldout(self) -> int:
        return len(self.records) - self.n_fit


def chat_data(cfg: C.StudyConfig, n: Optional[int] = None, heldout_fraction: float = 0.1) -> ChatData:
    """``n`` (default ``cfg.n_gen_fit``) prompts with the writer's cached responses.

    The last ``heldout_fraction`` of them (at least 8) are held out of every fit.
    """
    n = int(n or cfg.n_gen_fit)
    if n < 16:
        raise ValueError(f"need at least 16 fitting conversations, got {n}")
    name = writer_of(cfg.models)
    writer = C.load_model(name)
    chatdata.ensure_chat_template(writer)
    prompts = chatdata.make_prompts(n, seed=cfg.seed)
    recs = chatdata.responses(writer, prompts, max_new_tokens=128, batch_size=32, seed=cfg.seed,
                              cache_dir=cfg.cache_dir)
    n_held = max(8, int(round(heldout_fraction * n)))
    return ChatData(recs, n - n_held, name)


def writer_of(models: Sequence[str]) -> str:
    """The model that writes the responses: SmolLM2-135M-Instruct when it is among ``models``,
    else the first causal model with its own chat template, else the first causal model."""
    if WRITER in models:
        return WRITER
    causal = [m for m in models if C.load_model(m).is_causal]
    if not causal:
        raise ValueError(f"no causal model among {list(models)} to write responses")
    own = [m for m in causal if C.load_model(m).tokenizer.chat_template not in (None, "", chatdata.GEMMA_PLAIN_TEMPLATE)]
    return (own or causal)[0]


def eval_prompts(cfg: C.StudyConfig, n: int, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` evaluation prompts drawn like the fitting ones, none of them a fitting prompt."""
    skip = set(exclude)
    out = [p for p in chatdata.make_prompts(2 * n + 8, seed=cfg.seed + EVAL_SEED_OFFSET) if p not in skip]
    return out[:n]


def layouts(model, records) -> list:
    """Each record rendered in ``model``'s chat template (``chatdata.ChatLayout``)."""
    chatdata.ensure_chat_template(model)
    return [chatdata.chat_layout(model.tokenizer, r["prompt"], r["response"], r["finished"]) for r in records]


@dataclasses.dataclass
class Pairs:
    """Paired token positions of a target A and a source B over some texts.

    Attributes:
      text: [N] text index of each pair.
      a_pos, b_pos: [N] token positions (within the text) of A's token and its paired B token.
      next_a: [N] A's next token id in the text (-1 at the text's end).
      predicts_response: [N] bool, A's next token lies in the response.
    """

    text: np.ndarray
    a_pos: np.ndarray
    b_pos: np.ndarray
    next_a: np.ndarray
    predicts_response: np.ndarray

    def __len__(self) -> int:
        return int(len(self.text))


def pair_tokens(offsets_a: Sequence, ids_a: Sequence, lays_a, offsets_b: Sequence, lays_b) -> Pairs:
    """Pairs A's tokens with B's, text by text, in content coordinates.

    Args:
      offsets_a, offsets_b: per text [T, 2] character offsets into that model's layout text.
      ids_a: per text [T] A's token ids.
      lays_a, lays_b: the two models' ``ChatLayout`` of each text.

    Returns:
      ``Pairs`` (texts in order, A's token order within a text).
    """
    if not (len(offsets_a) == len(offsets_b) == len(lays_a) == len(lays_b) == len(ids_a)):
        raise ValueError("per-text offsets, ids and layouts of the two models differ in number")
    parts = []
    for i in range(len(offsets_a)):
        ca = chatdata.to_content(offsets_a[i], lays_a[i])
        cb = chatdata.to_content(offsets_b[i], lays_b[i])
        j = pairing.pair_offsets(ca, cb)
        pos = np.flatnonzero(j >= 0)
        ids = np.asarray(ids_a[i])
        nxt = np.where(pos + 1 < len(ids), ids[np.minimum(pos + 1, len(ids) - 1)], -1)
        resp = chatdata.response_mask(offsets_a[i], lays_a[i])
        pr = np.where(pos + 1 < len(ids), resp[np.minimum(pos + 1, len(ids) - 1)], False)
        parts.append((np.full(len(pos), i), pos, j[pos], nxt, pr))
    cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
    return Pairs(cat[0].astype(np.int64), cat[1].astype(np.int64), cat[2].astype(np.int64),
                 cat[3].astype(np.int64), cat[4].astype(bool))


def rows_pairs(rows_a, lays_a, rows_b, lays_b) -> Pairs:
    """``pair_tokens`` over two ``TokenRows`` (per-token extraction of the layout texts)."""
    oa, ia, ob = [], [], []
    for i in range(len(rows_a)):
        _, ids, offs = rows_a.row(i)
        oa.append(offs)
        ia.append(ids)
        ob.append(rows_b.row(i)[2])
    return pair_tokens(oa, ia, lays_a, ob, lays_b)


def gather(rows, pairs: Pairs, side: str) -> np.ndarray:
    """[N, d] states of the paired tokens of ``side`` ("a" or "b") from ``TokenRows``."""
    starts = rows.row_starts()
    pos = pairs.a_pos if side == "a" else pairs.b_pos
    return np.asarray(rows.states_nd[starts[pairs.text] + pos], np.float32)


def content_match_rate(rows_a, lays_a, rows_b, lays_b) -> float:
    """``pairing.exact_token_match_rate`` on the shared content of the conversations (A counted).

    Each model's tokens are put in content coordinates (user text, then response); template
    tokens and tokens that straddle the content boundary are left out.
    """
    texts, oa, ma, ob, mb = [], [], [], [], []
    for i in range(len(rows_a)):
        (u0, u1), (r0, r1) = lays_a[i].spans
        body = lays_a[i].text
        content = body[u0:u1] + " " * 8 + body[r0:r1]
        ca = chatdata.to_content(rows_a.row(i)[2], lays_a[i])
        cb = chatdata.to_content(rows_b.row(i)[2], lays_b[i])
        texts.append(content)
        oa.append(ca)
        ob.append(cb)
        ma.append((ca[:, 1] > ca[:, 0]) & (ca[:, 1] <= len(content)))
        mb.append((cb[:, 1] > cb[:, 0]) & (cb[:, 1] <= len(content)))
    return pairing.exact_token_match_rate(texts, oa, ma, ob, mb)


def token_rows(name: str, lays, cfg: C.StudyConfig):
    """Per-token final hidden states of the layout texts (``TokenRows``), through the cache."""
    return C.embed(name, [lay.text for lay in lays], cfg, per_token=True)

"""Instruction/response text in each model's chat format, for fitting per-token generation maps.

The paper fits its generation maps on instruction data read in the models' chat templates; what
is decoded at generation time is a chat turn (template, user prompt, a response with newlines,
lists and paragraphs). This module builds such text from what is available offline:

* prompts: instructions written around passages of the bundled corpora (BBC News articles with
  their paragraph breaks, fortunes, Jane Austen passages), drawn deterministically by seed;
* responses: written by the instruct model itself (SmolLM2-135M-Instruct), batched and sampled
  (temperature 0.7, top-p 0.9, so the text is varied and not one greedy loop), cached on disk
  chunk by chunk under the linalign cache, so a rerun or a stopped run resumes;
* per model, the conversation is rendered in that model's chat template (``chat_layout``), and
  tokens of the two models are paired by character offsets *within the shared content* (user
  prompt and response), plus the last token of each template piece (the token that reads the
  assistant-turn opener predicts the first response token, as in generation).

Gemma-3-270M as bundled is the base (pretrained) model and its GGUF carries no chat template;
``GEMMA_PLAIN_TEMPLATE`` gives it a plain "Question:/Answer:" layout (with Gemma 3's own
<start_of_turn> layout, which the base model was not tuned on, it answered off topic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

GEMMA_PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'Question: ' + message['content'] + '\n' }}{% else %}{{ 'Answer: ' + message['content'] + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}")

_U, _R = "\x01USER\x01", "\x01RESPONSE\x01"

_BBC_TASKS = ("Summarise this news article in three sentences.",
              "Write a headline for this article and list three key facts from it.",
              "What is the main point of this article? Answer in one paragraph.",
              "Explain this news story to a ten-year-old.",
              "Which people or organisations are mentioned in this article, and what did each do?")
_FORTUNE_TASKS = ("Explain what this saying means and give an example.",
                  "Write a short story inspired by this quote.",
                  "Do you agree with this? Give two reasons.")
_AUSTEN_TASKS = ("Continue this passage from a novel for a few sentences.",
                 "Describe the characters' feelings in this passage.",
                 "Rewrite this passage in modern English.")


def ensure_chat_template(model) -> str:
    """The model's chat template; a base model without one gets ``GEMMA_PLAIN_TEMPLATE``.

    Returns:
      "own" when the checkpoint carries a template, "plain Question/Answer" when it was set here.
    """
    tok = model.tokenizer
    if tok.chat_template == GEMMA_PLAIN_TEMPLATE:
        return "plain Question/Answer"
    if tok.chat_template:
        return "own"
    tok.chat_template = GEMMA_PLAIN_TEMPLATE
    return "plain Question/Answer"


def _clip_paragraphs(text: str, max_chars: int) -> str:
    """The first paragraphs of ``text`` up to ``max_chars`` (newlines kept, cut at a break)."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    if cut < max_chars // 3:
        cut = text.rfind(". ", 0, max_chars) + 1
    return text[: cut if cut > 0 else max_chars].strip()


def make_prompts(n: int, seed: int = 0, max_chars: int = 450) -> list[str]:
    """``n`` instructions around passages of the bundled corpora, in a fixed order for a seed.

    About half are BBC articles (paragraph breaks kept), a quarter fortunes, a quarter Austen
    passages (consecutive sentences joined). Raises if no corpus can be read.
    """
    from linalign.data import load_corpus

    rng = np.random.default_rng(seed)
    bbc = load_corpus("bbc_news").texts
    fort = [t for t in load_corpus("fortunes").texts if 40 <= len(t.strip()) <= max_chars]
    try:
        aus = [t for t in load_corpus("austen").texts if t.strip()]
    except Exception as e:  # noqa: BLE001 - the Debian corpus is optional; the others suffice
        logging.warning("austen unavailable (%s); prompts from BBC and fortunes only", e)
        aus = []
    out = []
    for i in range(n):
        kind = ("bbc", "bbc", "fortune", "austen" if aus else "fortune")[i % 4]
        if kind == "bbc":
            task, passage = _BBC_TASKS[rng.integers(len(_BBC_TASKS))], bbc[rng.integers(len(bbc))]
        elif kind == "fortune":
            task, passage = _FORTUNE_TASKS[rng.integers(len(_FORTUNE_TASKS))], fort[rng.integers(len(fort))]
        else:
            j = int(rng.integers(len(aus) - 12))
            passage = " ".join(t.strip() for t in aus[j:j + 12])
            task = _AUSTEN_TASKS[rng.integers(len(_AUSTEN_TASKS))]
        out.append(f"{task}\n\n{_clip_paragraphs(passage, max_chars)}")
    return out


@dataclasses.dataclass
class ChatLayout:
    """A conversation rendered in one model's template.

    Attributes:
      text: the string the model reads (without a leading BOS when its tokenizer adds one).
      spans: [(start, end)] of the user content and the response in ``text``.
      pieces: [(start, end)] of the template pieces (before the user content, between user
        content and response, after the response); empty ones have start == end.
    """

    text: str
    spans: list
    pieces: list


def chat_layout(tokenizer, prompt: str, response: Optional[str], finished: bool = True) -> ChatLayout:
    """Renders user ``prompt`` (and ``response``) with the tokenizer's chat template.

    With ``response`` None the text ends with the assistant-turn opener (the generation prompt);
    an unfinished response (cut at the token limit) gets no end-of-turn piece.
    """
    msgs = [{"role": "user", "content": _U}]
    if response is not None:
        msgs.append({"role": "assistant", "content": _R})
        raw = tokenizer.apply_chat_template(msgs, add_generation_prompt=False)
    else:
        raw = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        raw += _R
    if raw.count(_U) != 1 or raw.count(_R) != 1 or raw.index(_U) > raw.index(_R):
        raise ValueError(f"chat template of {tokenizer.name!r} does not place one user and one assistant "
                         "message in order")
    bos = getattr(tokenizer, "bos_token", None)
    if bos and tokenizer.add_bos and raw.startswith(bos):
        raw = raw[len(bos):]  # the tokenizer adds it again when the text is encoded
    pre, rest = raw.split(_U)
    mid, post = rest.split(_R)
    if response is None or not finished:
        post = ""
    resp = response or ""
    text = pre + prompt + mid + resp + post
    u0, r0 = len(pre), len(pre) + len(prompt) + len(mid)
    u1, r1 = u0 + len(prompt), r0 + len(resp)
    return ChatLayout(text, [(u0, u1), (r0, r1)], [(0, u0), (u1, r0), (r1, len(text))])


def _starts(offsets_t2: np.ndarray, layout: ChatLayout) -> np.ndarray:
    """Token starts, moved to a content span's start when only whitespace lies before it.

    A word-initial token carries its leading space (" These" after "Answer:"); the space is the
    template's, the word is the content's, so the token counts as content.
    """
    o = np.asarray(offsets_t2, np.int64)
    start = o[:, 0].copy()
    for a0, _ in layout.spans:
        for t in np.flatnonzero((o[:, 0] < a0) & (o[:, 1] > a0)):
            if layout.text[o[t, 0]:a0].isspace():
                start[t] = a0
    return start


def to_content(offsets_t2: np.ndarray, layout: ChatLayout) -> np.ndarray:
    """Token spans in content coordinates, where the same character has the same coordinate in
    every model's layout of the conversation.

    The user content maps to [0, len(u)), the response follows after a gap, and the last token
    inside each template piece gets a reserved span past the content, so it pairs with the
    other model's last token of the same piece (the token that reads the assistant-turn opener
    predicts the first response token, in both models). Every other token (the rest of the
    template, a token straddling a boundary) gets (-1, -1) and stays unpaired.

    Returns:
      [T, 2] int64 coordinates.
    """
    o = np.asarray(offsets_t2, np.int64)
    start = _starts(o, layout)
    out = np.full_like(o, -1)
    (u0, u1), (r0, r1) = layout.spans
    gap = 8  # coordinates between the user content and the response: never a token's
    base_r = (u1 - u0) + gap
    top = base_r + (r1 - r0) + gap
    real = o[:, 1] > o[:, 0]
    inu = (start >= u0) & (o[:, 1] <= u1) & real
    inr = (start >= r0) & (o[:, 1] <= r1) & real
    out[inu, 0], out[inu, 1] = start[inu] - u0, o[inu, 1] - u0
    out[inr, 0], out[inr, 1] = start[inr] - r0 + base_r, o[inr, 1] - r0 + base_r
    for k, (p0, p1) in enumerate(layout.pieces):
        if p1 <= p0:
            continue
        hit = np.flatnonzero((o[:, 0] >= p0) & (o[:, 1] <= p1) & real & ~inu & ~inr)
        if hit.size:
            out[hit[-1]] = (top + 2 * k, top + 2 * k + 1)
    return out


def response_mask(offsets_t2: np.ndarray, layout: ChatLayout) -> np.ndarray:
    """[T] bool: tokens inside the response (a leading space from the template allowed)."""
    o = np.asarray(offsets_t2, np.int64)
    r0, r1 = layout.spans[1]
    return (_starts(o, layout) >= r0) & (o[:, 1] <= r1) & (o[:, 1] > o[:, 0])


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def responses(model, prompts: Sequence[str], *, max_new_tokens: int = 128, batch_size: int = 32,
              temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, cache_dir=None) -> list[dict]:
    """The model's chat responses to ``prompts``, generated in batches and cached per chunk.

    Args:
      model: a causal LoadedModel with a chat template.
      prompts: user messages.
      max_new_tokens: response length limit (tokens).
      batch_size: prompts decoded together (one chunk of the cache).
      temperature, top_p: sampling (temperature 0 = greedy).
      seed: sampling seed (chunk i uses seed + i).
      cache_dir: linalign cache root override.

    Returns:
      One dict per prompt: {"prompt", "response", "finished" (EOS reached), "n_tokens"}.
    """
    from linalign.assets.store import cache_root
    from linalign.atomic import atomic_write_json
    from linalign.generate.decode import Decoder, Sampling, eos_ids_of

    tok = model.tokenizer
    samp = Sampling(temperature=temperature, top_p=top_p)
    root = cache_root(cache_dir) / "chat_responses" / _key(model.fingerprint, max_new_tokens, temperature,
                                                          top_p, seed, batch_size)
    eos = eos_ids_of(model)
    dec = None
    out: list[dict] = []
    t0, done_new = time.time(), 0
    for c in range(0, len(prompts), batch_size):
        chunk = list(prompts[c:c + batch_size])
        path = root / f"chunk_{_key(chunk)}.json"
        if path.exists():
            out += json.loads(path.read_text())
            continue
        dec = dec or Decoder(model.module, model.params)
        texts = [tok.apply_chat_template([{"role": "user", "content": p}]) for p in chunk]
        enc = tok.encode_batch(texts, add_special_tokens=False, padding_side="left")
        gen = dec.generate(enc.ids, enc.mask, max_new_tokens, eos, samp, seed + c // batch_size, tok.pad_id)
        recs = []
        for p, row in zip(chunk, gen.rows()):
            fin = bool(row) and row[-1] in eos
            body = row[:-1] if fin else row
            recs.append({"prompt": p, "response": tok.decode(body).strip(), "finished": fin,
                         "n_tokens": len(body)})
        atomic_write_json(path, recs)
        out += recs
        done_new += sum(r["n_tokens"] for r in recs)
        logging.info("responses: %d of %d prompts, %.1f new tokens/s", min(c + batch_size, len(prompts)),
                     len(prompts), done_new / max(time.time() - t0, 1e-9))
    return out


def main(argv):
    """Fills the response cache: ``python -m linalign.experiments.chatdata --n=520``."""
    from absl import flags

    from linalign.experiments import common as C

    f = flags.FLAGS
    m = C.load_model(f.model)
    ensure_chat_template(m)
    prompts = make_prompts(f.n, seed=f.seed)
    recs = responses(m, prompts, max_new_tokens=f.max_new_tokens, batch_size=f.batch_size, seed=f.seed)
    print(f"{len(recs)} responses, {sum(r['n_tokens'] for r in recs)} tokens")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_integer("n", 520, "Prompts.")
    flags.DEFINE_integer("seed", 0, "Prompt and sampling seed.")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "Model that writes the responses.")
    flags.DEFINE_integer("max_new_tokens", 128, "Response length limit.")
    flags.DEFINE_integer("batch_size", 32, "Prompts per batch.")
    app.run(main)

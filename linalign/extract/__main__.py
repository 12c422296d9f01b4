r"""Extracts hidden states of a corpus into an embedding store.

    python -m linalign.extract --model=all-minilm-l6-v2 --corpus=bbc_news \
        --out_dir=emb/bbc_minilm --batch_size=32
    python -m linalign.extract --model=smollm2-135m-instruct --corpus=notes.txt \
        --pooling=last --out_dir=emb/notes_smol --mesh=data=8

Rerunning the same command after an interruption resumes where it stopped; the result is
identical to an uninterrupted run. ``--corpus`` takes a ``linalign.data.load_corpus`` spec
(bbc_news, bbc_sentences, fortunes, ...), a .jsonl/.csv file, or a .txt file with one text per
non-empty line, or several of these joined with '+' (``austen+bbc_sentences+fortunes``).
The same job runs on many processes with ``python -m linalign.distributed extract``.
"""

from __future__ import annotations

import json
import time

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", None, "Checkpoint path (.gguf or HF directory) or asset name.")
_CORPUS = flags.DEFINE_string("corpus", None, "load_corpus spec, or a .txt/.jsonl/.csv path.")
_OUT = flags.DEFINE_string("out_dir", None, "Embedding store directory.")
_POOLING = flags.DEFINE_enum("pooling", None, ["mean", "last", "first"],
                             "Pooling; default: the checkpoint's own (mean for encoders, last "
                             "for causal LMs).")
_PER_TOKEN = flags.DEFINE_bool("per_token", False, "Store every token's state with offsets.")
_MAX_LEN = flags.DEFINE_integer("max_length", None, "Max tokens per text (default: tokenizer's).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.")
_MESH = flags.DEFINE_string("mesh", None, "Device mesh (linalign.mesh syntax), e.g. data=8 or "
                            "data=-1; the batch is sharded over 'data'.")
_TRUNC = flags.DEFINE_enum("truncation", "warn", ["warn", "error", "silent"],
                           "What to do with texts longer than max_length.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Params/activation dtype.")
_STORE_DTYPE = flags.DEFINE_enum("store_dtype", "float32", ["float32", "float16"],
                                 "dtype of the stored arrays.")
_LAYER = flags.DEFINE_integer("layer", -1, "Hidden state index (-1: final, 0: embeddings).")
_LIMIT = flags.DEFINE_integer("limit", None, "Only the first N texts (after --shuffle_seed).")
_SHUFFLE = flags.DEFINE_integer("shuffle_seed", None, "Shuffle the texts with this seed first.")
_SHARD_ROWS = flags.DEFINE_integer("shard_rows", 4096, "Texts per store shard.")
_RESUME = flags.DEFINE_bool("resume", True, "Resume a matching partial store (else overwrite).")


def main(argv):
    del argv
    from linalign.extract.job import load_texts, run

    texts, corpus = load_texts(_CORPUS.value, limit=_LIMIT.value, shuffle_seed=_SHUFFLE.value)
    t0 = time.perf_counter()
    st = run(_MODEL.value, texts, _OUT.value, corpus=corpus, mesh_spec=_MESH.value,
             dtype=_DTYPE.value, pooling=_POOLING.value, per_token=_PER_TOKEN.value,
             max_length=_MAX_LEN.value, batch_size=_BATCH.value, resume=_RESUME.value,
             truncation=_TRUNC.value, layer=_LAYER.value, store_dtype=_STORE_DTYPE.value,
             shard_rows=_SHARD_ROWS.value)
    m = st.manifest
    summary = {k: m.get(k) for k in ("model", "family", "pooling", "per_token", "num_rows", "dim",
                                      "max_length", "layer", "corpus")}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    logging.info("wrote %s: %s", _OUT.value, json.dumps(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "corpus", "out_dir"])
    app.run(main)

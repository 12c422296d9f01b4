r"""Extracts hidden states of a corpus into an embedding store.

  linalign extract --model=all-minilm-l6-v2 --corpus=bbc_news \
      --out_dir=emb/bbc_minilm --batch_size=32
  linalign extract --model=smollm2-135m-instruct --corpus=notes.txt \
      --pooling=last --out_dir=emb/notes_smol --mesh=data=8

Rerunning the same command after an interruption resumes where it stopped; the result is
identical to an uninterrupted run. --corpus takes a linalign.data.load_corpus spec
(bbc_news, bbc_sentences, fortunes, ...), a .jsonl/.csv file, or a .txt file with one text per
non-empty line, or several of these joined with '+' (austen+bbc_sentences+fortunes).
The same job runs on many processes with `linalign distributed extract`; `python -m
linalign.extract` is this program too.
"""

from __future__ import annotations

import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_job_flags() -> None:
    """The extraction job's flags (shared with ``linalign distributed extract``)."""
    from linalign import flags as shared

    shared.define_model()
    flags.DEFINE_string("corpus", None, "load_corpus spec, or a .txt/.jsonl/.csv path.")
    shared.define_out_dir("Embedding store directory.")
    shared.define_pooling()
    flags.DEFINE_bool("per_token", False, "Store every token's state with its character offsets "
                      "instead of one pooled row per text.")
    flags.DEFINE_integer("max_length", None, "Max tokens per text (default: tokenizer's).")
    shared.define_batch_size("extract")
    flags.DEFINE_enum("truncation", "warn", ["warn", "error", "silent"],
                      "What to do with texts longer than max_length.")
    shared.define_dtype(["float32", "bfloat16", "float16"], "float32", "Params/activation dtype.")
    flags.DEFINE_enum("store_dtype", "float32", ["float32", "float16"], "dtype of the stored arrays.")
    flags.DEFINE_integer("layer", -1, "Hidden state index (-1: final, 0: embeddings).")
    flags.DEFINE_integer("limit", None, "Only the first N texts (after --shuffle_seed).")
    flags.DEFINE_integer("shuffle_seed", None, "Shuffle the texts with this seed first.")
    flags.DEFINE_integer("shard_rows", 4096, "Texts per store shard (the resume granularity).")
    shared.define_cache_dir()


def define_flags() -> None:
    from linalign import flags as shared

    define_job_flags()
    shared.define_mesh("the batch is sharded over 'data'.")
    flags.DEFINE_bool("resume", True, "Resume a matching partial store (else overwrite).")


def run_job(mesh_spec, **extra):
    """Runs the extraction job with the flags' values; returns the store."""
    from linalign.extract.job import load_texts, run
    from linalign.flags import pooling_arg

    texts, corpus = load_texts(FLAGS.corpus, limit=FLAGS.limit, shuffle_seed=FLAGS.shuffle_seed)
    return run(FLAGS.model, texts, FLAGS.out_dir, corpus=corpus, mesh_spec=mesh_spec,
               dtype=FLAGS.dtype, pooling=pooling_arg(FLAGS.pooling), per_token=FLAGS.per_token,
               max_length=FLAGS.max_length, batch_size=FLAGS.batch_size,
               truncation=FLAGS.truncation, layer=FLAGS.layer, store_dtype=FLAGS.store_dtype,
               shard_rows=FLAGS.shard_rows, **extra)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    t0 = time.perf_counter()
    st = run_job(FLAGS.mesh, resume=FLAGS.resume)
    m = st.manifest
    print(f"wrote {FLAGS.out_dir}: {m.get('num_rows')} texts, dim {m.get('dim')}, "
          f"{m.get('family')} {m.get('pooling') or 'per-token'} pooling, layer {m.get('layer')}, "
          f"{time.perf_counter() - t0:.1f} s")


def _program():
    from linalign.cli import Program

    return Program(__doc__, define_flags, main, required=("model", "corpus", "out_dir"),
                   summary="hidden states of a corpus -> an embedding store")


PROGRAM = _program()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("extract")

"""One extraction job, on one process or many: what ``python -m linalign.extract`` and
``python -m linalign.distributed extract`` both run.

On one process the corpus becomes a one-part store in ``out_dir``. On P processes (JAX's
multi-controller runtime, e.g. through ``launch/local_cpu.sh``) process p takes the contiguous
texts ``contiguous_bounds(N, p, P)``, runs the model on its own devices only (extraction needs
no communication) and writes part ``out_dir/part-<p>-of-<P>``, resumable on its own; after a
barrier process 0 checks every part and writes the store's manifest listing them
(``store.join_parts``). Either way the result opens with ``open_store(out_dir)``.

Texts come from ``load_texts``: a ``linalign.data.load_corpus`` spec, a .txt file with one text
per non-empty line, or several of them joined with ``+`` (``austen+bbc_sentences+fortunes``).
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
from absl import logging

from linalign.extract import store as store_lib
from linalign.mesh import contiguous_bounds

CORPUS_JOIN = "+"


def load_texts(spec: str, limit: Optional[int] = None,
               shuffle_seed: Optional[int] = None) -> tuple[list[str], str]:
    """Texts to extract and a name for them.

    Args:
      spec: a ``linalign.data.load_corpus`` spec (bbc_news, bbc_sentences, fortunes, austen,
        a .jsonl/.csv/.tsv path, a .txt file with one text per non-empty line), or several
        of these joined with '+' (their texts concatenated in that order).
      limit: keep only the first ``limit`` texts (after shuffling).
      shuffle_seed: shuffle the texts with this seed (a fixed permutation), so that any prefix
        is a sample of every corpus named.

    Returns:
      (texts, name); name is the corpus name(s) joined with '+'.

    Raises:
      DataError: an unknown corpus or a missing/malformed file (from ``load_corpus``).
      ValueError: an empty spec part or no texts.
    """
    from linalign import data

    texts: list[str] = []
    names: list[str] = []
    for part in str(spec).split(CORPUS_JOIN):
        part = part.strip()
        if not part:
            raise ValueError(f"corpus spec {spec!r} has an empty part")
        c = data.load_corpus(part)
        texts += list(c.texts)
        names.append(c.name)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(texts))
        texts = [texts[i] for i in order]
    if limit:
        texts = texts[:limit]
    if not texts:
        raise ValueError(f"corpus {spec!r} holds no texts")
    name = CORPUS_JOIN.join(names) + (f" shuffled(seed={shuffle_seed})" if shuffle_seed is not None else "")
    return texts, name


def extract_part(model, texts: Sequence[str], out_dir, process_index: int, process_count: int,
                 mesh=None, corpus: str = "", **kwargs) -> store_lib.EmbeddingStore:
    """Extracts this process's contiguous share of ``texts`` into its part of ``out_dir``.

    Args:
      model: a LoadedModel.
      texts: the whole corpus (every process passes the same list).
      out_dir: the store directory.
      process_index, process_count: this process and the job size.
      mesh: devices to run on (default: this process's local devices as a ``data`` mesh).
      corpus: corpus name for the manifest.
      **kwargs: passed to ``linalign.extract.extract`` (pooling, per_token, batch_size, ...).

    Returns:
      This process's complete part (a one-part EmbeddingStore).
    """
    from linalign.extract.pipeline import extract
    from linalign.mesh import local_mesh

    if not texts:
        raise ValueError("the corpus is empty: nothing to extract")
    lo, hi = contiguous_bounds(len(texts), process_index, process_count)
    if hi <= lo:
        raise ValueError(f"{len(texts)} texts cannot be split over {process_count} processes: "
                         f"process {process_index} would get none")
    part_dir = pathlib.Path(out_dir) / store_lib.part_name(process_index, process_count)
    meta = {"corpus": corpus, "part": {"index": process_index, "count": process_count,
                                       "rows": [lo, hi], "corpus_rows": len(texts),
                                       "corpus_fingerprint": store_lib.text_fingerprint(texts)}}
    logging.info("process %d of %d extracts texts [%d, %d) of %d into %s", process_index,
                 process_count, lo, hi, len(texts), part_dir)
    return extract(model, list(texts[lo:hi]), out_dir=part_dir,
                   mesh=mesh if mesh is not None else local_mesh(), extra_meta=meta, **kwargs)


def run(model_name: str, texts: Sequence[str], out_dir, *, corpus: str = "",
        mesh_spec: Optional[str] = None, dtype: str = "float32",
        **kwargs) -> Optional[store_lib.EmbeddingStore]:
    """Loads the model and extracts ``texts`` into the store ``out_dir``, on every process.

    Args:
      model_name: checkpoint path or asset name (``linalign.checkpoints.load``).
      texts: the whole corpus (the same on every process).
      out_dir: store directory.
      corpus: corpus name for the manifest.
      mesh_spec: ``linalign.mesh`` spec over this process's devices (e.g. "data=8"); None:
        one process runs unsharded, several run a data mesh over their local devices.
      dtype: params/activation dtype.
      **kwargs: passed to ``linalign.extract.extract`` (pooling, per_token, max_length,
        batch_size, truncation, layer, store_dtype, shard_rows, resume).

    Returns:
      The store (on process 0; None on the others).
    """
    import jax

    from linalign import checkpoints
    from linalign.extract.pipeline import extract
    from linalign.mesh import make_mesh

    from linalign.assets.store import cache_root

    # Compiled bucket shapes survive across runs (resumes and repeated extractions).
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(cache_root()) / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    p, n = jax.process_index(), jax.process_count()
    if n == 1:
        mesh = make_mesh(mesh_spec) if mesh_spec else None
        model = checkpoints.load(model_name, dtype=dtype, mesh=mesh)
        return extract(model, texts, out_dir=out_dir, mesh=mesh,
                       extra_meta={"corpus": corpus}, **kwargs)
    from linalign.distributed.runtime import barrier

    # Extraction needs no communication: each process shards over its own devices only.
    mesh = make_mesh(mesh_spec or "data=-1", jax.local_devices())
    model = checkpoints.load(model_name, dtype=dtype, mesh=mesh)
    extract_part(model, texts, out_dir, p, n, mesh=mesh, corpus=corpus, **kwargs)
    barrier("linalign_extract_parts_written")
    store = None
    if p == 0:
        store = store_lib.join_parts(out_dir, [store_lib.part_name(i, n) for i in range(n)],
                                     corpus=corpus)
    barrier("linalign_extract_store_joined")
    return store

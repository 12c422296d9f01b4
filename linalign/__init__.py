"""linalign: linear alignment between independently trained language models.

Notebook API (imported lazily: ``import linalign`` loads neither jax nor the models)::

  src, tgt = linalign.load("all-minilm-l6-v2"), linalign.load("all-mpnet-base-v2")
  z_b, z_a = linalign.embed(src, texts), linalign.embed(tgt, texts)
  amap = linalign.fit(z_b, z_a)            # lam="auto": k-fold CV from streamed statistics
  amap.evaluate(z_b_test, z_a_test)         # {"r2": ..., "cosine": ...}
  amap.save("map.safetensors"); linalign.load("map.safetensors")

  fit        linalign.align.fitting.fit: arrays, stores or iterables of batches -> AffineMap
  load       a model (asset name or checkpoint path) or a saved map (.safetensors)
  embed      pooled (or per-token) hidden states of texts
  AffineMap, LambdaSpec, linear_cka, debiased_cka, svcca, mutual_knn, shuffled_baseline,
  r2_score, mean_cosine

Subpackages, one capability each:
  assets       fetch and verify the bundled real models and corpora
  data         text loaders (bundled corpora, user JSONL/CSV), splits, streaming readers
  models       Flax ports of Hugging Face language models
  checkpoints  loading safetensors directories and GGUF files into those ports
  extract      hidden-state extraction pipeline and on-disk embedding stores
  generate     KV-cached decoding, including cross-model generation through a map
  align        streamed sufficient statistics, lambda policy, float64 ridge solve, AffineMap
  metrics      representational similarity (CKA, SVCCA, mutual k-NN)
  eval         the paper's evaluations (classification heads, OOD scores, pairing)
  fhe          homomorphic-encryption backends (CKKS, Concrete ML)
  helix        the two-party HELIX protocol over sockets
  distributed  multi-host runtime, checkpointed streaming, memory planning
  experiments  the runnable studies
"""

import importlib
import os
import pathlib

__version__ = "0.1.0"

# name -> (module, attribute), resolved on first use.
_LAZY = {
    "AffineMap": ("linalign.align.affine_map", "AffineMap"),
    "MapMetadata": ("linalign.align.affine_map", "MapMetadata"),
    "LambdaSpec": ("linalign.align.lambdas", "LambdaSpec"),
    "r2_score": ("linalign.align.affine_map", "r2_score"),
    "mean_cosine": ("linalign.align.affine_map", "mean_cosine"),
    "linear_cka": ("linalign.metrics.similarity", "linear_cka"),
    "debiased_cka": ("linalign.metrics.similarity", "debiased_cka"),
    "svcca": ("linalign.metrics.similarity", "svcca"),
    "mutual_knn": ("linalign.metrics.similarity", "mutual_knn"),
    "shuffled_baseline": ("linalign.metrics.similarity", "shuffled_baseline"),
}

__all__ = ["fit", "load", "embed", *_LAZY]


def __getattr__(name):
    if name == "fit":
        # The function; importing the CLI submodule linalign.fit later rebinds this name to a
        # module that is callable the same way.
        return importlib.import_module("linalign.align.fitting").fit
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'linalign' has no attribute {name!r}")


def _is_map(p: pathlib.Path) -> bool:
    if p.is_dir():
        # An old orbax map folder counts too, so AffineMap.load names the converter.
        return (p / "map.safetensors").is_file() or ((p / "params").is_dir()
                                                      and (p / "metadata.json").is_file())
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return True  # let AffineMap.load name the truncation
        return b'"linalign.affine_map"' in f.read(min(int.from_bytes(head, "little"), 1 << 20))


def load(name_or_path, **kwargs):
    """Loads a model or a saved map.

    Args:
      name_or_path: a saved map (``*.safetensors`` written by ``AffineMap.save``, or a folder
        holding ``map.safetensors``), else an asset name ("all-minilm-l6-v2", ...) or a
        checkpoint path (``.gguf`` file, Hugging Face folder) for ``linalign.checkpoints.load``.
      **kwargs: passed to ``linalign.checkpoints.load`` (dtype, mesh, ...).

    Returns:
      an AffineMap, or a LoadedModel.
    """
    if isinstance(name_or_path, (str, os.PathLike)) and _is_map(pathlib.Path(name_or_path)):
        if kwargs:
            raise TypeError(f"loading a map takes no options, got {sorted(kwargs)}")
        return importlib.import_module("linalign.align.affine_map").AffineMap.load(name_or_path)
    return importlib.import_module("linalign.checkpoints").load(name_or_path, **kwargs)


def embed(model, texts, *, pooling="mean", batch_size: int = 16, max_length=None, layer: int = -1,
          per_token: bool = False, progress: bool = False):
    """Hidden states of ``texts`` from ``model`` (through the extraction pipeline, in memory).

    Args:
      model: a LoadedModel (``linalign.load``) or an asset name / checkpoint path.
      texts: list of strings.
      pooling: "mean" (default), "last", "first", or None for the model's own pooling.
      batch_size: texts per forward call.
      max_length: tokens per text (default the tokenizer's limit).
      layer: -1 for the final hidden state, else an index into the hidden states.
      per_token: per-token rows (``TokenRows``) instead of pooled ones.
      progress: show a progress bar.

    Returns:
      [len(texts), d] float32 numpy array (or TokenRows when ``per_token``).
    """
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    pipeline = importlib.import_module("linalign.extract.pipeline")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return pipeline.extract(model, list(texts), pooling=pooling, per_token=per_token,
                            max_length=max_length, batch_size=batch_size, layer=layer,
                            progress=progress)

"""What the studies share: their config, model and corpus loading, embeddings, map fitting."""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

DEFAULT_MODELS = ("all-minilm-l6-v2", "all-mpnet-base-v2", "smollm2-135m-instruct", "gemma3-270m")
SHORT = {"all-minilm-l6-v2": "MiniLM", "all-mpnet-base-v2": "MPNet",
         "smollm2-135m-instruct": "SmolLM2", "gemma3-270m": "Gemma3"}


@dataclasses.dataclass
class StudyConfig:
    """Knobs of every study (each study reads the ones it needs).

    Attributes:
      models: asset names or checkpoint paths.
      corpus: labelled corpus spec for classification ("bbc_news" or a .jsonl/.csv path).
      public_corpus: unlabelled public corpus for the public-data map regime; "auto" takes
        Austen if it can be fetched, else fortunes, else BBC body sentences (in-domain for
        BBC News, which the report then says).
      ood_corpus: out-of-distribution corpus for the OOD study.
      ood_holdout: label held out of head training and used as a second OOD set.
      n_texts: texts sampled from ``corpus`` (stratified by label).
      n_public: texts sampled from ``public_corpus``.
      n_in_dist: in-distribution samples added to the public set (the paper's 128).
      test_fraction: held-out fraction of ``corpus``.
      max_length: tokens per text.
      clip_chars: texts are cut to this many characters before tokenizing (keeps the
        CPU cost predictable; 0 = no cut).
      title_only: use only the first line of each text (BBC titles).
      batch_size: extraction batch size.
      pooling: pooled embeddings: "mean" over real tokens (the paper's choice for open
        models, used for every model so they are compared alike), "last", "first", or
        "default" (each checkpoint's own pooling).
      lam: ridge strength for pooled maps: a number (absolute, on the scale of C_bb), "gcv",
        "cv" or "auto" (see ``fit_map``).
      knn_k: neighbours for mutual k-NN.
      seed: sampling seed.
      out_root: reports go to out_root/<study>.
      cache_dir: cache root override (default: linalign's cache).
      n_gen_fit / n_gen / max_new_tokens / gen_lam / gen_corpora: generation study settings
        (texts whose per-token states fit the map are drawn evenly from gen_corpora; gen_lam is
        a lambda spec for ``fit_map``, by default "auto": the lambda policy's exact 5-fold CV).
      encoder: the embedding model that compares generated texts.
    """

    models: Sequence[str] = DEFAULT_MODELS
    corpus: str = "bbc_news"
    public_corpus: str = "auto"
    ood_corpus: str = "fortunes"
    ood_holdout: str = "tech"
    n_texts: int = 1000
    n_public: int = 800
    n_in_dist: int = 128
    test_fraction: float = 0.3
    max_length: int = 48
    clip_chars: int = 300
    title_only: bool = False
    batch_size: int = 16
    pooling: str = "mean"
    lam: str = "auto"
    knn_k: int = 10
    seed: int = 0
    out_root: str = "results"
    cache_dir: Optional[str] = None
    scaling_sizes: Sequence[int] = (100, 200, 500, 1000)
    n_gen_fit: int = 600
    n_gen: int = 8
    max_new_tokens: int = 48
    gen_lam: str = "auto"
    gen_corpora: Sequence[str] = ("bbc_sentences", "fortunes")
    encoder: str = "all-minilm-l6-v2"


_MODELS: dict = {}


def load_model(name: str):
    """``linalign.checkpoints.load`` memoised per process (loading is the slow part)."""
    from linalign import checkpoints

    if name not in _MODELS:
        t0 = time.time()
        _MODELS[name] = checkpoints.load(name)
        logging.info("loaded %s in %.1f s", name, time.time() - t0)
    return _MODELS[name]


def short(name: str) -> str:
    """Display name of a model (asset short name, else the path's last part)."""
    return SHORT.get(name, str(name).rstrip("/").split("/")[-1])


def prep_text(t: str, cfg: StudyConfig) -> str:
    if cfg.title_only:
        t = t.strip().split("\n", 1)[0]
    t = " ".join(t.split())  # collapse newlines/runs of spaces: offsets stay simple
    return t[: cfg.clip_chars] if cfg.clip_chars else t


def load_texts(spec: str, n: int, cfg: StudyConfig, seed_offset: int = 0, need_labels: bool = False):
    """Loads a corpus and samples n texts (stratified by label when labelled).

    Args:
      spec: a ``linalign.data.load_corpus`` spec (a bundled corpus or a .jsonl/.csv/.txt file),
        or several joined with '+' (``austen+fortunes``), read by ``linalign.extract.load_texts``
        as the extraction commands read them (joined corpora carry no labels).

    Returns:
      (texts, labels or None, corpus name). Empty texts are dropped before sampling.
    """
    from linalign.data import load_corpus
    from linalign.extract.job import CORPUS_JOIN, load_texts as read_texts

    if CORPUS_JOIN in str(spec):
        raw, name = read_texts(spec)
        labels = None
    else:
        # A single corpus is read with its labels: classification needs them, and the others
        # sample labelled corpora (BBC topics, fortune categories) stratified by them.
        corpus = load_corpus(spec)
        raw, labels, name = corpus.texts, getattr(corpus, "labels", None), getattr(corpus, "name", spec)
    if need_labels and labels is None:
        raise ValueError(f"corpus {spec!r} has no labels; classification needs a labelled corpus "
                         "(JSONL/CSV with a label column)")
    rng = np.random.default_rng(cfg.seed + seed_offset)
    texts = [prep_text(t, cfg) for t in raw]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if labels is not None:
        by = {}
        for i in keep:
            by.setdefault(labels[i], []).append(i)
        if n and n < len(keep):
            # Proportional stratified sample.
            take = []
            for lab, idx in sorted(by.items(), key=lambda kv: str(kv[0])):
                k = max(1, int(round(n * len(idx) / len(keep))))
                take += list(rng.choice(idx, size=min(k, len(idx)), replace=False))
            keep = sorted(take)
    elif n and n < len(keep):
        keep = sorted(rng.choice(keep, size=n, replace=False).tolist())
    return [texts[i] for i in keep], None if labels is None else [labels[i] for i in keep], name


PUBLIC_FALLBACK = ("austen", "fortunes", "bbc_sentences")


def load_public(cfg: StudyConfig, n: int):
    """Public texts for the public-data regime; returns (texts, name, note for the report)."""
    if cfg.public_corpus != "auto":
        texts, _, name = load_texts(cfg.public_corpus, n, cfg, seed_offset=1)
        return texts, name, ""
    errors = []
    for spec in PUBLIC_FALLBACK:
        try:
            texts, _, name = load_texts(spec, n, cfg, seed_offset=1)
        except Exception as e:  # noqa: BLE001 - an unavailable optional corpus; try the next
            errors.append(f"{spec}: {e}")
            logging.warning("public corpus %s unavailable (%s)", spec, e)
            continue
        note = "" if not errors else " (" + "; ".join(errors) + ")"
        if spec == "bbc_sentences":
            note += (" NOTE: BBC body sentences are in-domain for BBC News, so this 'public' "
                     "regime is easier than the paper's.")
        return texts, name, note
    raise RuntimeError("no public corpus available: " + "; ".join(errors))


def split(n: int, labels, test_fraction: float, seed: int):
    """Stratified train/test index split."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels) if labels is not None else np.zeros(n)
    tr, te = [], []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        k = int(round(test_fraction * len(idx)))
        te += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.array(sorted(tr)), np.array(sorted(te))


def embed(name: str, texts: Sequence[str], cfg: StudyConfig, per_token: bool = False) -> np.ndarray:
    """Pooled (cfg.pooling) or per-token final hidden states, through the cache."""
    from linalign.eval.cache import hidden_states

    model = load_model(name)
    t0 = time.time()
    pooling = None if (per_token or cfg.pooling == "default") else cfg.pooling
    out = hidden_states(model, texts, pooling=pooling, max_length=cfg.max_length, per_token=per_token,
                        batch_size=cfg.batch_size, cache_dir=cfg.cache_dir)
    logging.info("%s: %d texts embedded/loaded in %.1f s", short(name), len(texts), time.time() - t0)
    return out


def fit_map(z_b_nd, z_a_nd, lam="auto"):
    """Fits the affine map Z_B -> Z_A through linalign's one fitting pipeline (``linalign.fit``).

    Args:
      z_b_nd: [n, d_b] source rows; z_a_nd: [n, d_a] target rows (same texts).
      lam: a lambda spec (``linalign.align.lambdas.LambdaSpec``): "auto" or "cv" (exact 5-fold
        cross-validation from per-fold statistics, over 13 lambdas log-spaced from 1e-6 to 1e2
        times the mean eigenvalue of C_bb), "cv:K", "gcv" (never used when n <= d_b, where it
        keeps choosing lambdas far too small, docs/notes/eval.md: falls back to 5-fold CV),
        "rel:F" (F times the mean eigenvalue) or an absolute number.

    Returns:
      (AffineMap, lam used); the map's metadata records lam, lam_spec, lam_selection and n, and
      the map is solved in float64 whatever the embeddings' scale.
    """
    from linalign.align.fitting import fit

    amap = fit(np.asarray(z_b_nd, np.float32), np.asarray(z_a_nd, np.float32), lam, heldout=0.0)
    return amap, amap.metadata.lam


def apply_map(m, z_b_nd) -> np.ndarray:
    return np.asarray(m.apply(np.asarray(z_b_nd, np.float32)), np.float32)


def save_map(amap, path, *, source: str, target: str, **details):
    """Saves a study's map in linalign's map format, naming the two models.

    Args:
      amap: the fitted AffineMap (its metadata already holds lambda and how it was chosen).
      path: the map file to write (replaced if it exists).
      source, target: model names (asset names or checkpoint paths).
      details: further metadata (``layer``, ``pooling``...); names the format does not have go
        to its free-form ``extra``.

    Returns:
      The path written (``AffineMap.load`` reads it back).
    """
    from linalign.align.affine_map import AffineMap

    md = amap.metadata
    fields = {f.name for f in dataclasses.fields(md)}
    top = {k: v for k, v in details.items() if k in fields and k != "extra"}
    extra = {**(md.extra or {}), **{k: v for k, v in details.items() if k not in top}}
    md = dataclasses.replace(md, source_model=str(source), target_model=str(target), extra=extra, **top)
    return AffineMap(amap.w, amap.b, md).save(path, overwrite=True)


def r2(pred_nd, target_nd) -> float:
    """Pooled held-out R^2 = 1 - sum||Z - Z_hat||^2 / sum||Z - mean(Z)||^2 (mean of these rows)."""
    pred_nd, target_nd = np.asarray(pred_nd, np.float64), np.asarray(target_nd, np.float64)
    sse = np.sum((target_nd - pred_nd) ** 2)
    sst = np.sum((target_nd - target_nd.mean(0)) ** 2)
    return float(1 - sse / sst)


def ordered_pairs(names: Sequence[str]):
    """Every (target, source) pair of distinct models."""
    return [(a, b) for a, b in itertools.permutations(names, 2)]

"""Representational similarity of every pair of models on a shared corpus."""

from __future__ import annotations

import numpy as np
from absl import logging

from linalign.eval.report import Report
from linalign.experiments import common as C
from linalign.experiments.pairs import PairRunner

MEASURES = ("linear_cka", "debiased_cka", "mutual_knn")
TITLES = {"linear_cka": "Linear CKA", "debiased_cka": "Debiased CKA", "mutual_knn": "Mutual k-NN overlap"}


def _measures(x_nd, y_nd, k):
    from linalign import metrics

    x_nd, y_nd = np.asarray(x_nd, np.float32), np.asarray(y_nd, np.float32)
    return {"linear_cka": float(metrics.linear_cka(x_nd, y_nd)),
            "debiased_cka": float(metrics.debiased_cka(x_nd, y_nd)),
            "mutual_knn": float(metrics.mutual_knn(x_nd, y_nd, k=k))}


def similarity_matrices(zs: dict, k: int, seed: int, runner: PairRunner = None, render=None, into=None):
    """All measures over all model pairs, plus the shuffled-pairing baseline.

    The baseline permutes the rows of the second model's embeddings, so the two
    matrices describe different texts row by row: what a measure gives with no
    correspondence at all.

    Args:
      zs: {model name: [n, d] embeddings of the same texts, or None for a model that failed}.
      k: neighbours for mutual k-NN.
      seed: permutation seed.
      runner: when given, each pair runs through it (a failed pair is recorded, its cells stay
        NaN) and ``render`` rebuilds the report after each pair; without it a failure raises.
      into: optional (mats, shuf) dicts that receive the matrices before the first pair, so
        ``render`` sees them fill up.

    Returns:
      {measure: [m, m] matrix}, {measure: [m, m] shuffled matrix} (NaN where no value).
    """
    names = list(zs)
    present = [z for z in zs.values() if z is not None]
    n = len(present[0]) if present else 0
    for m, z in zs.items():
        if z is not None and len(z) != n:
            raise ValueError(f"{m} has {len(z)} rows, expected {n}: all models must embed the same texts")
    perm = np.random.default_rng(seed).permutation(n)
    mats = {m: np.full((len(names),) * 2, np.nan) for m in MEASURES}
    shuf = {m: np.full((len(names),) * 2, np.nan) for m in MEASURES}
    if into is not None:
        into[0].update(mats)
        into[1].update(shuf)
    todo = [(i, j) for i in range(len(names)) for j in range(i, len(names))]
    if runner is not None:
        runner.start(len(todo))
    for i, j in todo:
        a, b = names[i], names[j]

        def one():
            return _measures(zs[a], zs[b], k), _measures(zs[a], zs[b][perm], k)

        out = one() if runner is None else runner.pair(f"{C.short(a)} vs {C.short(b)}", one, needs=(a, b))
        if out is not None:
            real, base = out
            for m in MEASURES:
                mats[m][i, j] = mats[m][j, i] = real[m]
                shuf[m][i, j] = shuf[m][j, i] = base[m]
            logging.info("similarity %s vs %s: %s (shuffled %s)", C.short(a), C.short(b),
                         {m: round(v, 3) for m, v in real.items()}, {m: round(v, 3) for m, v in base.items()})
        if runner is not None:
            runner.publish(render)
    return mats, shuf


def run_similarity(cfg: C.StudyConfig, name: str = "similarity", report: Report = None,
                   texts=None, corpus_name=None) -> Report:
    """CKA (linear, debiased) and mutual k-NN matrices with a shuffled baseline.

    A model that fails to embed, or a pair whose measures fail, is recorded in the report and
    left blank; the report is rewritten after each pair.
    """
    if texts is None:
        texts, _, corpus_name = C.load_texts(cfg.corpus, cfg.n_texts, cfg)
    rep = report or Report(name, cfg.out_root, "Representational similarity")
    runner = PairRunner(rep, cfg)
    zs = {m: runner.model(m, "embedding", lambda m=m: C.embed(m, texts, cfg)) for m in cfg.models}
    labels = [C.short(m) for m in cfg.models]
    rep.text(f"{len(texts)} texts of `{corpus_name}` (cut to {cfg.clip_chars or 'no'} characters"
             f"{', titles only' if cfg.title_only else ''}; max_length {cfg.max_length}), each model's "
             f"pooled final hidden state ({cfg.pooling} pooling). Linear CKA on mean-centred embeddings, "
             f"debiased CKA (unbiased HSIC), mutual k-NN with k={cfg.knn_k}. Shuffled = the second "
             "model's rows permuted (no text correspondence).\n")
    mats, shuf = {}, {}

    def render():
        rows = []
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                if np.isfinite(mats["linear_cka"][i, j]):
                    rows.append([labels[i], labels[j]] + [mats[m][i, j] for m in MEASURES]
                                + [shuf[m][i, j] for m in MEASURES])
        rep.table(["model 1", "model 2", "linear CKA", "debiased CKA", f"mutual {cfg.knn_k}-NN",
                   "shuffled lin. CKA", "shuffled deb. CKA", "shuffled k-NN"], rows,
                  caption="Similarity (real pairing vs shuffled pairing)")
        rep.text("Paper, for reference: linear CKA 0.595-0.881 across five commercial embedding models "
                 "(5,000 train / 2,000 test samples); SVCCA against a shuffled baseline. Here the models "
                 "are two sentence encoders and two small causal LMs (mean-pooled), which the paper did "
                 "not compare directly.\n")
        for m in MEASURES:
            rep.heatmap(f"{m}", mats[m], labels, labels, cbar_label=TITLES[m],
                        title=f"{TITLES[m]} between models, {len(texts)} texts")
        rep.heatmap("linear_cka_shuffled", shuf["linear_cka"], labels, labels,
                    cbar_label="linear CKA", title=f"Linear CKA with shuffled pairing (baseline), "
                    f"{len(texts)} texts")
        rep.results[name] = {"models": labels, "n_texts": len(texts), "corpus": corpus_name,
                             "k": cfg.knn_k, **{m: mats[m] for m in MEASURES},
                             **{f"{m}_shuffled": shuf[m] for m in MEASURES}}

    similarity_matrices(zs, cfg.knn_k, cfg.seed, runner, render, into=(mats, shuf))
    runner.finish(render)
    return rep

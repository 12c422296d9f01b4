r"""Redraws a study's heatmaps from its results.json, without running any model.

  PYTHONPATH=. python experiments/replot.py docs/results/demo docs/results/classification \
      docs/results/similarity

Only the PNGs are rewritten (same file names as the study writes, through the study's own
plotting helper), so report.md keeps linking them; the numbers come from results.json.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from linalign.eval.report import Report


def _classification(rep: Report, res: dict, models: list) -> list[str]:
    from linalign.experiments import common as C
    from linalign.experiments.classification import REGIME_TEXT

    labels = [C.short(m) for m in models]  # the study's order
    idx = {m: i for i, m in enumerate(labels)}
    regimes = [r for r in REGIME_TEXT if res["pairs"] and r in res["pairs"][0]]
    out = []
    for r in regimes:
        m = np.full((len(labels),) * 2, np.nan)
        for name, acc in res["native"].items():
            m[idx[name], idx[name]] = acc
        for p in res["pairs"]:
            m[idx[p["target"]], idx[p["source"]]] = p[r]["accuracy"]
        out.append(rep.heatmap(f"accuracy_{r.replace('+', '_plus_')}", m, labels, labels,
                               title=f"Accuracy of the target's head, {r} map (diagonal: native)",
                               xlabel="source model (embeddings mapped)",
                               ylabel="target model (head)", cbar_label="accuracy"))
    return out


def _similarity(rep: Report, res: dict) -> list[str]:
    from linalign.experiments.similarity import MEASURES, TITLES

    labels, n = res["models"], res.get("n_texts")
    texts = f", {n} texts" if n else ""
    out = [rep.heatmap(m, res[m], labels, labels, cbar_label=TITLES[m],
                       title=f"{TITLES[m]} between models{texts}") for m in MEASURES if m in res]
    if "linear_cka_shuffled" in res:
        out.append(rep.heatmap("linear_cka_shuffled", res["linear_cka_shuffled"], labels, labels,
                               cbar_label="linear CKA",
                               title=f"Linear CKA with shuffled pairing (baseline){texts}"))
    return out


def replot(study_dir) -> list[str]:
    """Rewrites the heatmap PNGs of one study folder; returns the file names written."""
    d = pathlib.Path(study_dir)
    res = json.loads((d / "results.json").read_text())
    rep = Report(d.name, d.parent)
    files = []
    if "classification" in res:
        files += _classification(rep, res["classification"], res["config"]["models"])
    if "similarity" in res:
        files += _similarity(rep, res["similarity"])
    return files


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, replot(arg))

"""The demo: a short similarity + classification run on BBC News titles."""

from __future__ import annotations

from linalign.eval.report import Report
from linalign.experiments import classification as cls
from linalign.experiments import common as C
from linalign.experiments import similarity as sim

# Titles are ~10 tokens, so the four models embed ~1,000 of them in a few minutes on 2 cores.
DEMO_DEFAULTS = dict(n_texts=1000, n_public=1000, max_length=32, title_only=True, n_in_dist=128)


def run_demo(cfg: C.StudyConfig) -> Report:
    rep = Report("demo", cfg.out_root, "linalign demo: similarity and classification through a map")
    rep.text("A short version of the similarity and classification studies on BBC News titles "
             "(first line of each article), run on the bundled real models.\n")
    data = cls.TaskData(cfg)  # each part embeds through the cache and records a model that fails
    rep.text("## Similarity\n")
    sim.run_similarity(cfg, "similarity", report=rep, texts=[data.texts[i] for i in data.te],
                       corpus_name=data.corpus_name + " (test titles)")
    rep.text("## Classification through the map\n")
    cls.run_classification(cfg, "classification", data=data, report=rep)
    _print_summary(rep)
    return rep


def _print_summary(rep: Report) -> None:
    from linalign.eval.report import markdown_table

    res = rep.results["classification"]
    rows = [[p["target"], p["source"], p["native"]] + [p[r]["accuracy"] for r in cls.REGIMES]
            for p in res["pairs"]]
    print(markdown_table(["target (head)", "source", "native"] + [f"{r}" for r in cls.REGIMES], rows))
    s = rep.results["similarity"]
    print(markdown_table(["model"] + s["models"],
                         [[m] + list(row) for m, row in zip(s["models"], s["linear_cka"])]))

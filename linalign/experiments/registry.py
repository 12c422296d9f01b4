"""The registry of runnable studies: name -> (description, function(cfg) -> Report)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from absl import logging

from linalign.experiments import common as C


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    description: str
    run: Callable  # (StudyConfig) -> linalign.eval.report.Report
    defaults: dict = dataclasses.field(default_factory=dict)  # StudyConfig overrides


STUDIES: dict[str, Study] = {}


def register(name: str, description: str, **defaults):
    def deco(fn):
        if name in STUDIES:
            raise ValueError(f"study {name!r} registered twice")
        STUDIES[name] = Study(name, description, fn, defaults)
        return fn
    return deco


def get(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; known studies: {sorted(STUDIES)}")
    return STUDIES[name]


def run(name: str, cfg: C.StudyConfig, command: str = ""):
    """Runs a study, stamps the report with its command and timing, writes it; returns its folder.

    Failed models or pairs do not raise here: they are in the report's ``failures`` (see
    ``linalign.experiments.pairs``); a failure before the pairs start (a corpus that cannot be
    read, a bad option) does.
    """
    study = get(name)
    t0 = time.time()
    rep = study.run(cfg)
    dt = time.time() - t0
    rep.text(f"\n---\nProduced by `{command or 'python -m linalign.experiments --study=' + name}` "
             f"in {dt:.0f} s.\n")
    rep.results["config"] = dataclasses.asdict(cfg)
    rep.results["wall_seconds"] = dt
    out = rep.write()
    logging.info("study %s done in %.0f s: %s", name, dt, out)
    if rep.failures:
        logging.warning("study %s: %d step(s) failed and were left out: %s", name, len(rep.failures),
                        "; ".join(f"{f['step']}: {f['type']}" for f in rep.failures))
    return out


def _register_all():
    from linalign.experiments import classification as cls
    from linalign.experiments import demo, generation, layers, similarity

    register("similarity", "CKA (linear, debiased) and mutual k-NN between every pair of models, "
             "with a shuffled-pairing baseline")(similarity.run_similarity)
    register("classification", "native vs mapped accuracy of a logistic head, task-fit / public / "
             "public+128 maps, every ordered pair")(cls.run_classification)
    register("ood", "energy / MSP / Mahalanobis OOD detection, AUROC and FPR@95TPR, native vs "
             "mapped")(cls.run_ood)
    register("scaling", "held-out R^2 and accuracy vs number of texts the map is fit on")(cls.run_scaling)
    register("generation", "cross-model greedy generation between the causal models through a "
             "per-token map fit on chat-format conversations, with self-map controls and native ceilings",
             n_gen_fit=864, n_gen=32, max_new_tokens=128, max_length=512)(generation.run_generation)
    register("layers", "per-layer R^2 and CKA of every source layer against the target's layers from "
             "one streaming pass; best vs last layer through the map", n_texts=200, max_length=512)(layers.run_layers)
    register("demo", "short similarity + classification on BBC titles (minutes on 2 CPU cores)",
             **demo.DEMO_DEFAULTS)(demo.run_demo)


_register_all()

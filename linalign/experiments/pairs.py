"""One failed model pair does not end a study.

A study runs per-model steps (load, embed, native baselines) and then one step per model pair.
``PairRunner`` runs each step, records a failure (exception type and message) in the report
instead of letting it end the study, skips the pairs of a model whose own step failed, and
rewrites report.md, results.json and the plots after every pair, so a long study that stops
(or is stopped) keeps every pair it finished.

Usage inside a study::

    runner = PairRunner(rep, cfg)
    z = {m: runner.model(m, "embed", lambda: C.embed(m, texts, cfg)) for m in cfg.models}
    rep.text(...)  # the fixed head of the report
    runner.start(len(pairs))
    for a, b in pairs:
        entry = runner.pair(f"{C.short(b)} -> {C.short(a)}", lambda: one_pair(a, b), needs=(a, b))
        if entry is not None:
            entries.append(entry)
        runner.publish(render)  # render() rebuilds the tables/plots from ``entries``
    runner.finish(render)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from absl import logging

from linalign.eval.report import Report
from linalign.experiments import common as C


class PairRunner:
    """Runs a study's per-model and per-pair steps; see the module docstring.

    Args:
      rep: the study's report.
      cfg: the study's config, stored in results.json from the first write on.
    """

    def __init__(self, rep: Report, cfg: C.StudyConfig):
        self.rep, self.total, self.done = rep, 0, 0
        self.bad_models: dict[str, str] = {}
        self.skipped: list[str] = []
        rep.results.setdefault("config", dataclasses.asdict(cfg))
        self._mark = None

    def start(self, total: int) -> None:
        """Starts the pair loop: everything added to the report from here on is the part that
        ``publish`` rebuilds (what was added before stays, e.g. the setup text, or the other
        study's sections in a report two studies share, like the demo's)."""
        self.total, self._mark = int(total), self.rep.mark()

    def model(self, name: str, step: str, fn: Callable[[], Any]) -> Optional[Any]:
        """``fn()`` for a step of one model that its pairs need.

        Returns:
          Its result, or None when it (or an earlier step of this model) failed. A failure is
          recorded once, and ``pair`` then skips every pair that needs the model.
        """
        if name in self.bad_models:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - recorded in the report; the other models go on
            rec = self.rep.fail(f"model {C.short(name)} ({step}); every pair with it is left out", e)
            self.bad_models[name] = f"{rec['type']} in its {step}"
            logging.error("model %s failed in %s: %s: %s", C.short(name), step, rec["type"], rec["message"])
            return None

    def ok(self, *names: str) -> bool:
        """Whether none of these models has failed."""
        return not any(n in self.bad_models for n in names)

    def pair(self, label: str, fn: Callable[[], Any], needs: Sequence[str] = ()) -> Optional[Any]:
        """``fn()`` for one pair (``label`` names it, e.g. "MiniLM -> Gemma3").

        Returns:
          Its result, or None when it failed (recorded in the report) or a model it ``needs``
          failed earlier (the pair is listed as skipped).
        """
        bad = [n for n in needs if n in self.bad_models]
        if bad:
            self.skipped.append(f"{label} (model {C.short(bad[0])}: {self.bad_models[bad[0]]})")
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - recorded in the report; the other pairs go on
            rec = self.rep.fail(label, e)
            logging.error("pair %s failed: %s: %s", label, rec["type"], rec["message"])
            return None

    def publish(self, render: Callable[[], None]) -> None:
        """Counts one finished pair (ran, failed or skipped), rebuilds the report body, writes it."""
        self.done += 1
        self._render(render)
        self.rep.write(status=f"running: {self.done} of {self.total} pairs done")
        logging.info("%s: %d of %d pairs done, report written to %s", self.rep.study, self.done,
                     self.total, self.rep.dir)

    def finish(self, render: Callable[[], None]) -> None:
        """Final body (also when no pair ran); the caller (``registry.run``) writes it."""
        if self.done == 0 or self.done != self.total:
            self._render(render)

    def _render(self, render: Callable[[], None]) -> None:
        if self._mark is None:
            raise RuntimeError("PairRunner.start(total) must come before the first pair is published")
        self.rep.rewind(self._mark)
        render()
        if self.skipped:
            self.rep.text("Pairs not run because a model they need failed: " + "; ".join(self.skipped) + ".\n")
        self.rep.results["skipped_pairs"] = list(self.skipped)

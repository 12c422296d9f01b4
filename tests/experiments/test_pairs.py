"""PairRunner: a failed model or pair is recorded and the rest goes on; the report is on disk after
every pair, so a run that stops keeps what it finished."""

import json

import numpy as np
import pytest

from linalign.eval.report import Report
from linalign.experiments import common as C
from linalign.experiments.pairs import PairRunner


def _fit_r2(n_src, n_tgt, seed=0):
    # A real fit: mismatched row counts make fit_map raise its own AlignInputError (a ValueError).
    rng = np.random.default_rng(seed)
    zb, za = rng.normal(size=(n_src, 4)), rng.normal(size=(n_tgt, 3))
    m, lam = C.fit_map(zb, za, "1.0")
    return C.r2(C.apply_map(m, zb), za)


def test_failed_pair_is_recorded_and_the_others_run(tmp_path):
    rep = Report("unit", tmp_path, "Unit")
    runner = PairRunner(rep, C.StudyConfig())
    assert runner.model("good", "load", lambda: 1) == 1
    assert runner.model("bad", "load", lambda: np.load(tmp_path / "missing.npy")) is None
    assert runner.model("bad", "embedding", lambda: 1) is None  # a failed model stays failed
    rep.text("setup\n")
    done = []

    def render():
        rep.table(["pair", "R2"], done)
        rep.results["unit"] = {"pairs": [p for p, _ in done]}

    jobs = [("p1", (50, 50), ()), ("p2", (50, 49), ()), ("p3", (50, 50), ("good", "bad")), ("p4", (60, 60), ())]
    runner.start(len(jobs))
    seen_status = []
    for label, (nb, na), needs in jobs:
        out = runner.pair(label, lambda: _fit_r2(nb, na), needs=needs)
        if out is not None:
            done.append([label, out])
        runner.publish(render)
        seen_status.append(json.loads((rep.dir / "results.json").read_text())["status"])
    runner.finish(render)
    d = rep.write()
    assert seen_status == [f"running: {k} of 4 pairs done" for k in (1, 2, 3, 4)]
    res = json.loads((d / "results.json").read_text())
    assert res["status"] == "complete" and res["unit"]["pairs"] == ["p1", "p4"]
    assert [(f["step"], f["type"]) for f in res["failures"]] == [
        ("model bad (load); every pair with it is left out", "FileNotFoundError"),
        ("p2", "AlignInputError")]
    assert "source has 50 rows, target 49" in res["failures"][1]["message"]
    assert res["skipped_pairs"] == ["p3 (model bad: FileNotFoundError in its load)"]
    md = (d / "report.md").read_text()
    assert "**2 failed step(s)**" in md and "- p2: `AlignInputError`: source has 50 rows, target 49" in md
    assert md.count("| pair | R2 |") == 1 and md.count("setup") == 1  # rebuilt, not appended
    assert "Status:" not in md


def test_a_stopped_study_keeps_the_pairs_it_finished(tmp_path):
    rep = Report("stopped", tmp_path, "Stopped")
    runner = PairRunner(rep, C.StudyConfig())
    done = []
    runner.start(3)

    def third():
        raise KeyboardInterrupt  # not a failure to record: it ends the run, as Ctrl-C does

    with pytest.raises(KeyboardInterrupt):
        for label, fn in (("p1", lambda: _fit_r2(30, 30)), ("p2", lambda: _fit_r2(30, 30, 1)), ("p3", third)):
            done.append(runner.pair(label, fn))
            runner.publish(lambda: rep.results.update(pairs=list(done)))
    res = json.loads((rep.dir / "results.json").read_text())
    assert res["status"] == "running: 2 of 3 pairs done" and len(res["pairs"]) == 2
    np.testing.assert_allclose(res["pairs"], done, rtol=1e-12, atol=0)
    assert "*Status: running: 2 of 3 pairs done" in (rep.dir / "report.md").read_text()


def test_publish_before_start_is_refused(tmp_path):
    runner = PairRunner(Report("x", tmp_path), C.StudyConfig())
    with pytest.raises(RuntimeError, match=r"start\(total\) must come before"):
        runner.publish(lambda: None)

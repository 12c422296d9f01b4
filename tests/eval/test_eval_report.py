"""Report writer: files appear atomically and JSON is valid."""

import json

import numpy as np

from linalign.eval.report import Report, markdown_table


def test_report_files(tmp_path):
    r = Report("unit", out_root=tmp_path, title="Unit")
    r.table(["a", "b"], [[1, 0.12345], ["x", None]], caption="t")
    r.heatmap("hm", np.array([[1.0, np.nan], [0.5, 0.2]]), ["r1", "r2"], ["c1", "c2"], vmin=0, vmax=1)
    r.curves("cv", [1, 2, 3], {"s": [0.1, 0.2, 0.3]}, "n", "acc", logx=True)
    r.results = {"x": np.float32(0.5), "nan": float("nan"), "arr": np.arange(3)}
    d = r.write()
    assert sorted(p.name for p in d.iterdir()) == ["cv.png", "hm.png", "report.md", "results.json"]
    data = json.loads((d / "results.json").read_text())
    assert data == {"x": 0.5, "nan": None, "arr": [0, 1, 2], "status": "complete", "failures": []}
    md = (d / "report.md").read_text()
    assert "| x | n/a |" in md and "0.123" in md and "![hm](hm.png)" in md
    assert (d / "hm.png").read_bytes()[:4] == b"\x89PNG"


def test_markdown_table():
    assert markdown_table(["h"], [[1.0]], digits=1) == "| h |\n|---|\n| 1.0 |"


def test_report_names_failures_and_rewinds(tmp_path):
    r = Report("unit", out_root=tmp_path, title="Unit")
    r.text("head")
    mark = r.mark()
    r.heatmap("hm", np.eye(2), ["a", "b"], ["a", "b"])
    r.rewind(mark)
    assert r.files == [] and r.parts[-1] == "head\n"
    try:
        np.linalg.cholesky(-np.eye(2))
    except np.linalg.LinAlgError as e:
        e.add_note("pair x")
        rec = r.fail("A -> B", e)
    assert rec["type"] == "LinAlgError" and rec["message"] == "Matrix is not positive definite (pair x)"
    d = r.write(status="running: 1 of 2 pairs done")
    data = json.loads((d / "results.json").read_text())
    assert data["status"] == "running: 1 of 2 pairs done" and data["failures"][0]["step"] == "A -> B"
    md = (d / "report.md").read_text()
    assert md.index("# Unit") < md.index("*Status: running") < md.index("- A -> B: `LinAlgError`") < md.index("head")

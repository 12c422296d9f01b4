"""The FHE benchmarks run end to end at small sizes and write what they claim: both CKKS fits
next to each other with a consistent total and ratio, errors against the plaintext cross term,
the inference table, and the plots (``experiments/bench_fhe.py``, ``experiments/bench_helix.py``)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fhe
REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _total(r):
    return r["keygen_s"] + r.get("provider_setup_s", 0.0) + r["client_encrypt_s"] + r["provider_s"] + r["client_decrypt_s"]


def test_bench_fhe_small_run_writes_both_fits_and_the_ratio(tmp_path):
    _run("bench_fhe.py", "--dims=384", "--classes=2", "--backends=seal-coeff", "--fit_n=1024", "--fit_db=32",
         "--fit_da=64", "--fit_columns=2", "--slot_fit_columns=0", "--queries=2", "--throughput_s=0.2", "--cell_budget_s=5",
         f"--out={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    fits = {r["method"].split(" (")[0]: r for r in res["fitting"]}
    slot, coeff = fits["ckks"], fits["ckks coefficients"]
    assert "skipped" not in slot and "skipped" not in coeff, (slot, coeff)
    assert fits["concrete-ml-extensions"]["columns_run"] == 2 and fits["concrete-ml-extensions"]["extrapolated_to_d_b"]
    assert slot["columns_run"] == 33 and not slot["extrapolated_to_d_b"]
    assert coeff["columns_run"] == 33 and not coeff["extrapolated_to_d_b"]
    assert coeff["rotations_per_column"] == 0 and coeff["galois_keys"] == 0
    assert coeff["speedup_vs_slots"] == pytest.approx(_total(slot) / _total(coeff), rel=1e-9)
    assert slot["rel_fro_err"] < 1e-5 and coeff["rel_fro_err"] < 1e-3
    assert coeff["up_bytes"] > 0 and coeff["down_bytes"] > 0
    (row,) = [r for r in res["inference"] if r["backend"] == "seal-coeff"]
    assert row["argmax_agreement"] == 1.0 and row["max_err_over_range"] < 1e-3
    for name in ("results.md", "results.png", "fit.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "ckks coefficients (linalign.fhe.coeff_fit)" in md and res["meta"]["cpu"] in md
    assert "(slots, all columns)" in md


@pytest.mark.parametrize("backend,extra", [("seal-coeff-fit", []), ("seal-fit", ["--max_columns=3"])])
def test_bench_helix_fit_mode(tmp_path, backend, extra):
    _run("bench_helix.py", "--mode=fit", f"--fit_backend={backend}", "--n=512", "--d_b=16", "--d_a=24",
         f"--out={tmp_path}", *extra)
    (path,) = tmp_path.glob(f"fit_{backend}_n512_b16_a24.json")
    res = json.loads(path.read_text())
    assert res["columns_timed"] == (3 if extra else 17)
    assert res["extrapolation_factor"] == pytest.approx(17 / res["columns_timed"])
    assert res["max_abs_err"] < 1e-3 * res["max_abs_ref"]
    phases = res["client_encrypt_s"] + res["provider_eval_s"] + res["client_decrypt_s"]
    assert res["total_s"] == pytest.approx(res["keygen_s"] + res["provider_setup_s"] + phases, rel=1e-9)
    assert res["cpu"] and res["cores"] >= 1 and "--mode=fit" in res["command"]
    table = (tmp_path / "fit.md").read_text()
    assert f"| {backend} | 512 | 16 x 24 |" in table and res["cpu"] in table


def test_bench_helix_infer_mode(tmp_path):
    _run("bench_helix.py", "--mode=infer", "--shapes=64x3", "--backends=seal-coeff", "--reps=2", f"--out={tmp_path}")
    res = json.loads((tmp_path / "infer.json").read_text())
    (row,) = res["rows"]
    assert row["backend"] == "seal-coeff" and row["max_abs_err"] < 1e-3
    assert res["meta"]["cpu"] in (tmp_path / "infer.md").read_text()
    assert (tmp_path / "infer.png").stat().st_size > 0

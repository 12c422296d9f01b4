"""Studies survive a failed model or pair, and run on a source with massive activations.

The failures here are real ones: a checkpoint folder without weights (the model cannot load)
and a source whose final hidden states are zero in three dimensions fitted at lambda 0 (its
C_bb is singular, so the solve refuses it).
"""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from linalign.experiments import common as C
from linalign.experiments import registry
from linalign.experiments import tokenpairs as TP


def _read(d: pathlib.Path):
    return json.loads((d / "results.json").read_text()), (d / "report.md").read_text()


@pytest.fixture(scope="session")
def broken_model(tiny_models, tmp_path_factory):
    """A checkpoint folder with llama_a's config and tokenizer but no weight file."""
    out = tmp_path_factory.mktemp("broken") / "llama_noweights"
    out.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pathlib.Path(tiny_models["llama_a"]) / f, out / f)
    return str(out)


def _hidden_rms(model_path, texts):
    """Per-dimension RMS and mean of a model's per-token final hidden states over ``texts``."""
    from linalign import checkpoints

    m = checkpoints.load(model_path)
    enc = m.tokenizer.encode_batch(texts, max_length=64)
    h = np.asarray(m(enc.ids, enc.mask).last_hidden_state, np.float64)
    rows = h[np.asarray(enc.mask, bool)]
    return np.sqrt(np.mean(rows ** 2, axis=0)), rows.mean(0), rows.std(0)


@pytest.mark.slow
def test_generation_runs_both_directions_with_a_massive_activation_source(cfg, tiny_models, massive_model,
                                                                         massive_dims):
    from linalign.align.affine_map import AffineMap

    a, m = tiny_models["llama_a"], massive_model
    cfg = dataclasses.replace(cfg, models=(a, m), gen_lam="1e-4", max_length=256)
    data = TP.chat_data(cfg)
    lays = {k: TP.layouts(C.load_model(k), data.records) for k in (a, m)}
    texts = [x.text for x in lays[m]]
    rms, mean, _ = _hidden_rms(m, texts)
    ratio = rms / np.median(rms)
    # The property (Sun et al., 2024): a few dimensions 100-1000x the scale of the rest, with
    # values far from zero.
    assert sorted(np.argsort(rms)[-3:].tolist()) == list(massive_dims)
    assert ratio[list(massive_dims)].min() >= 100, ratio[list(massive_dims)]
    assert np.all(np.abs(mean[list(massive_dims)]) > 3 * np.median(rms))

    out = registry.run("generation", cfg)
    res, md = _read(out)
    assert res["failures"] == [] and res["status"] == "complete"
    pairs = {(p["source"], p["target"]): p for p in res["generation"]["pairs"]}
    assert set(pairs) == {("llama_a", "llama_massive"), ("llama_massive", "llama_a")}
    rows = {k: TP.token_rows(k, lays[k], cfg) for k in (a, m)}
    for src, tgt in ((a, m), (m, a)):
        p = pairs[(C.short(src), C.short(tgt))]
        assert p["lam"] == pytest.approx(1e-4, rel=1e-12, abs=0)
        amap = AffineMap.load(out / p["map_file"])
        # The map file is the one safetensors format, readable without linalign.
        from safetensors import safe_open
        with safe_open(str(out / p["map_file"]), "np") as f:
            meta = json.loads(f.metadata()["metadata"])
        assert (meta["source_model"], meta["target_model"]) == (src, tgt)
        assert (meta["lam_spec"], meta["lam_selection"], meta["dtype"]) == ("1e-4", "fixed", "float64")
        assert (p["lam_spec"], p["lam_selection"]) == ("1e-4", "fixed")
        tok_pairs = TP.rows_pairs(rows[tgt], lays[tgt], rows[src], lays[src])
        fit = tok_pairs.text < data.n_fit
        z_tgt, z_src = TP.gather(rows[tgt], tok_pairs, "a")[fit], TP.gather(rows[src], tok_pairs, "b")[fit]
        # A float64 reference of the same ridge at the same lambda.
        zb, za = z_src.astype(np.float64), z_tgt.astype(np.float64)
        xb = zb - zb.mean(0)
        w = np.linalg.solve(xb.T @ xb + 1e-4 * np.eye(zb.shape[1]), xb.T @ (za - za.mean(0)))
        ref = zb @ w + (za.mean(0) - zb.mean(0) @ w)
        pred = np.asarray(amap.apply(z_src), np.float64)
        err = np.linalg.norm(pred - ref) / np.linalg.norm(ref)
        np.testing.assert_allclose(err, 0.0, rtol=0, atol=1e-3)
        assert p["teacher_forced"]["n"] > 0 and 0 <= p["teacher_forced"]["top1_agreement"] <= 1
    assert "failed step" not in md


@pytest.mark.slow
def test_generation_survives_a_singular_pair(cfg, tiny_models, dead_dims_model):
    # At lambda 0 the source with three all-zero dimensions has a singular C_bb: that pair's solve
    # raises. The other direction (dead-dims model as the target) is well posed and must finish.
    cfg = dataclasses.replace(cfg, models=(tiny_models["llama_a"], dead_dims_model), gen_lam="0", max_length=256)
    out = registry.run("generation", cfg)
    res, md = _read(out)
    assert res["status"] == "complete"
    assert [(f["step"], f["type"]) for f in res["failures"]] == [("llama_dead -> llama_a", "SingularSystemError")]
    assert "singular" in res["failures"][0]["message"]
    assert [(p["source"], p["target"]) for p in res["generation"]["pairs"]] == [("llama_a", "llama_dead")]
    assert "llama_dead -> llama_a: `SingularSystemError`" in md
    assert (out / res["generation"]["pairs"][0]["map_file"]).exists()
    assert (out / "perturbed_selfmap.png").exists()


@pytest.mark.slow
def test_pooled_studies_survive_a_model_that_cannot_load(cfg, tiny_models, broken_model):
    cfg = dataclasses.replace(cfg, models=(tiny_models["bert"], tiny_models["llama_a"], broken_model))
    for study, key in (("similarity", None), ("classification", "pairs"), ("scaling", "rows"),
                       ("ood", "rows")):
        out = registry.run(study, cfg)
        res, md = _read(out)
        assert res["status"] == "complete", study
        steps = [f["step"] for f in res["failures"]]
        assert len(steps) == 1 and steps[0].startswith("model llama_noweights"), (study, steps)
        assert "model llama_noweights" in md and res["failures"][0]["type"] in md
        assert len(res["skipped_pairs"]) >= 2, study
        if key:
            got = {(r["source"], r["target"]) for r in res[study][key] if r["source"] != r["target"]}
            assert got == {("bert", "llama_a"), ("llama_a", "bert")}, (study, got)
        else:
            m = np.array(res["similarity"]["linear_cka"], dtype=float)
            assert np.isfinite(m[0, 1]) and np.all(np.isnan(m[2, :2]))


@pytest.mark.slow
def test_command_writes_the_report_and_exits_1_when_a_model_failed(tiny_models, tiny_corpora, broken_model,
                                                                   tmp_path, shared_cache):
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "linalign.experiments", "--study=similarity",
           f"--models={tiny_models['bert']},{broken_model}", f"--corpus={tiny_corpora['task']}",
           "--n_texts=30", "--max_length=24", f"--out={tmp_path}", f"--cache_dir={shared_cache}"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "FAILED model llama_noweights (embedding)" in p.stderr and "model.safetensors" in p.stderr
    res, md = _read(tmp_path / "similarity")
    assert res["status"] == "complete" and len(res["failures"]) == 1
    m = np.array(res["similarity"]["linear_cka"], dtype=float)
    np.testing.assert_allclose(m[0, 0], 1.0, rtol=0, atol=1e-4)  # the model that loaded was measured
    assert np.isnan(m[0, 1]) and "llama_noweights" in md

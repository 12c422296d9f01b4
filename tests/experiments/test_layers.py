"""The layer study's one streaming pass gives every layer's statistics exactly.

Two tiny random Llamas with different tokenizers read the same conversations in their own
layouts; the one pass accumulates statistics for every (source layer, target layer) pair, and
each pair's map, lambda, CV R^2 and CKA must match what a separate per-layer extraction,
pairing and ``linalign.fit`` give.
"""

import numpy as np
import pytest

from linalign.experiments import common as C
from linalign.experiments import layers as L
from linalign.experiments import tokenpairs as TP
from tests.experiments.conftest import _sentences


def _records(n):
    qs, rs = _sentences(n, 5), _sentences(2 * n, 6)
    return [{"prompt": f"Summarise this.\n\n{q}", "response": f"{rs[2 * i]}\n{rs[2 * i + 1]}", "finished": i % 2 == 0}
            for i, q in enumerate(qs)]


@pytest.fixture()
def two_models(tiny_models):
    C._MODELS.clear()
    return C.load_model(tiny_models["llama_a"]), C.load_model(tiny_models["llama_b"])


@pytest.mark.slow
def test_one_pass_matches_per_layer_fits(two_models):
    from linalign import fit
    from linalign.align.fitting import solve_folds
    from linalign.extract import pipeline
    from linalign.metrics import linear_cka

    ma, mb = two_models  # B = ma is the source, A = mb the target in direction "S->G"
    recs = _records(24)
    lays = [TP.layouts(ma, recs), TP.layouts(mb, recs)]
    nb, na = ma.config.num_layers + 1, mb.config.num_layers + 1
    acc = L.accumulate((ma, mb), lays, len(recs), batch_size=5, max_length=128,
                       b_grid=list(range(nb)), a_grid=list(range(na)), folds=5, seed=0)
    d = acc["S->G"]
    texts_a, texts_b = [x.text for x in lays[1]], [x.text for x in lays[0]]
    rows_a = {la: pipeline.extract(mb, texts_a, per_token=True, layer=la, max_length=128, progress=False)
              for la in range(na)}
    rows_b = {lb: pipeline.extract(ma, texts_b, per_token=True, layer=lb, max_length=128, progress=False)
              for lb in range(nb)}
    pairs = TP.rows_pairs(rows_a[0], lays[1], rows_b[0], lays[0])
    assert d.rows == len(pairs) > 200
    for lb in range(nb):
        zb = TP.gather(rows_b[lb], pairs, "b")
        for la in range(na):
            za = TP.gather(rows_a[la], pairs, "a")
            ref = fit(zb, za, lam="auto", folds=5, heldout=0.0)
            got = solve_folds(d.pair_folds(lb, la), "auto")
            assert got.map.metadata.lam == pytest.approx(ref.metadata.lam, rel=1e-9, abs=0)
            np.testing.assert_allclose(got.map.w, ref.w, rtol=1e-4, atol=1e-4 * np.abs(ref.w).max())
            np.testing.assert_allclose(got.map.b, ref.b, rtol=1e-4, atol=1e-4 * np.abs(ref.b).max())
            np.testing.assert_allclose(got.report["cv_r2"], ref.metadata.extra["cv_r2"], rtol=1e-5, atol=1e-6)
            _, cka = L.solve_pair(d, lb, la, "auto")
            np.testing.assert_allclose(cka, float(linear_cka(zb, za)), rtol=1e-4, atol=1e-5)
    # The reverse direction (A's states as the source, B's final layer as the target) in the same pass.
    back = TP.rows_pairs(rows_b[nb - 1], lays[0], rows_a[na - 1], lays[1])
    assert acc["G->S"].rows == len(back)
    za = TP.gather(rows_a[1], back, "b")
    zb = TP.gather(rows_b[nb - 1], back, "a")
    ref = fit(za, zb, lam="1e-3", folds=5, heldout=0.0)
    got = solve_folds(acc["G->S"].pair_folds(1, nb - 1), "1e-3")
    np.testing.assert_allclose(got.map.w, ref.w, rtol=1e-4, atol=1e-4 * np.abs(ref.w).max())


def test_grid_layers_and_cka_refusals():
    assert L.grid_layers(31, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert L.grid_layers(19, 4) == [0, 4, 8, 12, 16, 18]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    xc = x - x.mean(0)
    np.testing.assert_allclose(L.cka_from_stats(xc.T @ xc, xc.T @ xc, xc.T @ xc), 1.0, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_layer_study_runs(cfg):
    import dataclasses
    import json

    from linalign.experiments import registry

    cfg = dataclasses.replace(cfg, models=(cfg.models[1], cfg.models[2]), n_gen_fit=24, n_texts=12, max_length=256)
    out = registry.run("layers", cfg)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and res["failures"] == []
    lay = res["layers"]
    assert len(lay["to_final"]["S->G"]) == C.load_model(cfg.models[1]).config.num_layers + 1
    grid = np.array(lay["grid"]["cka"], dtype=float)
    assert grid.shape == (len(lay["s_grid"]), len(lay["g_grid"])) and np.all((grid > 0) & (grid <= 1 + 1e-9))
    assert set(lay["teacher_forced"]) and all(0 <= v["top1_agreement"] <= 1 for v in lay["teacher_forced"].values())
    assert (out / "grid_cka.png").exists() and (out / "grid_cv_r2.png").exists()

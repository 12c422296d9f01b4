"""Each study end to end on tiny random models, and the studies' refusals of bad input."""

import dataclasses
import json

import numpy as np
import pytest

from linalign.experiments import common as C
from linalign.experiments import registry


def _outputs(d):
    files = sorted(p.name for p in d.iterdir())
    assert "report.md" in files and "results.json" in files
    assert any(f.endswith(".png") for f in files), files
    return json.loads((d / "results.json").read_text()), (d / "report.md").read_text()


def test_registry_lists_every_study():
    assert set(registry.STUDIES) >= {"demo", "similarity", "classification", "ood", "scaling", "generation"}
    with pytest.raises(KeyError, match="unknown study 'nope'"):
        registry.get("nope")


@pytest.mark.slow
def test_similarity_study(cfg):
    res, md = _outputs(registry.run("similarity", cfg))
    s = res["similarity"]
    m = np.array(s["linear_cka"], dtype=float)
    np.testing.assert_allclose(np.diag(m), 1.0, rtol=0, atol=1e-4)  # CKA(X, X) = 1
    np.testing.assert_allclose(m, m.T, rtol=0, atol=1e-6)
    assert "shuffled" in md


@pytest.mark.slow
def test_classification_study_and_cache_reuse(cfg, monkeypatch):
    res, md = _outputs(registry.run("classification", cfg))
    r = res["classification"]
    assert len(r["pairs"]) == 6
    for p in r["pairs"]:
        for reg in ("task", "public", "public+128"):
            assert 0.0 <= p[reg]["accuracy"] <= 1.0
    # Second run: every hidden state comes from the cache, none is extracted.
    from linalign.eval import cache
    import linalign.extract.pipeline as ex
    cache.clear_memo()
    C._MODELS.clear()
    def boom(*a, **k):
        raise AssertionError("extract called on a cached run")
    monkeypatch.setattr(ex, "extract", boom)
    res2, _ = _outputs(registry.run("classification", cfg))
    assert res2["classification"]["pairs"] == r["pairs"]
    # Other studies on the same texts reuse the same stores (no model run either).
    cache.clear_memo()
    _outputs(registry.run("similarity", cfg))
    _outputs(registry.run("scaling", cfg))


@pytest.mark.slow
def test_ood_and_scaling_studies(cfg):
    res, _ = _outputs(registry.run("ood", cfg))
    rows = res["ood"]["rows"]
    assert {r["variant"] for r in rows} == {"native", "task map", "public map"}
    for r in rows:
        for s in ("energy", "msp", "mahalanobis"):
            assert 0 <= r[s]["auroc"] <= 1 and 0 <= r[s]["fpr95"] <= 1
    res, _ = _outputs(registry.run("scaling", cfg))
    assert res["scaling"]["sizes"][-1] > 40


@pytest.mark.slow
def test_generation_study(cfg):
    cfg = dataclasses.replace(cfg, max_length=256)
    res, md = _outputs(registry.run("generation", cfg))
    pairs = res["generation"]["pairs"]
    assert {(p["target"], p["source"]) for p in pairs} == {("llama_a", "llama_b"), ("llama_b", "llama_a")}
    for p in pairs:
        assert 0 <= p["exact_token_match_rate"] <= 1 and 0 <= p["jaccard_vocab"] <= 1
        assert p["teacher_forced"]["n"] > 0 and p["lam_selection"] == "kfold-5"
    ctl = res["generation"]["controls"]
    # The identity self-map reproduces the model's own greedy output token for token.
    assert ctl["identity"]["generation"]["identical_outputs"] == ctl["n_prompts_identity"] == cfg.n_gen
    assert ctl["identity"]["teacher_forced"]["top1_agreement"] == 1.0
    assert ctl["identity_retokenized"]["generation"]["mean_tokens"] > 0
    assert "identity self-map, text re-tokenized" in md
    assert len(ctl["perturbed"]) >= 4 and "Native-vs-native ceiling" in md


@pytest.mark.slow
def test_demo_study(cfg, capsys):
    cfg = dataclasses.replace(cfg, **{**registry.get("demo").defaults, "n_texts": 120, "n_public": 80,
                                      "n_in_dist": 16, "max_length": 24})
    res, md = _outputs(registry.run("demo", cfg))
    assert "similarity" in res and "classification" in res
    assert "| target (head) |" in capsys.readouterr().out


def test_one_class_dataset_refused(cfg, tmp_path):
    p = tmp_path / "one.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"text {i}", "label": "a"}) for i in range(10)) + "\n")
    with pytest.raises(ValueError, match="single class"):
        registry.run("classification", dataclasses.replace(cfg, corpus=str(p)))


def test_unlabelled_dataset_refused(cfg, tmp_path):
    p = tmp_path / "nolab.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"text {i}"}) for i in range(10)) + "\n")
    with pytest.raises(ValueError, match="label"):
        registry.run("classification", dataclasses.replace(cfg, corpus=str(p)))


def test_missing_label_in_training_rows_refused(cfg, tmp_path):
    p = tmp_path / "gap.jsonl"
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(10)]
    rows[4] = {"text": "text 4"}
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match="label"):
        registry.run("classification", dataclasses.replace(cfg, corpus=str(p)))


def test_fewer_samples_than_hidden_without_ridge_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="lam=0 with d_b=32 > n-1=9"):
        C.fit_map(rng.normal(size=(10, 32)), rng.normal(size=(10, 16)), lam=0.0)
    m, lam = C.fit_map(rng.normal(size=(10, 32)), rng.normal(size=(10, 16)), lam="gcv")
    assert lam > 0 and m.d_b == 32


def test_map_rows_must_match():
    with pytest.raises(ValueError, match="source has 5 rows, target 4"):
        C.fit_map(np.zeros((5, 3)), np.zeros((4, 3)), lam=1.0)


def test_models_embedding_different_texts_refused():
    # Two models' embeddings of different text sets (different row counts) cannot be compared.
    from linalign.experiments import similarity, tokenpairs
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="has 7 rows, expected 8: all models must embed the same texts"):
        similarity.similarity_matrices({"a": rng.normal(size=(8, 4)), "b": rng.normal(size=(7, 3))}, k=2, seed=0)
    with pytest.raises(ValueError, match="layouts of the two models differ in number"):
        tokenpairs.pair_tokens([None] * 3, [None] * 3, [None] * 3, [None] * 2, [None] * 2)


def test_joined_corpus_spec(cfg, tiny_corpora):
    # '+' joins corpora as the extraction commands do; the join has no labels, so classification
    # refuses it while unlabelled uses sample from both parts.
    spec = tiny_corpora["public"] + "+" + tiny_corpora["task"]
    texts, labels, name = C.load_texts(spec, 0, cfg)
    one, _, _ = C.load_texts(tiny_corpora["public"], 0, cfg)
    two, _, _ = C.load_texts(tiny_corpora["task"], 0, cfg)
    assert labels is None and texts == one + two and name == "public+task"
    with pytest.raises(ValueError, match="has no labels"):
        C.load_texts(spec, 10, cfg, need_labels=True)

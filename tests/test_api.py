"""The public Python API: a light ``import linalign``, ``linalign.fit`` on arrays, stores and
batch iterators, maps that know their lambda, n and scores, and the README's notebook flow."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pair(n=400, d_b=16, d_a=8, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.normal(1.0, 1.0, (n, d_b)).astype(np.float32)
    z_a = (z_b @ rng.normal(size=(d_b, d_a)) / 4 + 0.3 * rng.normal(size=(n, d_a))).astype(np.float32)
    return z_b, z_a


def test_import_is_light():
    code = ("import sys, linalign; heavy = [m for m in ('jax', 'torch', 'flax', 'orbax') "
            "if m in sys.modules]; print(heavy); assert not heavy; "
            "assert callable(linalign.fit) and callable(linalign.load) and callable(linalign.embed)")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_fit_on_arrays_prints_lambda_n_and_scores(tmp_path):
    import linalign

    z_b, z_a = _pair()
    m = linalign.fit(z_b, z_a)
    md = m.metadata
    assert md.lam_spec == "auto" and md.lam_selection == "kfold-5" and md.lam > 0
    assert md.n + md.heldout["rows"] == 400 and md.heldout["r2"] > 0.8
    text = repr(m)
    assert f"lam={md.lam:.4g} (kfold-5)" in text and f"n={md.n}" in text
    assert re.search(r"held-out R\^2=0\.\d{4}, cosine=0\.\d{4}", text)
    assert md.source_fingerprint.startswith("sha256:")
    p = m.save(tmp_path / "m.safetensors")
    back = linalign.load(p)
    assert repr(back) == text
    np.testing.assert_array_equal(np.asarray(back(z_b)), np.asarray(m(z_b)))
    # Without held-out rows the map reports its cross-validated R^2.
    assert re.search(r"cv R\^2=0\.\d{4}", repr(linalign.fit(z_b, z_a, heldout=0)))


def test_fit_on_batches_and_stores_agree_with_arrays(tmp_path):
    import linalign
    from linalign.extract.store import StoreWriter

    z_b, z_a = _pair()
    ref = linalign.fit(z_b, z_a, lam="cv:4", folds=4, batch_size=64)
    it = linalign.fit(((z_b[i:i + 50], z_a[i:i + 50]) for i in range(0, 400, 50)), lam="cv:4",
                      folds=4)
    paths = []
    for name, arr in (("b", z_b), ("a", z_a)):
        w = StoreWriter(tmp_path / name, per_token=False, dtype="float32", dim=arr.shape[1],
                        model=f"model-{name}", pooling="mean", text_fingerprint="f" * 64,
                        total_rows=len(arr))
        w.append(arr)
        w.finalize()
        paths.append(tmp_path / name)
    st = linalign.fit(str(paths[0]), str(paths[1]), lam="cv:4", folds=4, batch_size=128)
    for m in (it, st):
        assert m.metadata.lam == ref.metadata.lam and m.metadata.n == ref.metadata.n
        np.testing.assert_allclose(np.asarray(m.w), np.asarray(ref.w), rtol=1e-4, atol=1e-5)
    assert (st.metadata.source_model, st.metadata.target_model, st.metadata.pooling) == \
        ("model-b", "model-a", "mean")


def test_fit_bad_inputs():
    import linalign

    z_b, z_a = _pair(n=30)
    with pytest.raises(ValueError, match="source has 30 rows, target 29"):
        linalign.fit(z_b, z_a[:29])
    with pytest.raises(ValueError, match="z_a is missing"):
        linalign.fit(z_b)
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 rows, got 3"):
        linalign.fit(z_b[:3], z_a[:3])
    with pytest.raises(ValueError, match="lam must be a number"):
        linalign.fit(z_b, z_a, lam="ridge")
    with pytest.raises(TypeError, match="fit takes two arrays, two stores"):
        linalign.fit(z_b, 3)


def test_cli_module_import_keeps_fit_callable():
    import linalign
    import linalign.fit  # noqa: F401  (rebinds the package attribute to the CLI module)

    z_b, z_a = _pair(n=100)
    assert linalign.fit(z_b, z_a, 1.0).metadata.lam == 1.0


def _readme_notebook_code() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## In a notebook", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    return code


@pytest.mark.slow
def test_readme_notebook_flow_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(_readme_notebook_code(), "README.md", "exec"), env)  # noqa: S102
    amap = env["amap"]
    assert amap.metadata.lam_selection == "kfold-5" and amap.d_b == 384 and amap.d_a == 768
    z_b, z_a = env["z_b"], env["z_a"]
    ev = amap.evaluate(z_b[1::2], z_a[1::2])
    # Chance level: the same fit on shuffled pairs (measured: R^2 -0.01, cosine 0.23, against
    # 0.16 and 0.45 for the real pairs from ~125 fitting titles).
    perm = np.random.default_rng(0).permutation(len(z_b[::2]))
    import linalign
    chance = linalign.fit(z_b[::2][perm], z_a[::2]).evaluate(z_b[1::2], z_a[1::2])
    assert ev["r2"] > chance["r2"] + 0.1 and ev["cosine"] > chance["cosine"] + 0.1, (ev, chance)
    back = linalign.load(tmp_path / "minilm_to_mpnet.safetensors")
    np.testing.assert_array_equal(np.asarray(back.w), np.asarray(amap.w))

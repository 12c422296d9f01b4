"""Concrete ML path of HELIX: bit search, compile, two-party encrypted inference."""

import zipfile
import io

import numpy as np
import pytest

pytestmark = pytest.mark.fhe

pytest.importorskip("concrete.ml")

from linalign.fhe import base  # noqa: E402
from linalign.fhe import concrete_backend as cb  # noqa: E402

D, K = 48, 4


@pytest.fixture(scope="module")
def head_and_data():
    """A logistic-regression head on separable synthetic data (train / test split)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers_kd = rng.normal(size=(K, D)) * 0.4  # overlapping classes: the search must work
    y = rng.integers(0, K, size=600)
    x = (centers_kd[y] + rng.normal(size=(600, D))).astype(np.float32)
    lr = LogisticRegression(max_iter=2000).fit(x[:400], y[:400])
    return lr.coef_.T.astype(np.float32), lr.intercept_.astype(np.float32), x, y


@pytest.fixture(scope="module")
def provider(head_and_data):
    v_dk, c_k, x, y = head_and_data
    search = cb.search_n_bits(v_dk, c_k, x[:400], labels_n=y[400:], eval_nd=x[400:])
    prov = cb.ConcreteProvider.compile(v_dk, c_k, x[:400], search.n_bits)
    yield prov, search
    prov.close()


def test_bit_search_keeps_accuracy_within_one_point(head_and_data, provider):
    v_dk, c_k, x, y = head_and_data
    _, search = provider
    assert search.clear_accuracy > 0.8  # learnable, and not trivially so
    chosen = search.quantized_accuracy[search.n_bits]
    assert len(search.quantized_accuracy) > 1  # narrower widths were tried and rejected
    assert chosen >= search.clear_accuracy - 0.01
    # Smaller widths tried first and rejected (or the smallest candidate already passed).
    for bits, acc in search.quantized_accuracy.items():
        if bits < search.n_bits:
            assert acc < search.clear_accuracy - 0.01
    # Held-out check through the compiled module itself.
    prov, _ = provider
    q_pred = prov.predict_scores(x[400:], fhe="disable").argmax(1)
    assert abs(np.mean(q_pred == y[400:]) - search.clear_accuracy) <= 0.01 + 1e-12


def test_compiled_circuit_is_leveled(provider):
    prov, _ = provider
    assert prov.report.pbs_count == 0
    assert prov.report.max_bit_width >= prov.report.n_bits
    assert prov.report.client_zip_bytes > 0 and prov.report.server_zip_bytes > 0


def test_simulate_matches_clear_quantized(head_and_data, provider):
    _, _, x, _ = head_and_data
    prov, _ = provider
    clear_q = prov.predict_scores(x[400:440], fhe="disable")
    sim = prov.predict_scores(x[400:440], fhe="simulate")
    np.testing.assert_allclose(sim, clear_q, rtol=0, atol=1e-9)


def test_two_party_encrypted_inference(head_and_data, provider):
    v_dk, c_k, x, _ = head_and_data
    prov, _ = provider
    spec = prov.client_spec()
    names = zipfile.ZipFile(io.BytesIO(base.unpack_blobs(spec)[1][0])).namelist()
    assert "server.zip" not in names and not any(n.endswith(".mlir") for n in names)
    client = cb.ConcreteClient(spec)
    try:
        prov.attach(client.public_context())
        queries = x[450:453]
        clear_q = prov.predict_scores(queries, fhe="disable")
        float_scores = queries.astype(np.float64) @ v_dk + c_k
        for i, z_d in enumerate(queries):
            reply = prov.apply(client.encrypt(z_d))
            scores_k = client.decrypt(reply)
            assert scores_k.shape == (K,)
            # Encryption adds no error on top of quantization (leveled integer circuit).
            np.testing.assert_allclose(scores_k, clear_q[i], rtol=0, atol=1e-9)
            # Quantization error stays small relative to the score spread.
            spread = float(np.ptp(float_scores[i]))
            np.testing.assert_allclose(scores_k, float_scores[i], rtol=0, atol=0.15 * spread)
        assert client.decrypt(prov.apply(client.encrypt(queries[0]))).argmax() == clear_q[0].argmax()
    finally:
        client.close()


def test_bad_inputs_are_named(head_and_data, provider):
    v_dk, c_k, x, _ = head_and_data
    prov, _ = provider
    bad = x[:5].copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        cb.search_n_bits(v_dk, c_k, bad)
    with pytest.raises(ValueError, match=r"\[d, K\]"):
        cb.search_n_bits(v_dk[:, 0], c_k, x[:5])
    with pytest.raises(ValueError, match=r"bias c must be \[K=4\]"):
        cb.quantize_head(v_dk, c_k[:2], x[:5], 6)
    with pytest.raises(ValueError, match=f"d={D}"):
        prov.predict_scores(x[:2, :10])
    with pytest.raises(base.FHEError, match="attach|public context"):
        fresh = cb.ConcreteProvider(prov.quantized_module, prov.report, D, K)
        try:
            fresh.apply(base.pack_blobs({"kind": "query"}, [b"x"]))
        finally:
            fresh.close()
    wrong = base.pack_blobs({"backend": "concrete", "d_in": D + 1, "k_out": K, "params": "tfhe"}, [b"k"])
    with pytest.raises(base.FHEError, match="d_in=49"):
        prov.attach(wrong)
    with pytest.raises(base.DeserializationError):
        cb.ConcreteClient(b"not a spec")


@pytest.mark.slow
def test_real_minilm_head_on_bbc_news_encrypted():
    """A head trained on real all-MiniLM-L6-v2 embeddings of BBC News, served under Concrete ML."""
    from linalign import checkpoints
    from linalign.data import load_corpus
    from linalign.data.splits import sample
    from linalign.eval.head import encode_labels, fit_head
    from linalign.extract.pipeline import extract

    corpus = sample(load_corpus("bbc_news"), 300, seed=0)
    model = checkpoints.load("all-minilm-l6-v2")
    z_nd = np.asarray(extract(model, corpus.texts, max_length=64, truncation="silent", progress=False))
    assert z_nd.shape == (300, 384)
    y, names = encode_labels(corpus.labels, corpus.label_names)
    perm = np.random.default_rng(0).permutation(300)  # the sample is in corpus (label) order
    z_nd, y = z_nd[perm], np.asarray(y)[perm]
    head = fit_head(z_nd[:200], [names[i] for i in y[:200]], names)
    clear_acc = head.accuracy(z_nd[200:], y[200:])
    assert clear_acc > 0.8
    search = cb.search_n_bits(head.v_dk, head.c_k, z_nd[:200], labels_n=y[200:], eval_nd=z_nd[200:])
    assert search.quantized_accuracy[search.n_bits] >= clear_acc - 0.01
    prov = cb.ConcreteProvider.compile(head.v_dk, head.c_k, z_nd[:200], search.n_bits)
    client = cb.ConcreteClient(prov.client_spec())
    try:
        prov.attach(client.public_context())
        clear_q = prov.predict_scores(z_nd[200:203], fhe="disable")
        for i in range(3):
            scores_k = client.decrypt(prov.apply(client.encrypt(z_nd[200 + i])))
            np.testing.assert_allclose(scores_k, clear_q[i], rtol=0, atol=1e-9)
    finally:
        client.close()
        prov.close()

"""HELIX inference through Concrete ML (TFHE): the provider's linear head compiled for FHE.

The provider holds a linear head f_A(z) = z V + c (``v_dk`` [d, K], ``c_k`` [K], e.g. from a
logistic regression on its private data). The head is loaded into a ``torch.nn.Linear(d, K)``
and compiled with ``concrete.ml.torch.compile``. That path was chosen over
``concrete.ml.sklearn.LogisticRegression.from_sklearn_model`` because it returns all K scores for
every K (sklearn's binary form collapses K=2 into one margin, which loses the energy score) and
takes the given weights as they are.

Post-training quantization turns the head into an integer matrix product; the compiled circuit
is *leveled* (encrypted additions and clear multiplications only, no programmable bootstrapping),
so key generation is cheap and the evaluation keys are tiny. Quantization bits are chosen per
head by :func:`search_n_bits`: the smallest width whose clear-quantized predictions stay within
``tolerance`` (default one accuracy point) of the float head on a calibration set.

Client/server split (Concrete ML's FHEModelDev / FHEModelClient / FHEModelServer), so the
provider never holds the secret key. All messages are ``bytes`` in the container of
``linalign.fhe.base`` (``pack_blobs``), like the CKKS backends; the order differs because the
crypto parameters come out of compiling the provider's circuit:

  provider = ConcreteProvider.compile(v_dk, c_k, calib_nd, n_bits)
  client = ConcreteClient(provider.client_spec())      # client.zip: specs + quantizers, no weights
  provider.attach(client.public_context())             # evaluation keys only
  scores_k = client.decrypt(provider.apply(client.encrypt(z_d)))
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from linalign.atomic import atomic_dir
from linalign.fhe import compat

DEFAULT_CANDIDATE_BITS = (3, 4, 5, 6, 7, 8, 10, 12)


def _import_concrete():
    """Applies the torch 2.13 adjustments, then imports Concrete ML lazily."""
    compat.apply()
    import warnings

    with warnings.catch_warnings():
        # concrete/__init__.py warns about pkg_resources; harmless.
        warnings.simplefilter("ignore", UserWarning)
        import concrete.ml.deployment  # noqa: F401
        import concrete.ml.torch.compile  # noqa: F401
    return concrete


def _check_head(v_dk: np.ndarray, c_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v_dk = np.asarray(v_dk)
    c_k = np.asarray(c_k)
    if v_dk.ndim != 2:
        raise ValueError(f"head weights V must be [d, K]; got shape {v_dk.shape}")
    if c_k.shape != (v_dk.shape[1],):
        raise ValueError(f"head bias c must be [K={v_dk.shape[1]}]; got shape {c_k.shape}")
    if not np.all(np.isfinite(v_dk)):
        bad = np.argwhere(~np.isfinite(v_dk))[0]
        raise ValueError(f"head weights V contain NaN/inf (first at row {bad[0]}, column {bad[1]})")
    if not np.all(np.isfinite(c_k)):
        raise ValueError(f"head bias c contains NaN/inf at index {np.flatnonzero(~np.isfinite(c_k))[0]}")
    return v_dk.astype(np.float32), c_k.astype(np.float32)


def _check_inputs(x_nd: np.ndarray, d: int, name: str) -> np.ndarray:
    x_nd = np.asarray(x_nd, dtype=np.float32)
    if x_nd.ndim == 1:
        x_nd = x_nd[None, :]
    if x_nd.ndim != 2 or x_nd.shape[1] != d:
        raise ValueError(f"{name} must be [n, d={d}]; got shape {x_nd.shape}")
    bad_rows = np.flatnonzero(~np.all(np.isfinite(x_nd), axis=1))
    if bad_rows.size:
        raise ValueError(f"{name} has NaN/inf in row {bad_rows[0]} ({bad_rows.size} rows in all)")
    return x_nd


def _torch_head(v_dk: np.ndarray, c_k: np.ndarray):
    import torch

    d, k = v_dk.shape
    lin = torch.nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(v_dk.T)))
        lin.bias.copy_(torch.from_numpy(c_k))
    return lin.eval()


def quantize_head(v_dk, c_k, calib_nd, n_bits: int):
    """Post-training quantization of the head, without compiling (fast; used by the search).

    Args:
      v_dk: [d, K] head weights.
      c_k: [K] head bias.
      calib_nd: [n, d] calibration inputs (aligned embeddings); sets the input ranges.
      n_bits: bits for inputs, weights and outputs.

    Returns:
      A ``concrete.ml.quantization.QuantizedModule``.
    """
    _import_concrete()
    from concrete.ml.torch.compile import build_quantized_module

    v_dk, c_k = _check_head(v_dk, c_k)
    calib_nd = _check_inputs(calib_nd, v_dk.shape[0], "calibration inputs")
    return build_quantized_module(_torch_head(v_dk, c_k), calib_nd, n_bits=int(n_bits))


@dataclasses.dataclass(frozen=True)
class BitSearch:
    """Outcome of :func:`search_n_bits`.

    Attributes:
      n_bits: the chosen width.
      clear_accuracy: float-head accuracy on the evaluation set (vs labels, or 1.0 vs itself).
      quantized_accuracy: {n_bits: accuracy of the clear-quantized head} for every width tried.
      agreement: {n_bits: fraction of argmax agreeing with the float head}.
    """

    n_bits: int
    clear_accuracy: float
    quantized_accuracy: dict
    agreement: dict


def search_n_bits(
    v_dk,
    c_k,
    calib_nd,
    labels_n: Optional[np.ndarray] = None,
    eval_nd: Optional[np.ndarray] = None,
    tolerance: float = 0.01,
    candidate_bits: Sequence[int] = DEFAULT_CANDIDATE_BITS,
) -> BitSearch:
    """Smallest quantization width whose accuracy is within ``tolerance`` of the float head.

    Args:
      v_dk: [d, K] head weights.
      c_k: [K] head bias.
      calib_nd: [n, d] calibration inputs (set quantization ranges).
      labels_n: optional [m] integer labels of the evaluation inputs; without labels, accuracy
        means agreement with the float head's argmax (so the float head scores 1.0).
      eval_nd: optional [m, d] evaluation inputs; defaults to ``calib_nd``.
      tolerance: allowed accuracy drop (0.01 = one point).
      candidate_bits: widths to try, in increasing order.

    Returns:
      BitSearch. If no width meets the tolerance the widest candidate is returned.
    """
    v_dk, c_k = _check_head(v_dk, c_k)
    d = v_dk.shape[0]
    calib_nd = _check_inputs(calib_nd, d, "calibration inputs")
    eval_nd = calib_nd if eval_nd is None else _check_inputs(eval_nd, d, "evaluation inputs")
    clear_pred = np.argmax(eval_nd.astype(np.float64) @ v_dk + c_k, axis=1)
    if labels_n is not None:
        labels_n = np.asarray(labels_n)
        if labels_n.shape != (eval_nd.shape[0],):
            raise ValueError(f"labels must be [{eval_nd.shape[0]}]; got shape {labels_n.shape}")
        target = labels_n
    else:
        target = clear_pred
    clear_acc = float(np.mean(clear_pred == target))
    accs, agrees = {}, {}
    chosen = None
    for bits in sorted(candidate_bits):
        qm = quantize_head(v_dk, c_k, calib_nd, bits)
        q_pred = np.argmax(qm.forward(eval_nd, fhe="disable"), axis=1)
        accs[bits] = float(np.mean(q_pred == target))
        agrees[bits] = float(np.mean(q_pred == clear_pred))
        if accs[bits] >= clear_acc - tolerance:
            chosen = bits
            break
    if chosen is None:
        chosen = max(candidate_bits)
    return BitSearch(chosen, clear_acc, accs, agrees)


@dataclasses.dataclass
class CompileReport:
    """Costs of preparing the provider's circuit.

    Attributes:
      n_bits: quantization width used.
      compile_s: seconds for quantization plus FHE compilation.
      max_bit_width: widest encrypted integer in the circuit.
      pbs_count: programmable bootstrapping operations per query (0: leveled circuit).
      client_zip_bytes / server_zip_bytes: sizes of the deployment artefacts.
    """

    n_bits: int
    compile_s: float
    max_bit_width: int
    pbs_count: int
    client_zip_bytes: int = 0
    server_zip_bytes: int = 0


BACKEND_NAME = "concrete"


class ConcreteProvider:
    """Party A: compiles the head and runs it over encrypted queries; never holds a secret key.

    Unlike the CKKS backends (client makes keys first), Concrete ML is provider-first: the
    crypto parameters depend on the compiled circuit, so the provider publishes
    :meth:`client_spec` before the client can generate keys. The provider keeps ``server.zip``
    (the circuit with the quantized weights); the spec holds circuit specs and quantizers only.

    Wire format (``linalign.fhe.base.pack_blobs``): client spec {backend, d_in, k_out, n_bits}
    [client.zip]; query {kind} [ciphertext]; reply {kind} [ciphertext].
    """

    name = BACKEND_NAME

    def __init__(self, quantized_module, report: CompileReport, d: int, k: int, workdir=None):
        self.quantized_module = quantized_module
        self.report = report
        self.d_in = d
        self.k_out = k
        self._eval_keys: Optional[bytes] = None
        self._own_tmp = workdir is None
        self._dir = pathlib.Path(tempfile.mkdtemp(prefix="cml_provider_")) if workdir is None else pathlib.Path(workdir)
        self._export(self._dir / "deploy")
        from concrete.ml.deployment import FHEModelServer

        self._server = FHEModelServer(str(self._dir / "deploy"))

    @classmethod
    def compile(cls, v_dk, c_k, calib_nd, n_bits: int, workdir=None) -> "ConcreteProvider":
        """Quantizes and compiles the head, then writes the deployment artefacts.

        Args:
          v_dk: [d, K] head weights.
          c_k: [K] head bias.
          calib_nd: [n, d] calibration inputs (aligned or public embeddings); set input ranges.
          n_bits: quantization width, e.g. ``search_n_bits(...).n_bits``.
          workdir: where client.zip/server.zip go (a fresh temporary directory if None).
        """
        _import_concrete()
        from concrete.ml.torch.compile import compile_torch_model

        v_dk, c_k = _check_head(v_dk, c_k)
        calib_nd = _check_inputs(calib_nd, v_dk.shape[0], "calibration inputs")
        t0 = time.perf_counter()
        qm = compile_torch_model(_torch_head(v_dk, c_k), calib_nd, n_bits=int(n_bits))
        compile_s = time.perf_counter() - t0
        circuit = qm.fhe_circuit
        report = CompileReport(
            n_bits=int(n_bits),
            compile_s=compile_s,
            max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
            pbs_count=int(circuit.statistics.get("programmable_bootstrap_count", -1)),
        )
        return cls(qm, report, v_dk.shape[0], v_dk.shape[1], workdir)

    def _export(self, path_dir: pathlib.Path) -> None:
        """Writes client.zip and server.zip into ``path_dir`` (temp dir, then one rename)."""
        from concrete.ml.deployment import FHEModelDev

        with atomic_dir(path_dir) as tmp:  # refuses a non-empty directory
            FHEModelDev(str(tmp), self.quantized_module).save()
        self.report.client_zip_bytes = (path_dir / "client.zip").stat().st_size
        self.report.server_zip_bytes = (path_dir / "server.zip").stat().st_size

    def client_spec(self) -> bytes:
        """What the client needs to make keys and encrypt: client.zip (no weights) + shapes."""
        from linalign.fhe import base

        meta = {"backend": self.name, "kind": "client_spec", "d_in": self.d_in, "k_out": self.k_out,
                "n_bits": self.report.n_bits}
        return base.pack_blobs(meta, [(self._dir / "deploy" / "client.zip").read_bytes()])

    def attach(self, public_context: bytes) -> None:
        """Loads the client's public context (evaluation keys); no secret key is ever in it."""
        from linalign.fhe import base

        meta, blobs = base.unpack_blobs(public_context, what="public context")
        if meta.get("backend") != self.name or len(blobs) != 1:
            raise base.DeserializationError(
                f"public context: expected backend {self.name!r} with 1 blob, got "
                f"{meta.get('backend')!r} with {len(blobs)}")
        if meta.get("d_in") != self.d_in or meta.get("k_out") != self.k_out:
            raise base.FHEError(
                f"public context is for d_in={meta.get('d_in')}, k_out={meta.get('k_out')}; this "
                f"head is d_in={self.d_in}, k_out={self.k_out}")
        self._eval_keys = blobs[0]

    def predict_scores(self, x_nd, fhe: str = "disable") -> np.ndarray:
        """Scores [n, K] in one of Concrete ML's modes ("disable", "simulate", "execute").

        "disable" is the clear quantized model. "execute" here uses keys that the compiled
        circuit generates for itself (a single-party check); the two-party path is
        :meth:`client_spec` + :class:`ConcreteClient` + :meth:`apply`.
        """
        x_nd = _check_inputs(x_nd, self.d_in, "inputs")
        return np.asarray(self.quantized_module.forward(x_nd, fhe=fhe), dtype=np.float64)

    def apply(self, query: bytes, head=None) -> bytes:
        """Enc(x) -> Enc(x V + c) for one query blob (``head`` is compiled in; kept for parity)."""
        from linalign.fhe import base

        if self._eval_keys is None:
            raise base.FHEError("call attach(public_context) before apply(): no evaluation keys")
        meta, blobs = base.unpack_blobs(query, what="query")
        if meta.get("kind") != "query" or len(blobs) != 1:
            raise base.DeserializationError(f"query: expected kind 'query' with 1 blob, got {meta}")
        result = self._server.run(blobs[0], self._eval_keys)
        return base.pack_blobs({"kind": "reply"}, [result])

    def close(self) -> None:
        if self._own_tmp:
            shutil.rmtree(self._dir, ignore_errors=True)


class ConcreteClient:
    """Party B: holds the secret key; encrypts aligned embeddings and decrypts K scores."""

    name = BACKEND_NAME

    def __init__(self, client_spec: bytes, key_dir=None):
        """Loads the provider's client spec and generates keys.

        Args:
          client_spec: bytes from :meth:`ConcreteProvider.client_spec`.
          key_dir: where Concrete keeps the keys; a fresh temporary directory if None.
        """
        _import_concrete()
        from concrete.ml.deployment import FHEModelClient

        from linalign.fhe import base

        meta, blobs = base.unpack_blobs(client_spec, what="client spec")
        if meta.get("backend") != self.name or meta.get("kind") != "client_spec" or len(blobs) != 1:
            raise base.DeserializationError(f"client spec: unexpected metadata {meta}")
        self.d_in = base.optional_meta_int(meta, "d_in", 1, 1 << 20, "client spec")
        self.k_out = base.optional_meta_int(meta, "k_out", 1, 1 << 20, "client spec")
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="cml_client_"))
        (self._tmp / "spec").mkdir()
        (self._tmp / "spec" / "client.zip").write_bytes(blobs[0])
        key_dir = self._tmp / "keys" if key_dir is None else pathlib.Path(key_dir)
        self._client = FHEModelClient(str(self._tmp / "spec"), key_dir=str(key_dir))
        t0 = time.perf_counter()
        self._client.generate_private_and_evaluation_keys(force=False)
        self.keygen_s = time.perf_counter() - t0
        self._public = base.pack_blobs(
            {"backend": self.name, "d_in": self.d_in, "k_out": self.k_out, "params": "tfhe"},
            [self._client.get_serialized_evaluation_keys()],
        )

    def public_context(self) -> bytes:
        """Serialized evaluation keys (public) with shapes; never the secret key."""
        return self._public

    def encrypt(self, x_d: np.ndarray) -> bytes:
        """Quantizes and encrypts one aligned embedding [d_in]; returns the query blob."""
        from linalign.fhe import base

        x = base.check_vector(x_d, self.d_in, "query").astype(np.float32)[None, :]
        return base.pack_blobs({"kind": "query"}, [self._client.quantize_encrypt_serialize(x)])

    def decrypt(self, reply: bytes) -> np.ndarray:
        """Decrypts and dequantizes one reply blob into float64 scores [k_out]."""
        from linalign.fhe import base

        meta, blobs = base.unpack_blobs(reply, what="reply")
        if meta.get("kind") != "reply" or len(blobs) != 1:
            raise base.DeserializationError(f"reply: expected kind 'reply' with 1 blob, got {meta}")
        out = np.asarray(self._client.deserialize_decrypt_dequantize(blobs[0]), np.float64).reshape(-1)
        if out.shape != (self.k_out,):
            raise base.FHEError(f"reply decrypted to shape {out.shape}, expected ({self.k_out},)")
        return out

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

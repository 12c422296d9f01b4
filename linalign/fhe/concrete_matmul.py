"""HELIX fitting step with concrete-ml-extensions: encrypted matrix x clear matrix (TFHE GLWE).

The fitting phase needs the cross term Z_B^T Z_A over n public rows, where B (client) must
not reveal Z_B and A (provider) must not reveal Z_A. concrete-ml-extensions 0.1.9 multiplies
an encrypted integer matrix by a clear integer matrix:

  encrypt_matrix(private_key, params, X [m, n] uint64) -> EncryptedMatrix   (one GLWE per row
                                                           and 2048-value block of n)
  matrix_multiplication(enc_X, W [n, p] uint64, compression_key) -> CompressedResultEncryptedMatrix
  decrypt_matrix(result, private_key, params, p % 2048 or 2048) -> [m, p] uint64 (two's complement)

So B encrypts Q_B^T = quantize(Z_B)^T [d_B, n], A multiplies by Q_A = quantize(Z_A) [n, d_A] and
returns Enc(Q_B^T Q_A) [d_B, d_A] with its per-feature scales s_A; B decrypts and rescales
entry (i, j) by s_B[i] * s_A[j] to get Z_B^T Z_A.

Limits measured with the default parameters (``default_params()``), which this module uses:
* Results live in a signed 27-bit window [-2^26, 2^26) and wrap around beyond it, so each
  chunk of rows must satisfy rows * qmax_B * qmax_A < 2^26; with 8-bit symmetric quantization
  (qmax = 127) that is 4,160 rows, so n is processed in chunks of 4,096 rows, one ciphertext
  set and one reply per chunk, summed in the clear by B after decryption.
* Decryption adds a small absolute error (observed at most ~75 integer units; the bound used
  by the tests is 256 units = 256 * s_B * s_A per chunk).
* Quantization of Z_B and Z_A to 8 bits dominates the error (see docs/notes/concrete.md).
* The compression key (evaluation key) is ~134 MB; the provider's cost grows with
  d_B * d_A * chunks, which makes d = 384..768 slow on a few CPU cores (measured in
  experiments/bench_fhe.py).
Leakage beyond the paper's: A learns nothing new; B learns s_A = max_k |Z_A[k, j]| / 127 per
feature j of A (d_A scalars).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Optional

import numpy as np

RESULT_BITS = 27  # signed window of a decrypted result: [-2^26, 2^26)
NOISE_BOUND_UNITS = 256  # absolute decryption-error bound, in integer units, used by tests
GLWE_BLOCK = 2048


def _fx():
    import concrete_ml_extensions as fx  # lazy: native extension

    return fx


def _check_matrix(z_nd, name: str) -> np.ndarray:
    z = np.asarray(z_nd, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"{name} must be [n, d]; got shape {z.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(z), axis=1))
    if bad.size:
        raise ValueError(f"{name} has NaN/inf in row {bad[0]} ({bad.size} rows in all)")
    return z


def quantize_symmetric(z: np.ndarray, bits: int, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric quantization: q[:, j] = round(z[:, j] / s[j]), |q| <= 2^(bits-1) - 1.

    Per-column scales cost nothing under encryption (the integer product is unchanged; the
    result is rescaled by s_B[i] * s_A[j] after decryption) and keep features with small
    ranges from being flattened by one large feature.

    Args:
      z: [n, d] array to quantize.
      bits: signed width.
      scale: optional [d] scales to use instead of max|z[:, j]| / qmax (values beyond clip).

    Returns:
      (q int64 [n, d], s float64 [d]) with z ~= q * s.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    qmax = 2 ** (bits - 1) - 1
    if scale is None:
        amax = np.max(np.abs(z), axis=0) if z.shape[0] else np.zeros(z.shape[1])
        scale = np.where(amax > 0, amax / qmax, 1.0)
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (z.shape[1],):
        raise ValueError(f"scale must be [{z.shape[1]}], got {scale.shape}")
    return np.clip(np.rint(z / scale), -qmax, qmax).astype(np.int64), scale


def rows_per_chunk(bits_b: int, bits_a: int) -> int:
    """Largest row count, a multiple of 2048 when possible, whose worst-case sum cannot wrap."""
    qmax_b, qmax_a = 2 ** (bits_b - 1) - 1, 2 ** (bits_a - 1) - 1
    limit = (2 ** (RESULT_BITS - 1) - 1) // (qmax_b * qmax_a)
    if limit < 1:
        raise ValueError(f"bits_b={bits_b}, bits_a={bits_a}: one product already exceeds 2^26")
    return (limit // GLWE_BLOCK) * GLWE_BLOCK or int(limit)


@dataclasses.dataclass
class FitCost:
    """Measured cost of one encrypted cross-term computation.

    Attributes: seconds for keygen / encrypt (B) / multiply (A) / decrypt (B), and bytes of the
    compression key (sent once), of B's ciphertexts (up) and of A's replies (down).
    """

    keygen_s: float = 0.0
    encrypt_s: float = 0.0
    provider_s: float = 0.0
    decrypt_s: float = 0.0
    key_bytes: int = 0
    up_bytes: int = 0
    down_bytes: int = 0
    chunks: int = 0


class MatmulClient:
    """Party B: owns the GLWE private key; encrypts Q_B^T and decrypts the cross term."""

    def __init__(self, bits: int = 8):
        fx = _fx()
        self.bits = int(bits)
        self._params = fx.MatmulCryptoParameters.deserialize(fx.default_params())
        self.params_json = json.loads(fx.default_params())
        t0 = time.perf_counter()
        self._private_key, compression_key = fx.create_private_key(self._params)
        self.keygen_s = time.perf_counter() - t0
        self._compression_key_bytes = compression_key.serialize()

    def compression_key(self) -> bytes:
        """Public evaluation material for the provider (no private key)."""
        return self._compression_key_bytes

    def encrypt(self, z_b_nd, chunk_rows: int, scale=None) -> tuple[list[bytes], np.ndarray, int]:
        """Quantizes Z_B and encrypts Q_B^T, one ciphertext set per chunk of rows.

        Args:
          z_b_nd: [n, d_B] B's public-text embeddings.
          chunk_rows: rows per chunk (from :func:`rows_per_chunk` with both sides' bits).
          scale: [d_B] per-column quantization scales (default max|Z_B[:, j]| / qmax).

        Returns:
          (serialized EncryptedMatrix per chunk, s_B [d_B], n).
        """
        fx = _fx()
        z = _check_matrix(z_b_nd, "Z_B")
        q_nd, scale = quantize_symmetric(z, self.bits, scale)
        out = []
        for start in range(0, q_nd.shape[0], chunk_rows):
            q_dn = np.ascontiguousarray(q_nd[start : start + chunk_rows].T).astype(np.uint64)
            out.append(fx.encrypt_matrix(pkey=self._private_key, crypto_params=self._params, data=q_dn).serialize())
        return out, scale, q_nd.shape[0]

    def decrypt(self, replies: list[bytes], d_a: int) -> np.ndarray:
        """Decrypts and sums the per-chunk integer results: [d_B, d_A] int64 (Q_B^T Q_A)."""
        fx = _fx()
        total = None
        for blob in replies:
            res = fx.CompressedResultEncryptedMatrix.deserialize(blob)
            # uint64 two's complement -> signed
            part = fx.decrypt_matrix(res, self._private_key, self._params, d_a % GLWE_BLOCK or GLWE_BLOCK)
            part = part.astype(np.int64)
            total = part if total is None else total + part
        return total


class MatmulProvider:
    """Party A: multiplies B's encrypted Q_B^T by its clear Q_A; holds only the compression key."""

    def __init__(self, compression_key: bytes, bits: int = 8):
        fx = _fx()
        self.bits = int(bits)
        self._ckey = fx.deserialize_compression_key(compression_key)

    def multiply(self, enc_chunks: list[bytes], z_a_nd, chunk_rows: int) -> tuple[list[bytes], np.ndarray]:
        """Returns (serialized Enc(Q_B^T Q_A) per chunk, s_A [d_A]) for A's Z_A [n, d_A]."""
        fx = _fx()
        z = _check_matrix(z_a_nd, "Z_A")
        q_nd, scale = quantize_symmetric(z, self.bits)
        n_chunks = -(-q_nd.shape[0] // chunk_rows)
        if n_chunks != len(enc_chunks):
            raise ValueError(f"Z_A has {q_nd.shape[0]} rows = {n_chunks} chunks of {chunk_rows}; "
                             f"received {len(enc_chunks)} encrypted chunks")
        replies = []
        for i, blob in enumerate(enc_chunks):
            enc = fx.EncryptedMatrix.deserialize(blob)
            q_chunk = np.ascontiguousarray(q_nd[i * chunk_rows : (i + 1) * chunk_rows]).astype(np.uint64)
            res = fx.matrix_multiplication(encrypted_matrix=enc, data=q_chunk, compression_key=self._ckey)
            replies.append(res.serialize())
        return replies, scale


def encrypted_cross_covariance(
    z_b_nd,
    z_a_nd,
    bits: int = 8,
    feature_rows: Optional[int] = None,
    return_int: bool = False,
):
    """Z_B^T Z_A computed under encryption, both parties in one process (for fitting and tests).

    The caller centres the inputs if it wants a centred cross-covariance: centring Z_B alone
    already gives (Z_B - mu_B)^T Z_A = (Z_B - mu_B)^T (Z_A - mu_A).

    Args:
      z_b_nd: [n, d_B] client (B) embeddings, encrypted.
      z_a_nd: [n, d_A] provider (A) embeddings, clear on A's side.
      bits: symmetric quantization bits for both sides (8 -> chunks of 4,096 rows).
      feature_rows: compute only the first ``feature_rows`` columns of Z_B (rows of the result);
        the cost is linear in it, which the benchmark uses to time large d_B on few cores.
      return_int: also return the integer result and scales (for exactness tests).

    Returns:
      (cross [d_B', d_A] float64, FitCost), plus (int result, s_B, s_A) when ``return_int``.
    """
    z_b = _check_matrix(z_b_nd, "Z_B")
    z_a = _check_matrix(z_a_nd, "Z_A")
    if z_b.shape[0] != z_a.shape[0]:
        raise ValueError(f"Z_B has {z_b.shape[0]} rows but Z_A has {z_a.shape[0]}: rows must pair")
    if feature_rows is not None:
        z_b_used = z_b[:, : int(feature_rows)]
    else:
        z_b_used = z_b
    chunk = rows_per_chunk(bits, bits)
    cost = FitCost()
    client = MatmulClient(bits)
    cost.keygen_s = client.keygen_s
    cost.key_bytes = len(client.compression_key())
    provider = MatmulProvider(client.compression_key(), bits)
    s_b = quantize_symmetric(z_b_used, bits)[1]
    t0 = time.perf_counter()
    enc, _, _ = client.encrypt(z_b_used, chunk, scale=s_b)
    cost.encrypt_s = time.perf_counter() - t0
    cost.up_bytes = sum(len(b) for b in enc)
    t0 = time.perf_counter()
    replies, s_a = provider.multiply(enc, z_a, chunk)
    cost.provider_s = time.perf_counter() - t0
    cost.down_bytes = sum(len(b) for b in replies)
    t0 = time.perf_counter()
    q_cross = client.decrypt(replies, z_a.shape[1])
    cost.decrypt_s = time.perf_counter() - t0
    cost.chunks = len(enc)
    cross = q_cross.astype(np.float64) * s_b[:, None] * s_a[None, :]
    if return_int:
        return cross, cost, (q_cross, s_b, s_a)
    return cross, cost

"""Encrypted fitting statistics for HELIX (SEAL CKKS, ciphertext x plaintext only).

Both parties embed the same public texts: the client (B) has Z_B [n, d_b], the provider (A)
has Z_A [n, d_a]. The ridge solve needs (linalign.align.stats): n, mean_b, mean_a, C_bb, C_ba.

What the client does itself, in the clear: mean_b and C_bb (its own data), and centring
Z_Bc = Z_B - mean_b. It then encrypts the d_b + 1 columns of X = [Z_Bc, 1/n] and the
provider returns Enc(X^T Z_A) = Enc([Z_Bc^T Z_A ; mean_a]):

* Z_Bc^T Z_A = C_ba exactly, because Z_Bc^T 1 = 0 makes the mean_a correction vanish;
* (1/n) 1^T Z_A = mean_a, which the bias b = mean_a - mean_b W needs.

So the client learns C_ba and mean_a (what the paper's protocol reveals: the cross term, plus
the public-set mean of A's embeddings that any bias needs) and nothing else about Z_A; the
provider learns n, d_b and the message sizes.

Packing (column-wise, S = N/2 slots, T = ceil(n/S) chunks of rows): column j of X chunk t is
one ciphertext. For each chunk the provider applies the plaintext matrix Z_A[t]^T [d_a, S]
with generalised diagonals (d_a padded to a power of two D dividing S):

  y = sum_{r<D} D_r * rot(x, r),  D_r[s] = Z_A[t][(s + r) mod S, s mod D],

so slot s accumulates row (s mod D) of Z_A^T over columns s .. s+D-1; summing the S/D slots
with the same s mod D covers all S rows of the chunk. The provider evaluates this with
baby-step giant-step (r = g n1 + b: T (n1 - 1) + (n2 - 1) rotations per column, giant steps
shared by all chunks) and returns y unfolded; the client does the final S/D -> 1 fold after
decryption, for free. Cost per column: T D plaintext multiplies; plaintexts are encoded once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from linalign.fhe import base
from linalign.fhe.params import CKKSParams, get_params
from linalign.fhe.packing import _next_pow2

NAME = "seal-fit"
MAX_ROWS = 1 << 22
MAX_DIM = 1 << 13


@dataclasses.dataclass(frozen=True)
class FitLayout:
    """Sizes of the column-packed cross-product.

    Attributes:
      n: rows of the public set.
      d_b: client dimension (X has d_b + 1 columns).
      d_a: provider dimension.
      slots: S.
      chunks: T = ceil(n / S).
      d_pad: D, power of two >= d_a, dividing S.
      n1, n2: baby and giant step counts, n1 n2 = D.
    """

    n: int
    d_b: int
    d_a: int
    slots: int
    chunks: int
    d_pad: int
    n1: int
    n2: int

    @classmethod
    def make(cls, n: int, d_b: int, d_a: int, slots: int) -> "FitLayout":
        d_pad = _next_pow2(d_a)
        if d_pad > slots:
            raise ValueError(f"d_a={d_a} (padded {d_pad}) exceeds {slots} slots")
        chunks = -(-n // slots)
        # Minimise rotations per column: chunks * (n1 - 1) + (n2 - 1), n1 a power of two.
        best = None
        for e in range(int(math.log2(d_pad)) + 1):
            n1 = 1 << e
            cost = chunks * (n1 - 1) + (d_pad // n1 - 1)
            if best is None or cost < best[0]:
                best = (cost, n1)
        n1 = best[1]
        return cls(n, d_b, d_a, slots, chunks, d_pad, n1, d_pad // n1)

    @property
    def rotation_steps(self) -> list[int]:
        baby = list(range(1, self.n1))
        giant = [g * self.n1 for g in range(1, self.n2)]
        return sorted(set(baby) | set(giant))

    @property
    def rotations_per_column(self) -> int:
        return self.chunks * (self.n1 - 1) + (self.n2 - 1)

    def diagonals(self, z_na: np.ndarray) -> np.ndarray:
        """[T, n2, n1, S] pre-rotated diagonals D'_{t,g,b}[s] = D_{t, g n1 + b}[s - g n1]."""
        s_idx = np.arange(self.slots)
        out = np.zeros((self.chunks, self.n2, self.n1, self.slots))
        for t in range(self.chunks):
            a_sd = np.zeros((self.slots, self.d_pad))  # rows of this chunk, zero padded
            rows = z_na[t * self.slots : (t + 1) * self.slots]
            a_sd[: rows.shape[0], : self.d_a] = rows
            for g in range(self.n2):
                sp = (s_idx - g * self.n1) % self.slots
                for b in range(self.n1):
                    r = g * self.n1 + b
                    out[t, g, b] = a_sd[(sp + r) % self.slots, sp % self.d_pad]
        return out

    def fold(self, y_s: np.ndarray) -> np.ndarray:
        """[S] decrypted slots -> [d_a] row sums (the client's free final fold)."""
        return y_s.reshape(self.slots // self.d_pad, self.d_pad).sum(0)[: self.d_a]


def _check_matrix(z: Any, name: str, cols: int | None = None) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or (cols is not None and z.shape[1] != cols):
        want = f"(n, {cols})" if cols is not None else "(n, d)"
        raise base.FHEError(f"{name} must have shape {want}, got {z.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(z), axis=1))
    if bad.size:
        raise base.FHEError(f"{name} has non-finite values in row {int(bad[0])}")
    return z


class FitClient:
    """Party B for the fitting phase: keys, centring, encrypted columns, decryption, stats."""

    def __init__(self, z_nb: np.ndarray, d_a: int, params: "str | CKKSParams | None" = "n8192"):
        """Args:
          z_nb: [n, d_b] the client's embeddings of the public set.
          d_a: the provider's embedding dimension.
          params: CKKS preset; needs >= log2(max |mean_a|, |C_ba|) headroom bits (n8192: 20).
        """
        import seal

        from linalign.fhe.seal_backend import make_context

        self.z_nb = _check_matrix(z_nb, "Z_B")
        self.n, self.d_b = self.z_nb.shape
        if self.n < 2:
            raise base.FHEError(f"need at least 2 public rows, got {self.n}")
        self.d_a = int(d_a)
        self.params = get_params(params)
        self.layout = FitLayout.make(self.n, self.d_b, self.d_a, self.params.slots)
        self.mean_b = self.z_nb.mean(0)
        self._x = np.concatenate(
            [self.z_nb - self.mean_b, np.full((self.n, 1), 1.0 / self.n)], axis=1
        )  # [n, d_b + 1]
        self._ctx = make_context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._sk = keygen.secret_key()
        galois = seal.GaloisKeys()
        keygen.create_galois_keys(self.layout.rotation_steps, galois)
        self._enc = seal.Encryptor(self._ctx, self._sk)
        self._dec = seal.Decryptor(self._ctx, self._sk)
        self._encoder = seal.CKKSEncoder(self._ctx)
        self._public = base.pack_blobs(
            {
                "backend": NAME,
                "n": self.n,
                "d_b": self.d_b,
                "d_a": self.d_a,
                "params": self.params.to_dict(),
                "steps": self.layout.rotation_steps,
            },
            [galois.to_string()],
        )

    def public_context(self) -> bytes:
        return self._public

    def secret_key_bytes(self) -> bytes:
        return self._sk.to_string()

    @property
    def num_columns(self) -> int:
        return self.d_b + 1

    def encrypt_column(self, j: int) -> bytes:
        """Message for column j of X = [Z_B - mean_b, 1/n]: T ciphertexts."""
        if not 0 <= j < self.num_columns:
            raise base.FHEError(f"column {j} out of range [0, {self.num_columns})")
        s, scale = self.params.slots, 2.0**self.params.scale_bits
        col = np.zeros(self.layout.chunks * s)
        col[: self.n] = self._x[:, j]
        cts = [
            self._enc.encrypt_symmetric(self._encoder.encode(col[t * s : (t + 1) * s], scale)).to_string()
            for t in range(self.layout.chunks)
        ]
        return base.pack_blobs({"kind": "fit-column", "j": j}, cts)

    def encrypt_columns(self) -> Iterator[bytes]:
        for j in range(self.num_columns):
            yield self.encrypt_column(j)

    def decrypt_column(self, reply: bytes, j: int) -> np.ndarray:
        """[d_a] row j of X^T Z_A from the provider's reply."""
        from linalign.fhe.seal_backend import load_ciphertext

        meta, blobs = base.unpack_blobs(reply, what="fit reply")
        if meta.get("kind") != "fit-reply" or meta.get("j") != j or len(blobs) != 1:
            raise base.DeserializationError(f"fit reply: expected column {j} with one ciphertext")
        ct = load_ciphertext(self._ctx, blobs[0], "fit reply")
        return self.layout.fold(np.asarray(self._encoder.decode(self._dec.decrypt(ct))))

    def stats(self, cross_ja: np.ndarray):
        """SufficientStats from the decrypted cross term.

        Args:
          cross_ja: [d_b + 1, d_a] decrypted X^T Z_A (rows 0..d_b-1 = C_ba, last row = mean_a).

        Returns:
          linalign.align.stats.SufficientStats in float64 numpy (ss_a unknown: NaN).
        """
        from linalign.align.stats import from_moments

        cross = np.asarray(cross_ja, dtype=np.float64)
        if cross.shape != (self.d_b + 1, self.d_a):
            raise base.FHEError(f"cross term must be ({self.d_b + 1}, {self.d_a}), got {cross.shape}")
        zc = self._x[:, : self.d_b]
        return from_moments(self.n, self.mean_b, cross[-1], zc.T @ zc, cross[:-1])


class FitProvider:
    """Party A for the fitting phase; built from public bytes and its own Z_A."""

    def __init__(self, public_context: bytes, z_na: np.ndarray):
        import seal

        from linalign.fhe.seal_backend import make_context

        meta, blobs = base.unpack_blobs(public_context, what="fit context")
        if meta.get("backend") != NAME or len(blobs) != 1:
            raise base.DeserializationError("fit context: not a seal-fit context with one key blob")
        if set(meta) - {"backend", "n", "d_b", "d_a", "params", "steps"}:
            raise base.DeserializationError(f"fit context: unexpected fields {sorted(meta)}")
        self.n = base.optional_meta_int(meta, "n", 2, MAX_ROWS, "fit context")
        self.d_b = base.optional_meta_int(meta, "d_b", 1, MAX_DIM, "fit context")
        self.d_a = base.optional_meta_int(meta, "d_a", 1, MAX_DIM, "fit context")
        try:
            self.params = CKKSParams.from_dict(meta["params"])
            self.layout = FitLayout.make(self.n, self.d_b, self.d_a, self.params.slots)
        except (KeyError, TypeError, ValueError) as e:
            raise base.DeserializationError(f"fit context: {e}") from None
        if meta.get("steps") != self.layout.rotation_steps:
            raise base.DeserializationError("fit context: rotation steps do not match the layout")
        z = _check_matrix(z_na, "Z_A", self.d_a)
        if z.shape[0] != self.n:
            raise base.FHEError(f"Z_A has {z.shape[0]} rows but the client fits on n={self.n}")
        self._ctx = make_context(self.params)
        try:
            self._galois = self._ctx.from_galois_str(blobs[0])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"fit context: bad Galois keys ({e})") from None
        self._ev = seal.Evaluator(self._ctx)
        encoder = seal.CKKSEncoder(self._ctx)
        scale = 2.0**self.params.scale_bits
        diag = self.layout.diagonals(z)
        # Encoded once, reused for all d_b + 1 columns (T * D plaintexts).
        self._plain = [
            [[encoder.encode(diag[t, g, b], scale) for b in range(self.layout.n1)] for g in range(self.layout.n2)]
            for t in range(self.layout.chunks)
        ]

    def is_private(self) -> bool:
        return False  # built from parameters + Galois keys; no secret key can be present

    def cross(self, message: bytes) -> bytes:
        """One encrypted column of X -> Enc(row j of X^T Z_A), unfolded (client folds)."""
        from linalign.fhe.seal_backend import load_ciphertext

        meta, blobs = base.unpack_blobs(message, what="fit column")
        lay = self.layout
        j = meta.get("j")
        if meta.get("kind") != "fit-column" or not isinstance(j, int) or len(blobs) != lay.chunks:
            raise base.DeserializationError(f"fit column: expected kind 'fit-column', int j, {lay.chunks} ciphertexts")
        ev, gk = self._ev, self._galois
        top = len(self.params.coeff_mod_bit_sizes) - 1
        baby = []
        for t, blob in enumerate(blobs):
            ct = load_ciphertext(self._ctx, blob, f"fit column {j} chunk {t}")
            if ct.coeff_modulus_size() != top:
                raise base.DeserializationError("fit column: ciphertext is not at the top level")
            baby.append([ct] + [ev.rotate_vector(ct, b, gk) for b in range(1, lay.n1)])
        total = None
        for g in range(lay.n2):
            inner = None
            for t in range(lay.chunks):
                for b in range(lay.n1):
                    prod = ev.multiply_plain(baby[t][b], self._plain[t][g][b])
                    if inner is None:
                        inner = prod
                    else:
                        ev.add_inplace(inner, prod)
            ev.rescale_to_next_inplace(inner)  # rotate at one prime: cheaper key switching
            if g:
                ev.rotate_vector_inplace(inner, g * lay.n1, gk)
            if total is None:
                total = inner
            else:
                ev.add_inplace(total, inner)
        return base.pack_blobs({"kind": "fit-reply", "j": j}, [total.to_string()])


def encrypted_cross(client: FitClient, provider: FitProvider, progress: bool = False) -> "tuple[np.ndarray, dict]":
    """Runs the fitting exchange in one process (tests, benchmarks).

    Returns:
      ([d_b + 1, d_a] decrypted X^T Z_A, {"setup_bytes", "up_bytes", "down_bytes"}).
    """
    rows, up, down = [], 0, 0
    cols = range(client.num_columns)
    if progress:
        from tqdm import tqdm

        cols = tqdm(cols, desc="encrypted columns")
    for j in cols:
        msg = client.encrypt_column(j)
        rep = provider.cross(msg)
        up, down = up + len(msg), down + len(rep)
        rows.append(client.decrypt_column(rep, j))
    return np.stack(rows), {
        "setup_bytes": len(client.public_context()),
        "up_bytes": up,
        "down_bytes": down,
    }

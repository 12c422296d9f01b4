"""Encrypted fitting statistics for HELIX (SEAL CKKS, ciphertext x plaintext only).

Both parties embed the same public texts: the client (B) has Z_B [n, d_b], the provider (A)
has Z_A [n, d_a]. The ridge solve needs (linalign.align.stats): n, mean_b, mean_a, C_bb, C_ba.

What the client does itself, in the clear: mean_b and C_bb (its own data), and centring
Z_Bc = Z_B - mean_b. It then encrypts the d_b + 1 columns of X = [Z_Bc, 1/n] and the
provider returns Enc(X^T Z_A) = Enc([Z_Bc^T Z_A ; mean_a]):

* Z_Bc^T Z_A = C_ba exactly, because Z_Bc^T 1 = 0 makes the mean_a correction vanish;
* (1/n) 1^T Z_A = mean_a, which the bias b = mean_a - mean_b W needs.

So an honest client learns C_ba and mean_a (what the paper's protocol reveals: the cross term,
plus the public-set mean of A's embeddings that any bias needs); the provider learns n, d_b and
the message sizes. A client that chooses its columns freely learns X^T Z_A for its d_b + 1
columns and nothing more: ``FitProvider`` is a state machine that answers exactly d_b + 1
distinct column indices once each, and every reply is folded by the provider, reduced to the
real parts of its d_a result slots, re-randomised and flooded (``linalign.fhe.privacy``).

Packing (column-wise, S = N/2 slots, T = ceil(n/S) chunks of rows): column j of X chunk t is
one ciphertext. For each chunk the provider applies the plaintext matrix Z_A[t]^T [d_a, S]
with generalised diagonals (d_a padded to a power of two D dividing S):

  y = sum_{r<D} D_r * rot(x, r),  D_r[s] = Z_A[t][(s + r) mod S, s mod D],

so slot s accumulates row (s mod D) of Z_A^T over columns s .. s+D-1; summing the S/D slots
with the same s mod D covers all S rows of the chunk. The provider evaluates this with
baby-step giant-step (r = g n1 + b: T (n1 - 1) + (n2 - 1) rotations per column, giant steps
shared by all chunks), then folds y += rot(y, D 2^m) for m < log2(S/D), so slot k < d_a holds
(X_j^T Z_A)[k]. The unfolded slots would show partial sums over row windows of Z_A (an honest
client could solve them for most of Z_A), so the fold is the provider's. Cost per column:
T D plaintext multiplies (plaintexts encoded once), log2(S/D) fold rotations, one sanitiser.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator

import numpy as np

from linalign.fhe import base
from linalign.fhe.params import CKKSParams, get_fit_params
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
    def fold_steps(self) -> list[int]:
        """Rotations D, 2D, 4D, ... < S that sum the S/D row windows into slots 0..D-1."""
        out, s = [], self.d_pad
        while s < self.slots:
            out.append(s)
            s *= 2
        return out

    @property
    def baby_key_steps(self) -> list[int]:
        """1, 2, 4, ... < n1: baby step b is rot(rot(x, b - low(b)), low(b)), one rotation each."""
        out, s = [], 1
        while s < self.n1:
            out.append(s)
            s *= 2
        return out

    @property
    def rotation_steps(self) -> list[int]:
        """Galois steps: 0 (conjugation, circuit privacy), powers of two below n1 (baby steps,
        chained), n1 (giant steps, Horner) and the fold. log2(n1) + 1 + log2(S/D) + 1 keys
        instead of n1 + n2 + log2(S/D) - 1: 9 instead of 65 at n=4096, d_a=768 (14 MB of keys
        instead of 102 MB), for the same number of rotations."""
        giant = [self.n1] if self.n2 > 1 else []
        return sorted({0} | set(self.baby_key_steps) | set(giant) | set(self.fold_steps))

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
        """Plaintext replay of the provider's fold: [S] slots -> [S] (slot s: window sum of s mod D)."""
        for step in self.fold_steps:
            y_s = y_s + np.roll(y_s, -step)
        return y_s


REPLY_HEADROOM_BITS = 14  # |reply value| < 2^14 (values are <= ZA_COL_NORM_TARGET = 2^6)


def input_scale_bits(params: CKKSParams) -> int:
    """The scale the client encodes its columns at: as large as the chain allows.

    The column (scale 2^a) times Z_A's diagonals (scale 2^scale_bits) is rescaled by the last
    data prime (scale_bits wide), so the reply has scale 2^a over the remaining primes; a is
    chosen to leave REPLY_HEADROOM_BITS above it. A large a makes the absolute noise of the
    key switches (baby steps on the column, giant steps and fold after the rescale) and of the
    rescale negligible next to the data: at a = scale_bits that rotation noise, multiplied by
    Z_A's entries, dominated the fit's error bound B.
    """
    remaining = sum(params.coeff_mod_bit_sizes[:-2])
    return int(remaining - REPLY_HEADROOM_BITS - 1)


def fit_reply_level_scale(ctx, params: CKKSParams, calibration: bool = False) -> "tuple[int, float]":
    """(primes, scale) of a fit reply: the column's scale times Z_A's, divided by the primes the
    provider rescaled away (one for the product, one after the flood), as SEAL computes it.
    Calibration replies skip the second rescale."""
    moduli = [m.value() for m in ctx.first_context_data().parms().coeff_modulus()]
    scale = 2.0 ** (input_scale_bits(params) + params.scale_bits)
    drops = 1 if calibration else 2
    for q in moduli[::-1][:drops]:
        scale = scale / q
    return len(moduli) - drops, scale


def _check_matrix(z: Any, name: str, cols: int | None = None) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or (cols is not None and z.shape[1] != cols):
        want = f"(n, {cols})" if cols is not None else "(n, d)"
        raise base.FHEError(f"{name} must have shape {want}, got {z.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(z), axis=1))
    if bad.size:
        raise base.FHEError(f"{name} has non-finite values in row {int(bad[0])}")
    return z


class FitProtocolError(base.FHEError):
    """A fit message out of order: unknown, repeated or surplus column, or after the fit ended."""


def provider_rows(z_na: np.ndarray, n: int, d_a: int) -> "tuple[np.ndarray, float, float]":
    """The provider's Z_A checked against the client's announced n and d_a, with the power of two
    za_scale that brings its largest column norm to at most ``ZA_COL_NORM_TARGET`` (exact; the
    client divides it out) and that scaled norm: (Z_A, za_scale, za_col_norm)."""
    z = _check_matrix(z_na, "Z_A", d_a)
    if z.shape[0] != n:
        raise base.FHEError(f"Z_A has {z.shape[0]} rows but the client fits on n={n}")
    col_norm = float(np.linalg.norm(z, axis=0).max())
    scale = 2.0 ** -max(0, math.ceil(math.log2(max(col_norm, 1e-300) / ZA_COL_NORM_TARGET)))
    return z, scale, col_norm * scale


class FitClientBase:
    """What every fit client shares (``FitClient``, ``coeff_fit.CoeffFitClient``): the rows
    X = [Z_B - mean, 1/n] with each column's unit-norm scale, the public context and secret key,
    the provider's announced bounds, and the statistics from the decrypted cross term."""

    _public: bytes
    _sk: Any

    def _init_rows(self, z_nb: np.ndarray, d_a: int, max_rows: int) -> None:
        self.z_nb = _check_matrix(z_nb, "Z_B")
        self.n, self.d_b = self.z_nb.shape
        if not 2 <= self.n <= max_rows or self.d_b > MAX_DIM:
            raise base.FHEError(f"need 2 <= n <= {max_rows} rows and d_b <= {MAX_DIM}, got {self.z_nb.shape}")
        self.d_a = int(d_a)
        if not 1 <= self.d_a <= MAX_DIM:
            raise base.FHEError(f"d_a must be in [1, {MAX_DIM}], got {d_a}")
        self.mean_b = self.z_nb.mean(0)
        self._x = np.concatenate([self.z_nb - self.mean_b, np.full((self.n, 1), 1.0 / self.n)], axis=1)
        norms = np.linalg.norm(self._x, axis=0)  # [d_b + 1]
        self._col_scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)

    def public_context(self) -> bytes:
        return self._public

    def secret_key_bytes(self) -> bytes:
        return self._sk.to_string()

    @staticmethod
    def _parse_bounds(announced: dict) -> dict:
        """za_scale, za_col_norm and flood_std from the provider's (untrusted) announcement."""
        try:
            b = {k: float(announced[k]) for k in ("za_scale", "za_col_norm", "flood_std")}
        except (KeyError, TypeError, ValueError) as e:
            raise base.FHEError(f"provider's fit announcement lacks a bound ({e})") from None
        if not all(np.isfinite(v) and v >= 0 for v in b.values()) or b["za_scale"] <= 0:
            raise base.FHEError(f"provider's fit bounds are not usable: {b}")
        return b

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


class FitClient(FitClientBase):
    """Party B for the fitting phase: keys, centring, encrypted columns, decryption, stats.

    Each column of X is sent scaled to unit L2 norm (the scale stays with the client and is
    undone after decryption), so every reply value is bounded by the provider's announced
    column norm of Z_A, whatever the client's data magnitudes.
    """

    def __init__(self, z_nb: np.ndarray, d_a: int, params: "str | CKKSParams | None" = None):
        """Args:
          z_nb: [n, d_b] the client's embeddings of the public set.
          d_a: the provider's embedding dimension.
          params: CKKS preset (default n8192).
        """
        import seal

        from linalign.fhe.seal_backend import make_context

        self._init_rows(z_nb, d_a, MAX_ROWS)
        self.params = get_fit_params(params)
        self.layout = FitLayout.make(self.n, self.d_b, self.d_a, self.params.slots)
        self._ctx = make_context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._sk = keygen.secret_key()
        galois = seal.GaloisKeys()
        keygen.create_galois_keys(self.layout.rotation_steps, galois)
        public_key = keygen.create_public_key()
        self._enc = seal.Encryptor(self._ctx, self._sk)
        self._dec = seal.Decryptor(self._ctx, self._sk)
        self._encoder = seal.CKKSEncoder(self._ctx)
        from linalign.fhe import wire

        self._seeded = wire.SeededEncryptor(self._ctx, self._sk)  # seeded columns: half the upload
        self._codec = wire.CompactCodec(self._ctx, self._enc.encrypt_symmetric)
        self._bounds: dict | None = None
        self._public = base.pack_blobs(
            {
                "backend": NAME,
                "n": self.n,
                "d_b": self.d_b,
                "d_a": self.d_a,
                "params": self.params.to_dict(),
                "steps": self.layout.rotation_steps,
            },
            [galois.to_string(), public_key.to_string()],
        )

    @property
    def num_columns(self) -> int:
        return self.d_b + 1

    def set_provider_bounds(self, announced: dict) -> None:
        """The provider's announcement (``FitProvider.announce``): za_scale, za_col_norm, flood_std."""
        self._bounds = self._parse_bounds(announced)

    def encrypt_column(self, j: int) -> bytes:
        """Message for column j of X = [Z_B - mean_b, 1/n] scaled to unit norm: T ciphertexts."""
        if not 0 <= j < self.num_columns:
            raise base.FHEError(f"column {j} out of range [0, {self.num_columns})")
        s, scale = self.params.slots, 2.0 ** input_scale_bits(self.params)
        col = np.zeros(self.layout.chunks * s)
        col[: self.n] = self._x[:, j] * self._col_scale[j]
        cts = [self._seeded.encrypt(self._encoder.encode(col[t * s : (t + 1) * s], scale))
               for t in range(self.layout.chunks)]
        return base.pack_blobs({"kind": "fit-column", "j": j}, cts)

    def encrypt_columns(self) -> Iterator[bytes]:
        for j in range(self.num_columns):
            yield self.encrypt_column(j)

    # The message interface both fit backends share (``make_fit_client``): one column each.
    @property
    def num_messages(self) -> int:
        return self.num_columns

    def message_columns(self, i: int) -> range:
        return range(i, i + 1)

    def encrypt_message(self, i: int) -> bytes:
        return self.encrypt_column(i)

    def decrypt_message(self, reply: bytes, i: int) -> np.ndarray:
        return self.decrypt_column(reply, i)[None]

    def decrypt_slots(self, reply: bytes, *, _calibration: bool = False) -> np.ndarray:
        """All [S] decoded slots of a reply (tests: what a curious client could read)."""
        meta, blobs = base.unpack_blobs(reply, what="fit reply")
        if meta.get("kind") != "fit-reply" or len(blobs) != 1:
            raise base.DeserializationError("fit reply: expected kind 'fit-reply' with one ciphertext")
        level, scale = fit_reply_level_scale(self._ctx, self.params, _calibration)
        ct = self._codec.load(blobs[0], "fit reply", level, False, scale)
        return np.asarray(self._encoder.decode(self._dec.decrypt(ct)), dtype=np.float64)

    def decrypt_column(self, reply: bytes, j: int) -> np.ndarray:
        """[d_a] row j of X^T Z_A from the provider's reply.

        Raises:
          FHEError: a decrypted value beyond |X_j| |Z_A col| + 8 flood std, which an honest
            provider cannot produce (overflow or a corrupt reply).
        """
        if self._bounds is None:
            raise base.FHEError("call set_provider_bounds() with the provider's announcement first")
        meta, _ = base.unpack_blobs(reply, what="fit reply")
        if meta.get("j") != j:
            raise base.DeserializationError(f"fit reply: expected column {j}, got {meta.get('j')!r}")
        slots = self.decrypt_slots(reply)
        lay = self.layout
        # Slot s holds result s mod D (S / D replicas): their mean has 1/sqrt(S/D) of the noise.
        vals = slots.reshape(lay.slots // lay.d_pad, lay.d_pad).mean(0)[: self.d_a]
        b = self._bounds
        limit = b["za_col_norm"] + 8 * b["flood_std"] + 1e-6
        worst = float(np.abs(slots).max())
        if not np.isfinite(worst) or worst > limit:
            raise base.FHEError(f"fit reply column {j}: |value| {worst:.3g} exceeds the possible {limit:.3g} "
                                "(|X_j| = 1, announced |Z_A column| and flood): overflow or corrupt reply")
        return vals / (self._col_scale[j] * b["za_scale"])


ZA_COL_NORM_TARGET = 2.0**6  # |reply value| <= 64 for unit columns, 8 bits below the reply's headroom


class FitProvider:
    """Party A for the fitting phase; built from public bytes and its own Z_A.

    A state machine: it answers exactly d_b + 1 distinct column indices in [0, d_b], each once;
    any other column message raises FitProtocolError (the server then closes the session).

    Args:
      public_context: the client's fit context (parameters, Galois keys, public key).
      z_na: [n, d_a] the provider's embeddings of the public set.
      policy: FloodPolicy for the replies; None only for calibration (no flooding, no
        re-randomisation).
      bound: the flooding bound B for this layout; None measures it (``calibrate``).
    """

    def __init__(self, public_context: bytes, z_na: np.ndarray, policy=None, bound: "float | None" = None,
                 *, _calibration: bool = False):
        import seal

        from linalign.fhe.privacy import FloodPolicy, Sanitizer
        from linalign.fhe.seal_backend import make_context

        meta, blobs = base.unpack_blobs(public_context, what="fit context")
        if meta.get("backend") != NAME or len(blobs) != 2:
            raise base.DeserializationError("fit context: not a seal-fit context with Galois and public keys")
        if set(meta) - {"backend", "n", "d_b", "d_a", "params", "steps"}:
            raise base.DeserializationError(f"fit context: unexpected fields {sorted(meta)}")
        self.n = base.optional_meta_int(meta, "n", 2, MAX_ROWS, "fit context")
        self.d_b = base.optional_meta_int(meta, "d_b", 1, MAX_DIM, "fit context")
        self.d_a = base.optional_meta_int(meta, "d_a", 1, MAX_DIM, "fit context")
        try:
            self.params = CKKSParams.from_dict(meta["params"])
            self.layout = FitLayout.make(self.n, self.d_b, self.d_a, self.params.slots)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise base.DeserializationError(f"fit context: {e}") from None
        if meta.get("steps") != self.layout.rotation_steps:
            raise base.DeserializationError("fit context: rotation steps do not match the layout")
        z, self.za_scale, self.za_col_norm = provider_rows(z_na, self.n, self.d_a)
        self._ctx = make_context(self.params)
        try:
            self._galois = self._ctx.from_galois_str(blobs[0])
            pk = self._ctx.from_public_str(blobs[1])
            public_key = None if _calibration else pk
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"fit context: bad keys ({e})") from None
        self._ev = seal.Evaluator(self._ctx)
        from linalign.fhe import wire

        self._codec = wire.CompactCodec(self._ctx, seal.Encryptor(self._ctx, pk).encrypt)
        encoder = seal.CKKSEncoder(self._ctx)
        scale = 2.0**self.params.scale_bits
        diag = self.layout.diagonals(z * (self.za_scale / 2))
        # Encoded once, reused for all d_b + 1 columns (T * D plaintexts).
        self._plain = [
            [[encoder.encode(diag[t, g, b], scale) for b in range(self.layout.n1)] for g in range(self.layout.n2)]
            for t in range(self.layout.chunks)
        ]
        # No slot mask: after the provider's full-ring fold every slot s holds result s mod D
        # (a replica) or zero (s mod D >= d_a), never a partial sum; the half that turns
        # ct + conj(ct) into the real part is in the diagonals.
        self._sanitizer = Sanitizer(self._ctx, self._galois, public_key, self.params)
        self._input_scale = 2.0 ** input_scale_bits(self.params)
        self._seen: set = set()
        self._calibration = bool(_calibration)
        self.flood_std = 0.0
        if not _calibration:
            policy = policy if policy is not None else FloodPolicy()
            if bound is None:
                bound = calibrate(self.params, self.layout, z * self.za_scale, policy)
            self.bound = float(bound)
            self.flood_std = self._sanitizer.set_flood(self.bound, policy)

    def is_private(self) -> bool:
        return False  # built from parameters + public keys; no secret key can be present

    def announce(self) -> dict:
        """Bounds the client checks its replies against (all in the scaled units of the reply)."""
        return {"za_scale": self.za_scale, "za_col_norm": self.za_col_norm, "flood_std": self.flood_std,
                "headroom_bits": REPLY_HEADROOM_BITS, "columns": self.d_b + 1}

    @property
    def done(self) -> bool:
        return len(self._seen) == self.d_b + 1

    def cross(self, message: bytes) -> bytes:
        """One encrypted column of X -> Enc(row j of X^T Z_A) in slots 0..d_a-1, sanitised."""
        meta, blobs = base.unpack_blobs(message, what="fit column")
        lay = self.layout
        j = meta.get("j")
        if meta.get("kind") != "fit-column" or not isinstance(j, int) or isinstance(j, bool) \
                or len(blobs) != lay.chunks:
            raise base.DeserializationError(f"fit column: expected kind 'fit-column', int j, {lay.chunks} ciphertexts")
        if self.done:
            raise FitProtocolError(f"fit column {j}: all {self.d_b + 1} columns were already answered")
        if not 0 <= j <= self.d_b:
            raise FitProtocolError(f"fit column {j} out of range [0, {self.d_b}]")
        if j in self._seen:
            raise FitProtocolError(f"fit column {j} was already answered")
        ev, gk = self._ev, self._galois
        top = len(self.params.coeff_mod_bit_sizes) - 1
        baby = []
        for t, blob in enumerate(blobs):
            # Exact length for a seeded ciphertext at the top level, the column scale, every
            # residue below its prime; then SEAL's own validation.
            ct = self._codec.load(blob, f"fit column {j} chunk {t}", top, True, self._input_scale)
            rots = [ct]
            for b in range(1, lay.n1):  # rot(x, b) = rot(rot(x, b - low), low): power-of-two keys only
                low = b & -b
                rots.append(ev.rotate_vector(rots[b - low], low, gk))
            baby.append(rots)
        self._seen.add(j)  # counted before the work: a failing column still uses its index
        total = None
        for g in range(lay.n2 - 1, -1, -1):  # Horner over giant steps: one key (n1)
            inner = None
            for t in range(lay.chunks):
                for b in range(lay.n1):
                    prod = ev.multiply_plain(baby[t][b], self._plain[t][g][b])
                    if inner is None:
                        inner = prod
                    else:
                        ev.add_inplace(inner, prod)
            ev.rescale_to_next_inplace(inner)  # rotate at fewer primes: cheaper key switching
            if total is None:
                total = inner
            else:
                ev.rotate_vector_inplace(total, lay.n1, gk)
                ev.add_inplace(total, inner)
        for step in lay.fold_steps:  # the provider folds: no partial window sums leave it
            ev.add_inplace(total, ev.rotate_vector(total, step, gk))
        total = self._sanitizer(total)
        # After the flood (post-processing, no effect on what the reply hides): drop to the last
        # prime, halving the reply; its rounding adds ~1e-9 of noise per slot.
        # (Calibration measures B before this step: the flood need not cover it.)
        if not self._calibration:
            ev.rescale_to_next_inplace(total)
        return base.pack_blobs({"kind": "fit-reply", "j": j}, [self._codec.dump(total)])


def calibrate(params: CKKSParams, layout: FitLayout, z_na: np.ndarray, policy, seed: int = 0) -> float:
    """The flooding bound B for the fit replies: the provider's own keys, its exact circuit.

    A one-column client of the provider's own (random unit column; the evaluation error does
    not depend on the client's values, only on the layout and Z_A) runs one column through an
    unflooded provider; every slot is compared with the exact result.
    """
    from linalign.fhe.privacy import noise_bound

    rng = np.random.default_rng(seed)
    client = FitClient(rng.standard_normal((layout.n, 1)), layout.d_a, params)
    provider = FitProvider(client.public_context(), z_na, _calibration=True)
    x = client._x[:, 0] * client._col_scale[0]
    got = client.decrypt_slots(provider.cross(client.encrypt_column(0)), _calibration=True)
    res = np.zeros(layout.d_pad)
    res[: layout.d_a] = z_na.T @ x
    want = np.tile(res, params.slots // layout.d_pad)  # replicas after the full-ring fold
    return noise_bound([got - want], policy)


FIT_BACKENDS = ("seal-coeff-fit", NAME)  # coefficient encoding (default), slots
DEFAULT_FIT_BACKEND = "seal-coeff-fit"


def make_fit_client(z_nb: np.ndarray, d_a: int, backend: "str | None" = None, params=None):
    """The client of a fit backend (``FIT_BACKENDS``; default ``seal-coeff-fit``)."""
    backend = backend or DEFAULT_FIT_BACKEND
    if backend == NAME:
        return FitClient(z_nb, d_a, params)
    if backend == "seal-coeff-fit":
        from linalign.fhe.coeff_fit import CoeffFitClient

        return CoeffFitClient(z_nb, d_a, params)
    raise base.FHEError(f"unknown fit backend {backend!r}; known {list(FIT_BACKENDS)}")


def make_fit_provider(public_context: bytes, z_na: np.ndarray, policy=None, bound: "float | None" = None):
    """The provider for a client's fit context, by its ``backend`` field."""
    meta, _ = base.unpack_blobs(public_context, what="fit context")
    backend = meta.get("backend")
    if backend == NAME:
        return FitProvider(public_context, z_na, policy, bound)
    if backend == "seal-coeff-fit":
        from linalign.fhe.coeff_fit import CoeffFitProvider

        return CoeffFitProvider(public_context, z_na, policy, bound)
    raise base.DeserializationError(f"fit context: unknown backend {backend!r}; known {list(FIT_BACKENDS)}")


def encrypted_cross(client, provider, progress: bool = False, max_columns: int = 0) -> "tuple[np.ndarray, dict]":
    """Runs the fitting exchange in one process (tests, benchmarks), any fit backend.

    Args:
      client, provider: a fit client and the provider built from its public context.
      progress: a tqdm bar over the messages.
      max_columns: stop after the message that reaches this many columns (0: all d_b + 1).

    Returns:
      ([columns run, d_a] decrypted rows of X^T Z_A, {"setup_bytes", "up_bytes", "down_bytes",
      "columns_run", "messages_run", "client_encrypt_s", "provider_s", "client_decrypt_s"}).
    """
    rows, up, down, cols = [], 0, 0, 0
    t_enc = t_eval = t_dec = 0.0
    client.set_provider_bounds(provider.announce())
    msgs = range(client.num_messages)
    if progress:
        from tqdm import tqdm

        msgs = tqdm(msgs, desc="encrypted fit messages")
    for i in msgs:
        if 0 < max_columns <= cols:
            break
        t0 = time.perf_counter()
        msg = client.encrypt_message(i)
        t1 = time.perf_counter()
        rep = provider.cross(msg)
        t2 = time.perf_counter()
        rows.append(client.decrypt_message(rep, i))
        t_enc, t_eval, t_dec = t_enc + t1 - t0, t_eval + t2 - t1, t_dec + time.perf_counter() - t2
        up, down = up + len(msg), down + len(rep)
        cols = client.message_columns(i).stop
    return np.concatenate(rows), {
        "setup_bytes": len(client.public_context()),
        "up_bytes": up,
        "down_bytes": down,
        "columns_run": cols,
        "messages_run": len(rows),
        "client_encrypt_s": t_enc,
        "provider_s": t_eval,
        "client_decrypt_s": t_dec,
    }

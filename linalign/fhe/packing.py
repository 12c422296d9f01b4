"""Slot layout for a packed vector-matrix product with few rotations (no HE library needed).

Problem: Enc(z) with z in R^d, plaintext V [d, K]; want all K scores z V in ONE ciphertext.

Layout ("replicated hybrid diagonal"), S slots:

* pad d to d' = next power of two; the client fills all S slots with C = S / d' copies of z
  (free: replication happens before encryption);
* copy c of the S slots serves R = ceil(K / C) (rounded to a power of two) rows of V^T, so
  row k = c R + i (i < R) lives in copy c;
* generalised diagonals: y = sum_{r<R} D_r * rot(ct, r), with
  D_r[c d' + j] = V[(j + r) mod d', c R + (j mod R)];
* fold: y += rot(y, R 2^m) for m < log2(d'/R); slot c d' + i then holds
  sum over all d' columns of V^T[cR + i, :] z, i.e. score cR + i.

Rotations: (R - 1) on the input + log2(d' / R) on the product; R plaintext multiplies; one
rescale. For d=768, K=16 at S=4096: d'=1024, C=4, R=4 -> 3 + 8 = 11 rotations and 4 multiplies,
against the one-dot-per-class baseline's K (1 multiply + log2 S rotations) = 16 x 13 ops.
Every fold step stays inside its copy because the summed window c d' + i .. c d' + i + d' - R
never leaves [c d', (c+1) d').
"""

from __future__ import annotations

import dataclasses

import numpy as np


def doubling_steps(start: int, limit: int) -> list[int]:
    """start, 2 start, 4 start, ... < limit: the rotations of a log-depth fold."""
    out, s = [], start
    while s < limit:
        out.append(s)
        s *= 2
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Where everything sits in the S slots.

    Attributes:
      d: query dimension.
      k: number of scores.
      slots: S.
      d_pad: d' (power of two, >= d).
      copies: C = S / d'.
      rows_per_copy: R (power of two).
    """

    d: int
    k: int
    slots: int
    d_pad: int
    copies: int
    rows_per_copy: int

    @classmethod
    def make(cls, d: int, k: int, slots: int) -> "PackedLayout":
        d_pad = _next_pow2(d)
        if d_pad > slots:
            raise ValueError(f"d={d} (padded {d_pad}) does not fit {slots} slots; use a larger ring")
        copies = slots // d_pad
        rows = _next_pow2(-(-k // copies))
        if rows > d_pad:
            raise ValueError(f"K={k} rows do not fit d'={d_pad} x {copies} copies")
        return cls(d, k, slots, d_pad, copies, rows)

    @property
    def diag_steps(self) -> list[int]:
        """Input rotations r = 1 .. R-1."""
        return list(range(1, self.rows_per_copy))

    @property
    def fold_steps(self) -> list[int]:
        """Product rotations R, 2R, 4R, ... < d'."""
        return doubling_steps(self.rows_per_copy, self.d_pad)

    @property
    def rotation_steps(self) -> list[int]:
        """Galois steps the provider needs: 0 (conjugation, for circuit privacy) and the rotations."""
        return sorted({0} | set(self.diag_steps) | set(self.fold_steps))

    def replicate(self, x_d: np.ndarray) -> np.ndarray:
        """[d] -> [S]: zero-pad to d', tile C times."""
        z = np.zeros(self.d_pad)
        z[: self.d] = x_d
        return np.tile(z, self.copies)

    def score_slots(self) -> np.ndarray:
        """[K] slot index of each score: c d' + i for k = c R + i."""
        k = np.arange(self.k)
        return (k // self.rows_per_copy) * self.d_pad + (k % self.rows_per_copy)

    def diagonals(self, v_dk: np.ndarray) -> np.ndarray:
        """[R, S] plaintext diagonals D_r for head V [d, K]."""
        s = np.arange(self.slots)
        c, j = s // self.d_pad, s % self.d_pad
        row = c * self.rows_per_copy + (j % self.rows_per_copy)
        v_pad = np.zeros((self.d_pad, self.copies * self.rows_per_copy))
        v_pad[: self.d, : self.k] = v_dk
        out = np.empty((self.rows_per_copy, self.slots))
        for r in range(self.rows_per_copy):
            out[r] = v_pad[(j + r) % self.d_pad, row]
        return out

    def bias_slots(self, c_k: np.ndarray) -> np.ndarray:
        """[S] vector with c[k] at score slot k, zero elsewhere."""
        out = np.zeros(self.slots)
        out[self.score_slots()] = c_k
        return out

    def simulate_slots(self, x_d: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        """Plaintext replay of the encrypted schedule (same rotations, same folds) -> all [S] slots."""
        z = self.replicate(x_d)
        diag = self.diagonals(v_dk)
        y = sum(diag[r] * np.roll(z, -r) for r in range(self.rows_per_copy))
        for step in self.fold_steps:
            y = y + np.roll(y, -step)
        return y + self.bias_slots(c_k)

    def simulate(self, x_d: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        """The K score slots of ``simulate_slots`` -> [K]."""
        return self.simulate_slots(x_d, v_dk, c_k)[self.score_slots()]


@dataclasses.dataclass(frozen=True)
class ReplicatedLayout:
    """Full-ring layout: every slot holds a score (or zero), none a partial sum; B queries per
    ciphertext.

    Layout (S slots, d' = next power of two >= d, B queries, period P = B d' <= S):

    * the client writes query b (zero-padded to d') at [b d', (b+1) d') of a P-vector and tiles
      it S / P times (free: replication happens before encryption);
    * the head is the block-diagonal matrix diag(V, ..., V) [P, B K]: score j = b K + k is
      query b's score k. R = next power of two >= B K;
    * slot s computes row s mod R: diagonals D_r[s] = Vbig[(s + r) mod P, s mod R] for r < R,
      evaluated baby-step giant-step with r = g n1 + b (n1 n2 = R, n1 ~ sqrt R):
      y = sum_g rot(sum_b rot(D_{g n1 + b}, -g n1) * rot(z, b), g n1), the giant sums in Horner
      form y = I_0 + rot(I_1 + rot(I_2 + ..., n1), n1): n1 - 1 baby rotations of the input
      (each one step further than the last: one Galois key, step 1) and n2 - 1 giant rotations
      of products (step n1, before the rescale);
    * fold: y += rot(y, R 2^m) for m < log2(P / R). z and every D_r are P-periodic in s, so y
      is too, and the fold sums y over the P consecutive positions s .. s + P - 1, one whole
      period whatever s is: y[s] = score(s mod R) for s mod R < B K, 0 otherwise, in every slot
      (no window is partial, so neither copies nor queries mix).

    No slot holds a partial sum over a column window of V, so the reply needs no slot mask
    (a mask multiply's encoding error times those partial sums dominated the evaluation error);
    each score is replicated M = S / R times and the client averages the replicas, which
    divides the reply's independent per-slot noise (flooding included) by sqrt(M).

    Cost: R plaintext multiplies, (n1 - 1) + (n2 - 1) + log2(P / R) rotations, one rescale.
    d=768, K=16, S=4096: B=1: 16 multiplies, 3 + 3 + 6 = 12 rotations (21 with the plain
    Horner chain of step 1), Galois steps {0, 1, 4, 16, 32, ..., 512}; B=4: 64 multiplies,
    7 + 7 + 6 = 20 rotations for four queries.

    Attributes:
      d, k, slots, d_pad, copies: as in ``PackedLayout`` (copies = S / P).
      rows: R.
      batch: B.
      n1, n2: baby and giant step counts.
    """

    d: int
    k: int
    slots: int
    d_pad: int
    copies: int
    rows: int
    batch: int = 1
    n1: int = 1
    n2: int = 1

    @classmethod
    def make(cls, d: int, k: int, slots: int, batch: int = 1) -> "ReplicatedLayout":
        d_pad = _next_pow2(d)
        if d_pad > slots:
            raise ValueError(f"d={d} (padded {d_pad}) does not fit {slots} slots; use a larger ring")
        if (not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1
                or batch & (batch - 1)):
            raise ValueError(f"batch must be a power of two (the period B d' divides the slots), got {batch!r}")
        if batch * d_pad > slots:
            raise ValueError(f"batch={batch} queries of d'={d_pad} exceed {slots} slots "
                             f"(at most {slots // d_pad})")
        period = int(batch) * d_pad
        rows = _next_pow2(int(batch) * k)
        if rows > period:
            raise ValueError(f"K={k} scores exceed d'={d_pad}: use K <= d'")
        n1 = 1 << (int(rows).bit_length() - 1) // 2  # sqrt(R), rounded down to a power of two
        return cls(d, k, slots, d_pad, slots // period, rows, int(batch), n1, rows // n1)

    @property
    def period(self) -> int:
        """P = B d'."""
        return self.batch * self.d_pad

    @property
    def replicas(self) -> int:
        """M = S / R copies of every score in the reply."""
        return self.slots // self.rows

    @property
    def baby_steps(self) -> list[int]:
        return [1] if self.n1 > 1 else []

    @property
    def giant_steps(self) -> list[int]:
        return [self.n1] if self.n2 > 1 else []

    @property
    def fold_steps(self) -> list[int]:
        """R, 2R, 4R, ... < P."""
        return doubling_steps(self.rows, self.period)

    @property
    def rotation_steps(self) -> list[int]:
        """Galois steps: 0 (conjugation, circuit privacy), 1 (baby), n1 (giant) and the fold."""
        return sorted({0} | set(self.baby_steps) | set(self.giant_steps) | set(self.fold_steps))

    @property
    def rotations(self) -> int:
        """Rotations per ciphertext, conjugation excluded."""
        return self.n1 - 1 + self.n2 - 1 + len(self.fold_steps)

    def replicate(self, x: np.ndarray) -> np.ndarray:
        """[d] or [n, d] (n <= B queries) -> [S] slots."""
        x = np.asarray(x, np.float64)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.d or not 1 <= x.shape[0] <= self.batch:
            raise ValueError(f"queries must be [d={self.d}] or [n <= {self.batch}, {self.d}], got {x.shape}")
        z = np.zeros((self.batch, self.d_pad))
        z[: len(x), : self.d] = x
        return np.tile(z.reshape(-1), self.copies)

    def _vbig(self, v_dk: np.ndarray) -> np.ndarray:
        """[P, R]: diag(V, ..., V) zero-padded."""
        big = np.zeros((self.period, self.rows))
        for b in range(self.batch):
            big[b * self.d_pad: b * self.d_pad + self.d, b * self.k: (b + 1) * self.k] = v_dk
        return big

    def diagonals(self, v_dk: np.ndarray) -> np.ndarray:
        """[R, S] plaintexts of the baby-step products: row g n1 + b is rot(D_{g n1 + b}, -g n1)."""
        s = np.arange(self.slots)
        big = self._vbig(v_dk)
        out = np.empty((self.rows, self.slots))
        for r in range(self.rows):
            d_r = big[(s + r) % self.period, s % self.rows]
            out[r] = np.roll(d_r, (r // self.n1) * self.n1)  # out[t] = D_r[t - g n1]
        return out

    def bias_slots(self, c_k: np.ndarray) -> np.ndarray:
        """[S] with c[j mod K] wherever j = s mod R < B K."""
        c = np.zeros(self.rows)
        c[: self.batch * self.k] = np.tile(c_k, self.batch)
        return np.tile(c, self.replicas)

    def simulate_slots(self, x: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        """Plaintext replay of the encrypted schedule (baby steps, giant Horner, fold) -> all [S]."""
        z = self.replicate(x)
        diag = self.diagonals(v_dk)
        babies = [np.roll(z, -b) for b in range(self.n1)]
        inner = [sum(diag[g * self.n1 + b] * babies[b] for b in range(self.n1)) for g in range(self.n2)]
        y = inner[-1]
        for g in range(self.n2 - 2, -1, -1):
            y = np.roll(y, -self.n1) + inner[g]
        for step in self.fold_steps:
            y = y + np.roll(y, -step)
        return y + self.bias_slots(c_k)

    def scores(self, slots_s: np.ndarray, n: "int | None" = None) -> np.ndarray:
        """[S] decoded slots -> [K] scores (B = 1, or the first query) or, with ``n``, [n, K]
        for the first n queries; each score the mean of its M replicas."""
        per = np.asarray(slots_s, np.float64).reshape(self.replicas, self.rows).mean(0)
        per = per[: self.batch * self.k].reshape(self.batch, self.k)
        return per[0] if n is None else per[:n]

    def simulate(self, x: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return self.scores(self.simulate_slots(x, v_dk, c_k), None if x.ndim == 1 else len(x))


def negacyclic(a_n: np.ndarray, b_n: np.ndarray) -> np.ndarray:
    """a(X) b(X) mod X^N + 1 for coefficient vectors [N] (float64 or object ints)."""
    n = len(a_n)
    full = np.convolve(a_n, b_n)
    out = full[:n].copy()
    out[: len(full) - n] -= full[n:]
    return out


@dataclasses.dataclass(frozen=True)
class CoefficientLayout:
    """Rotation-free layout for coefficient encoding (backend ``seal-coeff``), B queries per
    ciphertext.

    Each query z_b [d] is cut into Q chunks of ``chunk`` = ceil(d / Q) entries; query
    polynomial q holds chunk q of every query side by side:
    z_q(X) = sum_b X^(b chunk) sum_i z_b[q chunk + i] X^i. The head's columns are grouped
    m = floor(N / (B chunk)) at a time into G = ceil(K / m) groups; for chunk q and group g the
    provider's plaintext is

        W_qg(X) = sum_{c < m} sum_{i < chunk} V[q chunk + i, g m + c] X^(c B chunk + chunk - 1 - i),

    and reply g is y_g = sum_q z_q W_qg (mod X^N + 1). Its coefficient at (c B + b) chunk +
    chunk - 1 is sum_{q, i} z_b[q chunk + i] V[q chunk + i, g m + c], query b's score g m + c:
    a product term X^(b' chunk + i') X^(c' B chunk + chunk - 1 - i) lands there iff
    (c' B + b' - c B - b) chunk = i - i', and |i - i'| < chunk forces i = i', c' = c, b' = b.
    The degree of z_q W_qg is below (m B + 1) chunk - 1 < N + chunk - 1, so the negacyclic
    wrap only reaches coefficients below chunk - 1, never a score. The other coefficients hold
    partial sums of V and are never sent (``wire.dump_sparse``).

    Cost per ciphertext: Q G plaintext multiplies, no rotation, no Galois key. Batching shares
    the query ciphertexts (B times fewer query bytes per query); replies and multiplies per
    query stay K chunk / N. ``make`` picks Q to minimise the bytes per message.

    Attributes:
      d, k, n: query dimension, scores, ring dimension N.
      chunk: entries of each query per query polynomial.
      cols: m, columns of V per reply polynomial.
      batch: B, queries per message.
    """

    d: int
    k: int
    n: int
    chunk: int
    cols: int
    batch: int = 1

    @classmethod
    def make(cls, d: int, k: int, n: int, query_bytes: int = 1, reply_bytes: int = 1,
             batch: int = 1) -> "CoefficientLayout":
        """The layout with the fewest bytes per message (then the fewest multiplies).

        Args:
          query_bytes, reply_bytes: bytes of one query and one reply polynomial.
          batch: B queries per message (B chunk <= N).
        """
        if min(d, k, n) < 1:
            raise ValueError(f"d, K and N must be positive, got d={d}, K={k}, N={n}")
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or not 1 <= batch <= n:
            raise ValueError(f"batch must be an int in [1, N={n}], got {batch!r}")
        best = None
        for q in range(-(-d * batch // n), d + 1):
            chunk = -(-d // q)
            if -(-d // chunk) != q or chunk * batch > n:
                continue  # same chunk as a smaller q, or B chunks do not fit the ring
            cols = n // (chunk * batch)
            g = -(-k // cols)
            key = (q * query_bytes + g * reply_bytes, q * g)
            if best is None or key < best[0]:
                best = (key, chunk, cols)
            if cols >= k:
                break  # more chunks only add query bytes
        if best is None:
            raise ValueError(f"batch={batch} queries do not fit N={n} coefficients")
        return cls(d, k, n, best[1], best[2], int(batch))

    @property
    def queries(self) -> int:
        """Q, query polynomials (ciphertexts) per message."""
        return -(-self.d // self.chunk)

    @property
    def replies(self) -> int:
        """G, reply polynomials (ciphertexts) per message."""
        return -(-self.k // self.cols)

    @property
    def multiplies(self) -> int:
        return self.queries * self.replies

    def group_cols(self, g: int) -> int:
        """Columns of V in reply g (m, fewer in the last group)."""
        return min(self.cols, self.k - g * self.cols)

    def positions(self, g: int) -> np.ndarray:
        """Coefficient positions of reply g's scores, ordered (column c, query b)."""
        cb = np.arange(self.group_cols(g) * self.batch)  # c B + b
        return cb * self.chunk + self.chunk - 1

    def query_coeffs(self, x: np.ndarray) -> np.ndarray:
        """[d] or [n <= B, d] queries -> [Q, N] coefficients of the query polynomials (unscaled)."""
        x = np.asarray(x, np.float64)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.d or not 1 <= x.shape[0] <= self.batch:
            raise ValueError(f"queries must be [d={self.d}] or [n <= {self.batch}, {self.d}], got {x.shape}")
        pad = np.zeros((self.batch, self.queries * self.chunk))
        pad[: len(x), : self.d] = x
        out = np.zeros((self.queries, self.n))
        out[:, : self.batch * self.chunk] = (pad.reshape(self.batch, self.queries, self.chunk)
                                             .transpose(1, 0, 2).reshape(self.queries, -1))
        return out

    def head_coeffs(self, v_dk: np.ndarray) -> np.ndarray:
        """[Q, G, N] coefficients of the plaintexts W_qg (unscaled)."""
        v = np.zeros((self.queries * self.chunk, self.replies * self.cols))
        v[: self.d, : self.k] = np.asarray(v_dk, np.float64)
        out = np.zeros((self.queries, self.replies, self.n))
        rev = np.arange(self.chunk)[::-1]  # row i of a chunk goes to offset chunk - 1 - i
        for q in range(self.queries):
            rows = v[q * self.chunk : (q + 1) * self.chunk]
            for g in range(self.replies):
                for c in range(self.cols):
                    out[q, g, c * self.batch * self.chunk + rev] = rows[:, g * self.cols + c]
        return out

    def scores(self, coeffs: "np.ndarray | list", n: "int | None" = None) -> np.ndarray:
        """Reply values -> [K] scores of the first query or, with ``n``, [n, K].

        Args:
          coeffs: [G, N] whole reply polynomials, or per reply g its values at ``positions(g)``.
        """
        per = []
        for g in range(self.replies):
            row = np.asarray(coeffs[g])
            vals = row[self.positions(g)] if row.shape[-1] == self.n and len(row) != len(self.positions(g)) \
                else row[: len(self.positions(g))]
            per.append(vals.reshape(self.group_cols(g), self.batch).T)  # [B, cols_g]
        out = np.concatenate(per, axis=1)  # [B, K]
        return out[0] if n is None else out[:n]

    def simulate_coeffs(self, x: np.ndarray, v_dk: np.ndarray) -> np.ndarray:
        """Plaintext replay: [G, N] coefficients of every reply polynomial (bias excluded)."""
        z, w = self.query_coeffs(x), self.head_coeffs(v_dk)
        return np.stack([sum(negacyclic(z[q], w[q, g]) for q in range(self.queries))
                         for g in range(self.replies)])

    def bias_values(self, c_k: np.ndarray) -> "list[np.ndarray]":
        """Per reply g, the bias at its positions (c B + b -> c[g m + c])."""
        c = np.asarray(c_k)
        return [np.repeat(c[g * self.cols : g * self.cols + self.group_cols(g)], self.batch)
                for g in range(self.replies)]

    def simulate(self, x: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        out = self.scores(self.simulate_coeffs(x, v_dk), None if x.ndim == 1 else len(x))
        return out + np.asarray(c_k, np.float64)

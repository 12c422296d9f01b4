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
    """Full-ring layout: every slot holds a score (or zero), none a partial sum.

    Layout (S slots, d' = next power of two >= d, R = next power of two >= K, C = S / d'):

    * the client tiles z (zero-padded to d') C times, as in ``PackedLayout``;
    * slot s computes row k = s mod R of V^T: diagonals D_r[s] = V[(s + r) mod d', s mod R]
      for r < R, evaluated as products rotated back, Horner style:
      y = P_0 + rot(P_1 + rot(P_2 + ..., 1), 1) with P_r = rot(D_r, -r) * z, i.e.
      y = sum_r rot(P_r, r) = sum_r D_r * rot(z, r): R - 1 rotations by one step, all on
      products (before the rescale, so their key-switching noise is divided by the rescale
      prime) and none on the fresh input;
    * fold: y += rot(y, R 2^m) for m < log2(d' / R). z and every D_r are d'-periodic in s, so
      y is too, and a sum of y over the d' consecutive positions s .. s + d' - 1 is a sum over
      one whole period whatever s is: y[s] = score(s mod R) for s mod R < K, 0 otherwise, in
      every slot (no window is partial, so copies never mix).

    No slot holds a partial sum over a column window of V, so the reply needs no slot mask
    (a mask multiply's encoding error times those partial sums dominated the evaluation error);
    each score is replicated M = S / R times and the client averages the replicas, which
    divides the reply's independent per-slot noise (flooding included) by sqrt(M).

    Cost: R plaintext multiplies, (R - 1) + log2(d' / R) rotations, one rescale. d=768, K=16,
    S=4096: 16 multiplies, 15 + 6 = 21 rotations, Galois steps {0, 1, 16, 32, ..., 512}.

    Attributes:
      d, k, slots, d_pad, copies: as in ``PackedLayout``.
      rows: R.
    """

    d: int
    k: int
    slots: int
    d_pad: int
    copies: int
    rows: int

    @classmethod
    def make(cls, d: int, k: int, slots: int) -> "ReplicatedLayout":
        d_pad = _next_pow2(d)
        if d_pad > slots:
            raise ValueError(f"d={d} (padded {d_pad}) does not fit {slots} slots; use a larger ring")
        rows = _next_pow2(k)
        if rows > d_pad:
            raise ValueError(f"K={k} scores exceed d'={d_pad}: use K <= d'")
        return cls(d, k, slots, d_pad, slots // d_pad, rows)

    @property
    def replicas(self) -> int:
        """M = S / R copies of every score in the reply."""
        return self.slots // self.rows

    @property
    def horner_steps(self) -> list[int]:
        return [1] if self.rows > 1 else []

    @property
    def fold_steps(self) -> list[int]:
        """R, 2R, 4R, ... < d'."""
        return doubling_steps(self.rows, self.d_pad)

    @property
    def rotation_steps(self) -> list[int]:
        """Galois steps: 0 (conjugation, circuit privacy), 1 (Horner) and the fold."""
        return sorted({0} | set(self.horner_steps) | set(self.fold_steps))

    @property
    def rotations(self) -> int:
        """Rotations per query, conjugation excluded."""
        return self.rows - 1 + len(self.fold_steps)

    def replicate(self, x_d: np.ndarray) -> np.ndarray:
        z = np.zeros(self.d_pad)
        z[: self.d] = x_d
        return np.tile(z, self.copies)

    def diagonals(self, v_dk: np.ndarray) -> np.ndarray:
        """[R, S] pre-rotated diagonals rot(D_r, -r) (the plaintexts of the products P_r)."""
        s = np.arange(self.slots)
        v_pad = np.zeros((self.d_pad, self.rows))
        v_pad[: self.d, : self.k] = v_dk
        out = np.empty((self.rows, self.slots))
        for r in range(self.rows):
            d_r = v_pad[(s + r) % self.d_pad, s % self.rows]
            out[r] = np.roll(d_r, r)  # out[t] = D_r[t - r]
        return out

    def bias_slots(self, c_k: np.ndarray) -> np.ndarray:
        """[S] with c[s mod R] wherever s mod R < K."""
        c = np.zeros(self.rows)
        c[: self.k] = c_k
        return np.tile(c, self.replicas)

    def simulate_slots(self, x_d: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        """Plaintext replay of the encrypted schedule (Horner, then fold) -> all [S] slots."""
        z = self.replicate(x_d)
        prods = self.diagonals(v_dk) * z
        y = prods[-1]
        for r in range(self.rows - 2, -1, -1):
            y = np.roll(y, -1) + prods[r]
        for step in self.fold_steps:
            y = y + np.roll(y, -step)
        return y + self.bias_slots(c_k)

    def scores(self, slots_s: np.ndarray) -> np.ndarray:
        """[S] decoded slots -> [K] scores, each the mean of its M replicas."""
        return np.asarray(slots_s, np.float64).reshape(self.replicas, self.rows).mean(0)[: self.k]

    def simulate(self, x_d: np.ndarray, v_dk: np.ndarray, c_k: np.ndarray) -> np.ndarray:
        return self.scores(self.simulate_slots(x_d, v_dk, c_k))

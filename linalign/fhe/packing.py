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
        out, s = [], self.rows_per_copy
        while s < self.d_pad:
            out.append(s)
            s *= 2
        return out

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

"""CKKS parameter sets and their check against the HomomorphicEncryption.org standard.

HELIX needs multiplicative depth 1: one ciphertext x plaintext multiply followed by one
rescale. A depth-1 CKKS modulus chain is ``[q_0 .. q_{m-1}, p_1, special]``:

* ``p_1`` (``scale_bits`` wide) is dropped by the rescale after the plaintext multiply, so the
  result returns to scale ~2^scale_bits;
* ``q_0 ... q_{m-1}`` must hold the result: their product over 2^scale_bits bounds |value|
  (headroom bits), including the masks and flooding noise that circuit privacy adds
  (``linalign.fhe.privacy``);
* ``special`` is the key-switching prime (rotations); SEAL wants it at least as wide as any data
  prime. Rotations done after the rescale add key-switching noise ~ q_i / special per digit,
  so data primes well below the special prime keep the evaluation error small, which is what
  lets noise flooding keep useful precision.

The security check uses the 128-bit classical table of the HomomorphicEncryption.org standard
(Albrecht et al., "Homomorphic Encryption Standard", 2018, Table 1, ternary secret), which is
also what SEAL enforces with ``sec_level_type.tc128``: the total bit count of the coefficient
modulus, special prime included, may not exceed the bound for the ring dimension.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

# log2(q) upper bounds for 128-bit classical security, ternary secrets (HE standard, Table 1).
HE_STANDARD_MAX_LOGQ_128: Mapping[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


class InsecureParamsError(ValueError):
    """A parameter set exceeds the 128-bit bound or is otherwise unusable."""


def _max_log_q(n: int) -> int:
    """The table's log2(q) bound for ring dimension n; refuses a ring the table does not list."""
    if n not in HE_STANDARD_MAX_LOGQ_128:
        raise InsecureParamsError(
            f"poly_modulus_degree {n} is not in the 128-bit table {sorted(HE_STANDARD_MAX_LOGQ_128)}")
    return HE_STANDARD_MAX_LOGQ_128[n]


def _untrusted_int(v, what: str) -> int:
    """A field of peer-supplied parameters: an int in [1, 2^20] (a JSON float such as 1e999, a
    bool or a huge int is refused here instead of overflowing later)."""
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 20:
        raise InsecureParamsError(f"{what}={v!r} is not an int in [1, 2^20]")
    return v


@dataclasses.dataclass(frozen=True)
class CKKSParams:
    """One CKKS parameter set.

    Attributes:
      poly_modulus_degree: ring dimension N (power of two); N/2 complex slots.
      coeff_mod_bit_sizes: bit sizes of the RNS primes, first data prime first, special
        (key-switching) prime last.
      scale_bits: log2 of the encoding scale; equal to the middle prime(s) so that a rescale
        brings a product back to the same scale.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def log_q(self) -> int:
        """Total coefficient-modulus bits (what the security table bounds)."""
        return int(sum(self.coeff_mod_bit_sizes))

    @property
    def depth(self) -> int:
        """Number of rescales available (primes between the first and the special one)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest |value| that survives after the one rescale HELIX does."""
        return int(sum(self.coeff_mod_bit_sizes[:-2])) - self.scale_bits

    def check(self) -> "CKKSParams":
        """Raises InsecureParamsError unless the set is 128-bit secure and depth >= 1.

        Returns:
          self, so presets can be checked at definition.
        """
        n = self.poly_modulus_degree
        bound = _max_log_q(n)
        if self.log_q > bound:
            raise InsecureParamsError(
                f"coeff modulus {self.coeff_mod_bit_sizes} totals {self.log_q} bits > {bound} "
                f"allowed at N={n} for 128-bit security"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise InsecureParamsError(
                f"need >= 3 primes for depth 1 plus key switching, got {self.coeff_mod_bit_sizes}"
            )
        if any(b > 60 or b < 20 for b in self.coeff_mod_bit_sizes):
            raise InsecureParamsError(f"prime sizes must be in [20, 60]: {self.coeff_mod_bit_sizes}")
        if self.coeff_mod_bit_sizes[-2] != self.scale_bits:
            raise InsecureParamsError(
                f"middle primes {self.coeff_mod_bit_sizes[1:-1]} must equal scale_bits "
                f"{self.scale_bits} so a rescale restores the scale"
            )
        if self.headroom_bits < 4:
            raise InsecureParamsError(
                f"primes {self.coeff_mod_bit_sizes[:-2]} leave only {self.headroom_bits} "
                f"bits above the scale; results would overflow"
            )
        if self.coeff_mod_bit_sizes[-1] < max(self.coeff_mod_bit_sizes[:-1]):
            raise InsecureParamsError("special prime must be the widest prime")
        return self

    def to_dict(self) -> dict:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "CKKSParams":
        """Parses untrusted parameters: ints only (a JSON float such as 1e999 is refused here
        instead of raising OverflowError in ``int()``), at most 16 primes."""
        if not isinstance(d, Mapping):
            raise InsecureParamsError(f"CKKS parameters must be an object, got {type(d).__name__}")
        unknown = set(d) - {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits"}
        if unknown:
            raise InsecureParamsError(f"unknown CKKS parameter fields {sorted(unknown)}")

        def as_int(v, what):
            return _untrusted_int(v, f"CKKS parameter {what}")

        try:
            primes = d["coeff_mod_bit_sizes"]
            if not isinstance(primes, (list, tuple)) or not 1 <= len(primes) <= 16:
                raise InsecureParamsError(f"coeff_mod_bit_sizes must be a list of 1..16 ints, got {primes!r}")
            return cls(
                as_int(d["poly_modulus_degree"], "poly_modulus_degree"),
                tuple(as_int(b, "coeff_mod_bit_sizes") for b in primes),
                as_int(d["scale_bits"], "scale_bits"),
            ).check()
        except KeyError as e:
            raise InsecureParamsError(f"CKKS parameters lack {e}") from None


# Inference (ciphertext x plaintext, then one rescale, reply at the last level):
# [q0, p1, special]. The query is at [q0, p1] with scale 2^50; the product (scale 2^100) is
# rotated, folded and conjugated before the rescale, so all key-switching noise is divided by
# p1; the rescale leaves the reply at [q0] alone (the smallest reply: one prime) with scale
# 2^50 and 60 - 50 = 10 bits of headroom. 170 of 218 bits at N=8192. Default.
N8192_D1 = CKKSParams(8192, (60, 50, 60), 50).check()
# The previous inference chain, kept for before/after benchmarks (backend ``seal-v1``): query
# at three 50-bit primes, reply at two; the mask multiply of its sanitiser takes 40 bits of
# the 50-bit headroom. 210 of 218 bits. Also the fit's chain (below).
N8192_V1 = CKKSParams(8192, (50, 50, 50, 60), 50).check()
# N=4096, 109 of 109 bits: scale 2^31, 8 bits headroom (|score| < 256). Too little precision
# for flooding at lambda_s = 12 (docs/notes/helix.md): the HELIX server refuses it; library
# benchmarks (unsanitised replies) only.
N4096_D1 = CKKSParams(4096, (39, 31, 39), 31).check()
# N=16384 for d beyond 4096 slots (8192 slots).
N16384_D1 = CKKSParams(16384, (60, 50, 60), 50).check()
N16384_V1 = CKKSParams(16384, (50, 50, 50, 60), 50).check()

PRESETS: Mapping[str, CKKSParams] = {
    "n8192": N8192_D1,
    "n8192-v1": N8192_V1,
    "n4096": N4096_D1,
    "n16384": N16384_D1,
    "n16384-v1": N16384_V1,
}
DEFAULT = N8192_D1

# The fit (``linalign.fhe.fitting``) rotates the client's fresh columns (baby steps) at the top
# level: its digits must stay well below the 60-bit special prime, so it keeps three 50-bit
# primes whatever the inference chain. A preset name names a ring size for both phases.
FIT_PRESETS: Mapping[str, CKKSParams] = {
    "n8192": N8192_V1,
    "n8192-v1": N8192_V1,
    "n16384": N16384_V1,
    "n16384-v1": N16384_V1,
}
FIT_DEFAULT = N8192_V1


def _resolve(name_or_params, table: Mapping, default, what: str):
    """``default`` for None, a parameter object of the default's class checked, else a preset by name."""
    if name_or_params is None:
        return default
    if isinstance(name_or_params, type(default)):
        return name_or_params.check()
    if name_or_params not in table:
        raise InsecureParamsError(f"unknown {what} {name_or_params!r}; known {sorted(table)}")
    return table[name_or_params]


def get_fit_params(name_or_params: "str | CKKSParams | None") -> CKKSParams:
    """The fit's chain for a preset name (``FIT_PRESETS``), or a CKKSParams passed through."""
    return _resolve(name_or_params, FIT_PRESETS, FIT_DEFAULT, "fit preset")


def get_params(name_or_params: "str | CKKSParams | None") -> CKKSParams:
    """Resolves a preset name (or passes a CKKSParams through) and checks it."""
    return _resolve(name_or_params, PRESETS, DEFAULT, "CKKS preset")


class _IntFields:
    """to_dict / from_dict for a frozen dataclass of int fields with a ``check()``: parses
    untrusted parameters (ints only, exactly the known fields), then checks them."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping):
        if not isinstance(d, Mapping):
            raise InsecureParamsError(f"parameters must be an object, got {type(d).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        if set(d) != set(fields):
            raise InsecureParamsError(f"parameters must have exactly the fields {fields}, got {sorted(d)}")
        return cls(**{k: _untrusted_int(d[k], f"parameter {k}") for k in fields}).check()


@dataclasses.dataclass(frozen=True)
class CoeffParams(_IntFields):
    """A coefficient-encoding parameter set (backend ``seal-coeff``, ``linalign.fhe.coeff_backend``).

    The query's entries are the coefficients of a polynomial at scale 2^query_scale_bits, the
    head's at 2^head_scale_bits; one ciphertext x plaintext product (no rescale, no rotation,
    hence no key switching and no special prime) leaves every score in one coefficient at
    scale 2^(query_scale_bits + head_scale_bits), under one prime of ``prime_bits``.

    Attributes:
      poly_modulus_degree: ring dimension N.
      prime_bits: the one RNS prime's width (SEAL allows at most 60).
      query_scale_bits, head_scale_bits: log2 of the two encoding scales.
    """

    poly_modulus_degree: int
    prime_bits: int
    query_scale_bits: int
    head_scale_bits: int

    @property
    def coeff_mod_bit_sizes(self) -> "tuple[int, ...]":
        return (self.prime_bits,)

    @property
    def log_q(self) -> int:
        return self.prime_bits

    @property
    def product_scale_bits(self) -> int:
        return self.query_scale_bits + self.head_scale_bits

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest |score| a reply coefficient holds (q / 2 over the product scale)."""
        return self.prime_bits - 1 - self.product_scale_bits

    def check(self) -> "CoeffParams":
        n = self.poly_modulus_degree
        bound = _max_log_q(n)
        if self.prime_bits > bound:
            raise InsecureParamsError(
                f"a {self.prime_bits}-bit modulus exceeds the {bound} bits allowed at N={n} for 128-bit security")
        if not 20 <= self.prime_bits <= 60:
            raise InsecureParamsError(f"prime_bits must be in [20, 60], got {self.prime_bits}")
        if min(self.query_scale_bits, self.head_scale_bits) < 8:
            raise InsecureParamsError(
                f"scales 2^{self.query_scale_bits} (query) and 2^{self.head_scale_bits} (head) are below 2^8")
        if self.headroom_bits < 4:
            raise InsecureParamsError(
                f"a {self.prime_bits}-bit prime leaves {self.headroom_bits} bits above the product scale "
                f"2^{self.product_scale_bits}; scores would wrap")
        return self


# Coefficient encoding at N = 4096: one 60-bit prime (of the 109 bits the table allows), the
# query at 2^36, the head at 2^14 (relative rounding 2^-15 per entry), scores at 2^50 with 9
# bits of headroom (|score| < 512). The fresh-encryption noise times the head is ~1e-10 of a
# score, so a flood at lambda_s = 12 stays ~1e-5 (docs/notes/helix.md). Any d: the query is
# cut into chunks of at most N coefficients (``packing.CoefficientLayout``).
C4096 = CoeffParams(4096, 60, 36, 14).check()
COEFF_PRESETS: Mapping[str, CoeffParams] = {"c4096": C4096}
COEFF_DEFAULT = C4096


def get_coeff_params(name_or_params: "str | CoeffParams | None") -> CoeffParams:
    """A coefficient-encoding preset by name (``COEFF_PRESETS``), or a CoeffParams checked."""
    return _resolve(name_or_params, COEFF_PRESETS, COEFF_DEFAULT, "coefficient preset")


@dataclasses.dataclass(frozen=True)
class CoeffFitParams(_IntFields):
    """Parameters of the coefficient-encoded fit (``linalign.fhe.coeff_fit``).

    The provider evaluates every ciphertext x plaintext product itself, in NTT form, as float64
    matrix products over ``data_primes`` small RNS primes: a centred ciphertext residue is
    below 2^(prime_bits - 1), a plaintext residue below 2^prime_bits, and a sum of
    ``max_terms`` such products stays below 2^53, so BLAS computes it exactly and one reduction
    per result suffices. The chain is ``data_primes`` primes of ``prime_bits`` plus SEAL's special prime
    (same width; only the keys use it), all counted against the 128-bit table.

    Attributes:
      poly_modulus_degree: N.
      prime_bits: width of every prime (SEAL picks the largest NTT primes of that width).
      data_primes: primes the ciphertexts live on.
      query_scale_bits: the client's columns (unit norm) are encoded at 2^query_scale_bits.
      z_scale_bits: the provider's embeddings (column norm <= 64) at 2^z_scale_bits.
    """

    poly_modulus_degree: int
    prime_bits: int
    data_primes: int
    query_scale_bits: int
    z_scale_bits: int

    @property
    def coeff_mod_bit_sizes(self) -> "tuple[int, ...]":
        return (self.prime_bits,) * (self.data_primes + 1)

    @property
    def log_q(self) -> int:
        return self.prime_bits * (self.data_primes + 1)

    @property
    def product_scale_bits(self) -> int:
        return self.query_scale_bits + self.z_scale_bits

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest |value| the data modulus holds at the product scale: SEAL's primes
        of ``prime_bits`` lie just below 2^prime_bits (above 2^(prime_bits - 0.1) at N=4096), so
        Q / 2 > 2^(data_primes prime_bits - 2) with a bit to spare."""
        return self.data_primes * self.prime_bits - 2 - self.product_scale_bits

    @property
    def max_terms(self) -> int:
        """Products one exact float64 sum may add: a centred residue (< 2^(prime_bits - 1)) times
        a residue in [0, q) (< 2^prime_bits), 2^(53 - 2 prime_bits + 1) of them, less two for
        the re-randomisation term (< q^2) added to the same sum."""
        return max(0, (1 << max(0, 53 - 2 * self.prime_bits + 1)) - 2)

    def check(self) -> "CoeffFitParams":
        n = self.poly_modulus_degree
        bound = _max_log_q(n)
        if self.log_q > bound:
            raise InsecureParamsError(
                f"{self.data_primes + 1} primes of {self.prime_bits} bits ({self.log_q}) exceed the {bound} bits "
                f"allowed at N={n} for 128-bit security")
        if not 18 <= self.prime_bits <= 25:
            raise InsecureParamsError(f"prime_bits must be in [18, 25] (exact float64 products), got {self.prime_bits}")
        if not 2 <= self.data_primes <= 3:
            raise InsecureParamsError(f"data_primes must be 2 or 3 (replies switch to the others, < 2^62), "
                                      f"got {self.data_primes}")
        if min(self.query_scale_bits, self.z_scale_bits) < 8:
            raise InsecureParamsError(
                f"scales 2^{self.query_scale_bits} (query) and 2^{self.z_scale_bits} (embeddings) are below 2^8")
        if self.headroom_bits < 7:
            raise InsecureParamsError(
                f"{self.data_primes} primes of {self.prime_bits} bits leave {self.headroom_bits} bits above the "
                f"product scale 2^{self.product_scale_bits}; values up to 64 plus the flood need 7")
        return self


# The fit at N = 4096: three 23-bit data primes and a 23-bit special prime (92 of 109 bits).
# Columns at 2^46, embeddings at 2^14 (relative rounding 2^-15 of an entry of norm-64
# columns), products at 2^60 under a 69-bit modulus: 7 bits of headroom for |value| <= 64 and
# the flood. Exact float64 sums of up to 254 products (T <= 254 row chunks).
F4096 = CoeffFitParams(4096, 23, 3, 46, 14).check()
COEFF_FIT_PRESETS: Mapping[str, CoeffFitParams] = {"f4096": F4096}
COEFF_FIT_DEFAULT = F4096


def get_coeff_fit_params(name_or_params: "str | CoeffFitParams | None") -> CoeffFitParams:
    """A coefficient-fit preset by name (``COEFF_FIT_PRESETS``), or a CoeffFitParams checked."""
    return _resolve(name_or_params, COEFF_FIT_PRESETS, COEFF_FIT_DEFAULT, "coefficient fit preset")

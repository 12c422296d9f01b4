"""Encrypted fitting statistics with coefficient encoding (backend ``seal-coeff-fit``).

Same statistics as ``linalign.fhe.fitting`` (the client learns X^T Z_A for its columns
X = [Z_B - mean_b, 1/n], i.e. C_ba and mean_a; see that module), computed an order of magnitude
faster. The slot fit spends ~150 s at n = 4096, 384 -> 768 in 385 x (1024 plaintext multiplies
+ 65 rotations) through SEAL's Python binding. Here:

* **Layout** (``packing.CoefficientLayout`` with the roles of the inference backend
  ``seal-coeff``: d = n rows, K = d_a, batch B = h_b client columns). Query polynomial (j, t)
  holds rows t n_w .. of the h_b columns of group j side by side; the provider's plaintext
  W_tg holds h_a columns of Z_A reversed; in sum_t x_jt W_tg every coefficient
  (c h_b + b) n_w + n_w - 1 is one entry (column j h_b + b, Z_A column g h_a + c) of X^T Z_A,
  h_a h_b n_w <= N. No rotation, no Galois key, no rescale.
* **Evaluation as matrix products.** In NTT form a plaintext multiply is pointwise, so for every
  NTT coordinate and prime the whole product is Y[s, g] = sum_t C[s, t] W[t, g] (s: c0 and c1
  of every ciphertext of the message). The primes are 23 bits (``params.CoeffFitParams``): a
  centred residue times a plaintext residue, summed over T <= ``max_terms`` (254) row chunks
  plus the re-randomisation term, stays below 2^53, so float64 BLAS computes each sum exactly
  and one reduction per result suffices. SEAL supplies
  the keys, the client's encryption and every NTT (``wire.PolyTransform``, 15 polynomials per
  call); the provider's arithmetic is numpy.
* **Replies** (circuit privacy as in ``seal-coeff``): every reply polynomial is re-randomised
  with a fresh encryption of zero under the client's public key (u pk in NTT form with u
  ternary from the OS's CSPRNG, e1 added to c1 in coefficient form; c0 needs no e0 because its
  sent coefficients are flooded and the others never leave), the sent coefficients are
  flooded with integer Gaussian noise of std 2^lambda_s sqrt(h_b d_a) B (B measured on the
  provider's own keys, ``calibrate``), then, as post-processing, the last prime is dropped
  (modulus switch) and c1 rounded; c0 travels only at the score positions of the columns the
  client declared (``wire.dump_sparse``), the partial sums elsewhere never leave.

Leakage: every sent coefficient is one linear functional of Z_A (plus flood); the provider
sends exactly (d_b + 1) d_a of them per fit (the padding columns of the last group are not
sent), whatever the client put into its polynomials, and answers each group once.

Wire format (``base.pack_blobs``):
  context: meta {backend, n, d_b, d_a, params, chunk, batch, cols}, blobs [public key]
  message: meta {kind: "fit-groups", first, count}, blobs [count T seeded ciphertexts]
  reply:   meta {kind: "fit-reply", first, count}, blobs [count ``wire.dump_sparse``]
"""

from __future__ import annotations

import math
import os
import secrets
from typing import Iterator

import numpy as np

from linalign.fhe import base, wire
from linalign.fhe.fitting import FitClientBase, FitProtocolError, provider_rows
from linalign.fhe.packing import CoefficientLayout
from linalign.fhe.params import CoeffFitParams, get_coeff_fit_params

NAME = "seal-coeff-fit"
MAX_ROWS = 1 << 20
MAX_DIM = 1 << 13
MAX_PLAINTEXTS = 1 << 14  # T G provider plaintexts (1.6 GB of float64 at N = 4096, 3 primes)
# The reply's c1 is rounded to a multiple of 2^drop_bits after the flood, with drop_bits the
# largest that keeps the rounding error (std 0.29 2^t sqrt(2N/3), ~15 2^t at N = 4096) below a
# quarter of the flood's std: the provider announces it.
ROUNDING_MARGIN = 4.0
MESSAGE_TARGET_BYTES = 8 << 20  # the client packs groups into messages of about this size (measured:
# 3 groups of 2.4 MB per message beat 1, 6 or 12 at n = 4096, 384 -> 768)
# Costs per unit (ms, measured at n = 4096, 384 -> 768 on a 2-core Xeon), used only to pick the
# layout: a reply polynomial (re-randomise, NTTs, flood, switch, pack, decrypt), a provider
# plaintext (its share of the table product and memory), a query polynomial (encrypt, parse).
COST_REPLY, COST_PLAIN, COST_QUERY = 1.3, 0.25, 2.2


def choose_layout(n: int, h: int, d_a: int, params: CoeffFitParams) -> CoefficientLayout:
    """The cheapest layout (by the unit costs above) with T <= params.max_terms row chunks.

    Args:
      n: rows; h: client columns (d_b + 1); d_a: provider columns.
    """
    big = params.poly_modulus_degree
    best = None
    for h_a in (1, 2, 4, 8, 16, 32):
        if h_a > d_a:
            break
        for h_b in range(1, min(h, big) + 1):
            n_w = min(big // (h_b * h_a), n)
            if n_w < 1:
                break
            t = -(-n // n_w)
            if t > params.max_terms:
                continue
            j, g = -(-h // h_b), -(-d_a // h_a)
            if t * g > MAX_PLAINTEXTS:
                continue
            cost = COST_REPLY * j * g + COST_PLAIN * t * g + COST_QUERY * j * t
            if best is None or cost < best[0]:
                best = (cost, n_w, h_a, h_b)
    if best is None:
        raise base.FHEError(f"no layout for n={n}, {h} columns, d_a={d_a} at N={big}")
    _, n_w, h_a, h_b = best
    return CoefficientLayout(d=n, k=d_a, n=big, chunk=n_w, cols=h_a, batch=h_b)


def _context(params: CoeffFitParams):
    from linalign.fhe.seal_backend import make_context

    return make_context(params)


_BLOCK = 1 << 16  # elements per step of the in-place helpers (cache-sized: fresh temporaries
# of hundreds of MB cost more in page faults than the arithmetic)


def _fmod_inplace(a: np.ndarray, q: int) -> np.ndarray:
    """a mod q in place for a float64 array of integers |a| < 2^53 (exact), result in [0, q)."""
    flat = a.reshape(-1)
    inv, qf = 1.0 / q, float(q)
    t, m = np.empty(min(_BLOCK, flat.size)), np.empty(min(_BLOCK, flat.size), bool)
    for s in range(0, flat.size, _BLOCK):
        x = flat[s : s + _BLOCK]
        tt, mm = t[: x.size], m[: x.size]
        np.multiply(x, inv, out=tt)
        np.floor(tt, out=tt)
        tt *= qf
        x -= tt  # within one q of [0, q): the float quotient may be off by one
        np.less(x, 0.0, out=mm)
        x += mm * qf
        np.greater_equal(x, qf, out=mm)
        x -= mm * qf
    return a


def _cmod_inplace(a: np.ndarray, q: int) -> np.ndarray:
    """a mod q, centred, in place, for a float64 array of integers |a| < 2^53: a - rint(a/q) q.
    Exact; the float quotient may round to the other neighbour only when a/q is within ~2^-24
    of a half-integer, so |result| <= q/2 + 1. Four passes against ``_fmod_inplace``'s eight."""
    flat = a.reshape(-1)
    inv, qf = 1.0 / q, float(q)
    t = np.empty(min(_BLOCK, flat.size))
    for s in range(0, flat.size, _BLOCK):
        x = flat[s : s + _BLOCK]
        tt = t[: x.size]
        np.multiply(x, inv, out=tt)
        np.rint(tt, out=tt)
        tt *= qf
        x -= tt
    return a


def _centre_inplace(a: np.ndarray, q: int) -> np.ndarray:
    """Residues in [0, q) (float64) -> (-q/2, q/2], in place."""
    flat = a.reshape(-1)
    m = np.empty(min(_BLOCK, flat.size), bool)
    for s in range(0, flat.size, _BLOCK):
        x = flat[s : s + _BLOCK]
        np.greater(x, q // 2, out=m[: x.size])
        x -= m[: x.size] * float(q)
    return a


def _transpose_into(dst: np.ndarray, src: np.ndarray, tile: int = 128) -> None:
    """dst[...] = src.T (with dtype conversion), tile by tile: a whole-array strided copy misses
    the cache on every element and is ~10x slower at these sizes."""
    n, m = src.shape
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            dst[j : j + tile, i : i + tile] = src[i : i + tile, j : j + tile].T


def _centred(res: np.ndarray, moduli: "list[int]", axis: int) -> np.ndarray:
    """uint64 residues -> float64 in (-q/2, q/2], the prime axis at ``axis``."""
    q = np.asarray(moduli, np.int64).reshape([-1 if i == axis else 1 for i in range(res.ndim)])
    r = res.astype(np.int64)
    return np.where(r > q // 2, r - q, r).astype(np.float64)


def _secure_ternary(count: int, n: int) -> np.ndarray:
    """[count, n] uniform ternary digits from the OS's CSPRNG, as uint8 in {0, 1, 2} standing for
    {-1, 0, 1} (bytes < 255, taken mod 3: exactly uniform)."""
    out = np.empty(count * n, np.uint8)
    have = 0
    while have < out.size:
        need = out.size - have
        b = np.frombuffer(os.urandom(need + need // 128 + 64), np.uint8)
        b = b[b < 255][:need]
        np.remainder(b, 3, out=out[have : have + b.size])
        have += b.size
    return out.reshape(count, n)


def _ternary_residues(digits: np.ndarray, moduli: "list[int]", out: np.ndarray) -> np.ndarray:
    """Ternary digits [m, N] (``_secure_ternary``: u + 1) -> u mod each prime, into out [m, primes, N]."""
    for p, q in enumerate(moduli):
        np.take(np.array([q - 1, 0, 1], np.uint64), digits, out=out[:, p])
    return out


_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], np.int8)
_POP_DIFF16 = np.array([bin(i & 0xFF).count("1") - bin(i >> 8).count("1") for i in range(1 << 16)], np.int8)


def _secure_noise(shape) -> np.ndarray:
    """Centred binomial noise (as Kyber samples it) from the OS's CSPRNG: popcount of 24 random
    bits minus popcount of 24 more, std sqrt(12) = 3.46 (SEAL's Gaussian has 3.2), |e| <= 24.
    The 48 bits are three 16-bit words a, b, c: pop(a) - pop(b) + pop(c & 255) - pop(c >> 8)."""
    size = int(np.prod(shape))
    w = np.frombuffer(os.urandom(6 * size), "<u2").reshape(size, 3)
    e = _POP16[w[:, 0]] - _POP16[w[:, 1]] + _POP_DIFF16[w[:, 2]]  # int8: |e| <= 24
    return e.astype(np.int64).reshape(shape)


class _Geometry:
    """What both sides derive from (n, d_b, d_a, params, layout): groups, sent positions,
    scales, the modulus after the switch."""

    def __init__(self, n: int, d_b: int, d_a: int, params: CoeffFitParams, layout: CoefficientLayout, moduli):
        self.n, self.d_b, self.d_a, self.params, self.layout = n, d_b, d_a, params, layout
        self.h = d_b + 1
        self.groups = -(-self.h // layout.batch)
        self.moduli = [int(q) for q in moduli]  # data primes
        self.q_kept = math.prod(self.moduli[:-1])  # after dropping the last prime
        if self.q_kept >= 1 << 62:
            raise base.FHEError("the switched modulus must stay below 2^62")
        self.scale = 2.0**params.product_scale_bits  # of the products, over all data primes
        self.switched_scale = self.scale / self.moduli[-1]
        self.max_drop_bits = self.q_kept.bit_length() - 9

    def group_columns(self, j: int) -> int:
        """Client columns in group j (the last may have fewer)."""
        return min(self.layout.batch, self.h - j * self.layout.batch)

    def sent(self, j: int, g: int) -> np.ndarray:
        """Indices c B + b (into the full position list) of the coefficients sent for (j, g),
        ordered (c, b): Z_A column g h_a + c, client column j B + b."""
        lay = self.layout
        c = np.arange(lay.group_cols(g))[:, None]
        b = np.arange(self.group_columns(j))[None, :]
        return (c * lay.batch + b).ravel()

    def positions(self, idx: np.ndarray) -> np.ndarray:
        return idx * self.layout.chunk + self.layout.chunk - 1

    def counts(self, j: int) -> "list[int]":
        return [len(self.sent(j, g)) for g in range(self.layout.replies)]

    def query_poly_bytes(self) -> int:
        return wire._HDR.size + wire.SEED_BYTES + wire.packed_bytes(self.moduli, self.params.poly_modulus_degree)


class CoeffFitClient(FitClientBase):
    """Party B: keys, centring, encrypted column groups, decryption, stats.

    Each column of X is scaled to unit L2 norm before encryption (the scale stays here), so
    every reply value is bounded by the provider's announced column norm of Z_A.

    Args:
      z_nb: [n, d_b] the client's embeddings of the public set.
      d_a: the provider's embedding dimension.
      params: a ``COEFF_FIT_PRESETS`` name or CoeffFitParams (default f4096).
      groups_per_message: column groups per message (default: messages of ~8 MB).
    """

    name = NAME

    def __init__(self, z_nb: np.ndarray, d_a: int, params=None, groups_per_message: "int | None" = None,
                 *, _layout: "CoefficientLayout | None" = None):
        import seal

        self._init_rows(z_nb, d_a, MAX_ROWS)
        self.params = get_coeff_fit_params(params)
        self.layout = _layout or choose_layout(self.n, self.d_b + 1, self.d_a, self.params)
        self._ctx = _context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._sk = keygen.secret_key()
        public_key = keygen.create_public_key()
        self._codec = wire.CompactCodec(self._ctx, seal.Encryptor(self._ctx, self._sk).encrypt_symmetric)
        self._poly = wire.PolyTransform(self._codec)
        self._seeded = wire.SeededEncryptor(self._ctx, self._sk)
        moduli = wire.moduli_at(self._ctx, self._ctx.first_parms_id())
        self.geo = _Geometry(self.n, self.d_b, self.d_a, self.params, self.layout, moduli)
        level = len(moduli)
        s_ntt = np.stack([self._seeded._s[q] for q in moduli])
        s_all = _centred(self._poly.from_ntt(s_ntt, level), moduli, 0)
        if not (np.all(np.abs(s_all) <= 1) and np.all(s_all == s_all[0])):
            raise base.FHEError("secret key is not ternary")
        s = s_all[0].astype(np.int64)
        big = self.params.poly_modulus_degree
        i = np.arange(big)
        pos = self.geo.positions(np.arange(self.layout.cols * self.layout.batch))[:, None]
        # Row p: the signed secret coefficients meeting c1 at coefficient pos[p] of c1 s (negacyclic).
        self._rows = (np.where(i <= pos, 1, -1) * s[(pos - i) % big]).astype(np.float64)
        per_group = self.layout.queries * self.geo.query_poly_bytes()
        gpm = groups_per_message or max(1, MESSAGE_TARGET_BYTES // per_group)
        self.groups_per_message = int(min(max(1, gpm), self.geo.groups, base.MAX_BLOBS // self.layout.queries))
        self._bounds: "dict | None" = None
        self.drop_bits = 0
        lay = self.layout
        self._public = base.pack_blobs(
            {"backend": NAME, "n": self.n, "d_b": self.d_b, "d_a": self.d_a, "params": self.params.to_dict(),
             "chunk": lay.chunk, "batch": lay.batch, "cols": lay.cols},
            [public_key.to_string()])

    @property
    def num_messages(self) -> int:
        return -(-self.geo.groups // self.groups_per_message)

    def message_groups(self, i: int) -> range:
        first = i * self.groups_per_message
        return range(first, min(self.geo.groups, first + self.groups_per_message))

    def message_columns(self, i: int) -> range:
        """The columns of X (rows of X^T Z_A) that message i covers."""
        g = self.message_groups(i)
        return range(g.start * self.layout.batch, min(self.geo.h, g.stop * self.layout.batch))

    def set_provider_bounds(self, announced: dict) -> None:
        """The provider's announcement (``CoeffFitProvider.announce``)."""
        b = self._parse_bounds(announced)
        drop = announced.get("drop_bits") if isinstance(announced, dict) else None
        if not isinstance(drop, int) or isinstance(drop, bool) or not 0 <= drop <= self.geo.max_drop_bits:
            raise base.FHEError(f"provider's fit announcement: drop_bits={drop!r} is not an int in "
                                f"[0, {self.geo.max_drop_bits}]")
        self._bounds = b
        self.drop_bits = drop

    def _group_coeffs(self, j: int) -> np.ndarray:
        """[T, N] integer coefficients of group j's query polynomials."""
        cols = range(j * self.layout.batch, j * self.layout.batch + self.geo.group_columns(j))
        x = (self._x[:, cols] * self._col_scale[cols]).T  # [columns, n], unit rows
        return np.rint(self.layout.query_coeffs(x) * 2.0**self.params.query_scale_bits).astype(np.int64)

    def encrypt_message(self, i: int) -> bytes:
        """Message i: the groups ``message_groups(i)``, T seeded ciphertexts each."""
        if not 0 <= i < self.num_messages:
            raise base.FHEError(f"message {i} out of range [0, {self.num_messages})")
        groups = self.message_groups(i)
        coeffs = np.concatenate([self._group_coeffs(j) for j in groups])
        blobs = self._seeded.encrypt_coeffs(self._poly, coeffs, 2.0**self.params.query_scale_bits, _secure_noise)
        return base.pack_blobs({"kind": "fit-groups", "first": groups.start, "count": len(groups)}, blobs)

    def encrypt_messages(self) -> Iterator[bytes]:
        for i in range(self.num_messages):
            yield self.encrypt_message(i)

    def _decrypt_group(self, blob: bytes, j: int, drop_bits: int) -> np.ndarray:
        """[group columns, d_a] values (units of the scaled columns and Z_A) of one group's reply."""
        geo, lay = self.geo, self.layout
        polys = wire.load_sparse(blob, f"fit reply group {j}", geo.q_kept, self.params.poly_modulus_degree,
                                 geo.counts(j), geo.switched_scale, drop_bits)
        c1 = np.stack([p[1] for p in polys]).astype(np.float64)  # [G, N] rounded values
        acc = np.rint(c1 @ self._rows.T).astype(np.int64)  # [G, cols B], exact (< 2^53)
        q = np.int64(geo.q_kept)
        out = np.zeros((geo.group_columns(j), lay.replies * lay.cols))
        for g, (c0, _) in enumerate(polys):
            idx = geo.sent(j, g)
            v = (c0.astype(np.int64) + (acc[g, idx] % q << np.int64(drop_bits)) % q) % q
            v = np.where(v > q // 2, v - q, v).astype(np.float64) / geo.switched_scale
            out[:, g * lay.cols : g * lay.cols + lay.group_cols(g)] = v.reshape(lay.group_cols(g), -1).T
        return out[:, : self.d_a]

    def decrypt_message(self, reply: bytes, i: int) -> np.ndarray:
        """[len(message_columns(i)), d_a] rows of X^T Z_A from the provider's reply to message i.

        Raises:
          FHEError: a value beyond the announced column norm + 8 flood std (overflow, corrupt).
        """
        if self._bounds is None:
            raise base.FHEError("call set_provider_bounds() with the provider's announcement first")
        meta, blobs = base.unpack_blobs(reply, what="fit reply")
        groups = self.message_groups(i)
        if meta.get("kind") != "fit-reply" or meta.get("first") != groups.start \
                or meta.get("count") != len(groups) or len(blobs) != len(groups):
            raise base.DeserializationError(f"fit reply: expected kind 'fit-reply' for groups {groups.start}.."
                                            f"{groups.stop - 1} with one blob each")
        vals = np.concatenate([self._decrypt_group(b, j, self.drop_bits) for b, j in zip(blobs, groups)])
        b = self._bounds
        limit = b["za_col_norm"] + 8 * b["flood_std"] + 1e-6
        worst = float(np.abs(vals).max())
        if not np.isfinite(worst) or worst > limit:
            raise base.FHEError(f"fit reply {i}: |value| {worst:.3g} exceeds the possible {limit:.3g} "
                                "(|X_j| = 1, announced |Z_A column| and flood): overflow or corrupt reply")
        cols = self.message_columns(i)
        return vals / (self._col_scale[cols][:, None] * b["za_scale"])

    # -- calibration: decryption of an unswitched, unflooded reply --------------------------
    def _decrypt_exact(self, c0: np.ndarray, c1: np.ndarray, j: int) -> "list[np.ndarray]":
        """Per reply g, the decrypted values (``_crt_small``: modulo 2^64) of an unswitched
        reply: c0 [primes, G, cols B] at every score position, c1 [G, primes, N] coefficients."""
        geo = self.geo
        # (c1 s) at every score position of every reply, one exact product per prime:
        # |centred residue| < 2^22 times N signed ternary terms < 2^53.
        c1s = [np.rint(_centred(c1[:, p], [q], 0) @ self._rows.T).astype(np.int64)  # [G, positions]
               for p, q in enumerate(geo.moduli)]
        out = []
        for g in range(self.layout.replies):
            idx = geo.sent(j, g)
            res = [(c0[p, g, idx].astype(np.int64) + c1s[p][g, idx]) % q for p, q in enumerate(geo.moduli)]
            out.append(_crt_small(np.stack(res), geo.moduli))
        return out


def _crt_small(res: np.ndarray, moduli: "list[int]") -> np.ndarray:
    """Residues [primes, m] -> the centred values modulo 2^64 (int64, wrapping): Garner's mixed
    radix, centred by its top digit. Exact for |v| < 2^63; beyond, the difference of two such
    results is still exact when the true difference is below 2^63 (calibration's use)."""
    digits = [res[0].astype(np.int64)]
    for p in range(1, len(moduli)):
        q = moduli[p]
        prod_p = math.prod(moduli[:p])
        val = np.zeros_like(digits[0])
        radix = 1
        for i, d in enumerate(digits):  # the value so far, mod q
            val = (val + d % q * (radix % q)) % q
            radix *= moduli[i]
        digits.append(np.mod(res[p].astype(np.int64) - val, q) * pow(prod_p, -1, q) % q)
    with np.errstate(over="ignore"):
        v = np.zeros_like(digits[0])
        radix = 1
        for i, d in enumerate(digits):
            v = v + d * np.int64(radix % (1 << 64) - (1 << 64) if radix % (1 << 64) >= 1 << 63 else radix % (1 << 64))
            radix *= moduli[i]
        total = math.prod(moduli) % (1 << 64)
        total = np.int64(total - (1 << 64) if total >= 1 << 63 else total)
        v = np.where(digits[-1] > moduli[-1] // 2, v - total, v)
    return v


class CoeffFitProvider:
    """Party A: built from the client's public context and its own Z_A.

    A state machine: it answers each column group 0..J-1 exactly once, in messages of
    consecutive groups; anything else raises FitProtocolError.

    Args:
      public_context: ``CoeffFitClient.public_context()``.
      z_na: [n, d_a] the provider's embeddings of the public set.
      policy: FloodPolicy (default FloodPolicy()).
      bound: B (value units); None measures it (``calibrate``).
    """

    name = NAME

    def __init__(self, public_context: bytes, z_na: np.ndarray, policy=None, bound: "float | None" = None,
                 *, _calibration: bool = False):
        import seal

        from linalign.fhe.privacy import FloodPolicy

        meta, blobs = base.unpack_blobs(public_context, what="fit context")
        fields = {"backend", "n", "d_b", "d_a", "params", "chunk", "batch", "cols"}
        if meta.get("backend") != NAME or len(blobs) != 1:
            raise base.DeserializationError(f"fit context: not a {NAME} context with one public key")
        if set(meta) != fields:
            raise base.DeserializationError(f"fit context: fields {sorted(meta)} are not {sorted(fields)}")
        self.n = base.optional_meta_int(meta, "n", 2, MAX_ROWS, "fit context")
        self.d_b = base.optional_meta_int(meta, "d_b", 1, MAX_DIM, "fit context")
        self.d_a = base.optional_meta_int(meta, "d_a", 1, MAX_DIM, "fit context")
        try:
            self.params = CoeffFitParams.from_dict(meta["params"])
        except (TypeError, ValueError) as e:
            raise base.DeserializationError(f"fit context: bad params ({e})") from None
        big = self.params.poly_modulus_degree
        lay = CoefficientLayout(
            d=self.n, k=self.d_a, n=big,
            chunk=base.optional_meta_int(meta, "chunk", 1, big, "fit context"),
            cols=base.optional_meta_int(meta, "cols", 1, big, "fit context"),
            batch=base.optional_meta_int(meta, "batch", 1, big, "fit context"))
        # The client picks the layout; any valid one is accepted, within the provider's limits.
        if lay.chunk * lay.cols * lay.batch > big or lay.queries > self.params.max_terms \
                or lay.queries * lay.replies > MAX_PLAINTEXTS or lay.batch > self.d_b + 1:
            raise base.DeserializationError(
                f"fit context: layout chunk={lay.chunk}, cols={lay.cols}, batch={lay.batch} is not valid "
                f"(chunk cols batch <= N, T <= {self.params.max_terms}, T G <= {MAX_PLAINTEXTS}, batch <= d_b + 1)")
        self.layout = lay
        z, self.za_scale, self.za_col_norm = provider_rows(z_na, self.n, self.d_a)
        self._ctx = _context(self.params)
        try:
            pk = self._ctx.from_public_str(blobs[0])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"fit context: bad public key ({e})") from None
        self._codec = wire.CompactCodec(self._ctx, seal.Encryptor(self._ctx, pk).encrypt)
        self._poly = wire.PolyTransform(self._codec)
        moduli = wire.moduli_at(self._ctx, self._ctx.first_parms_id())
        self.geo = _Geometry(self.n, self.d_b, self.d_a, self.params, lay, moduli)
        self._pk_f = self._public_key_ntt(pk, len(moduli)).astype(np.float64)
        self._z_scaled = z * self.za_scale
        self._plain = self._plaintexts(self._z_scaled)
        self._seen: set = set()
        self._buffers: dict = {}
        self._inverse = None  # coefficient extraction tables, built on first use
        self._rng = np.random.default_rng(secrets.randbits(128))
        self._calibration = bool(_calibration)
        self._sigma = 0.0
        self.flood_std = 0.0
        self.bound = 0.0
        self.drop_bits = 0
        if not _calibration:
            self.policy = policy if policy is not None else FloodPolicy()
            self.bound = float(bound) if bound is not None else calibrate(self, self.policy)
            sent = self.layout.batch * self.d_a  # coefficients per group reply
            self._sigma = self.policy.sigma(math.sqrt(sent) * self.bound, self.geo.scale)
            self.flood_std = self._sigma / self.geo.scale
            big = self.params.poly_modulus_degree
            rounding = 0.29 * math.sqrt(2 * big / 3)  # std of the c1 rounding error per 2^t
            flood_switched = self._sigma / self.geo.moduli[-1]
            t = math.floor(math.log2(max(flood_switched / (ROUNDING_MARGIN * rounding), 1.0)))
            self.drop_bits = int(min(t, self.geo.max_drop_bits))

    def is_private(self) -> bool:
        return False  # built from parameters and a public key only

    def _public_key_ntt(self, pk, level: int) -> np.ndarray:
        """[2, level, N] the public key's residues modulo the data primes (NTT form)."""
        blob = pk.to_string()
        n = self.params.poly_modulus_degree
        k = len(self.params.coeff_mod_bit_sizes)
        data = np.frombuffer(blob, np.uint64, 2 * k * n, len(blob) - 2 * k * n * 8).reshape(2, k, n)
        return data[:, :level].copy()

    def _plaintexts(self, z_scaled: np.ndarray) -> "list[np.ndarray]":
        """Per data prime, [N, T, G] the NTT-form residues of every W_tg, centred (|r| <= q/2 + 1)
        as float64: half the magnitude of [0, q) residues in the products' exact sums.

        W_tg has only h_a n_w nonzero coefficients, at exponents e(c, i) = c B n_w + n_w - 1 - i,
        so its NTT at coordinate k is sum w r_k^e(c, i) with r_k = NTT(X)[k]: one matrix product
        [N, h_a n_w] @ [h_a n_w, T G] per prime, in the layout the products need (no transform,
        no transpose). Exact: |w| <= 2^(z_scale_bits + 6), r^e < q, and the inner dimension is
        cut so each partial sum stays below 2^53.
        """
        lay, geo = self.layout, self.geo
        big, chunk, cols = self.params.poly_modulus_degree, lay.chunk, lay.cols
        w = np.zeros((lay.queries * chunk, lay.replies * cols))
        w[: self.n, : self.d_a] = np.rint(z_scaled * 2.0**self.params.z_scale_bits)
        # [(c, i), (t, g)] = w[t chunk + i, g cols + c]
        w = w.reshape(lay.queries, chunk, lay.replies, cols).transpose(3, 1, 0, 2).reshape(cols * chunk, -1)
        wmax = max(1.0, float(np.abs(w).max()))
        x = np.zeros((len(geo.moduli), 1, big), np.uint64)
        x[:, 0, 1] = 1
        roots = self._poly.to_ntt_pm(x)[:, 0]  # [primes, N]: NTT(X)
        exps = (np.arange(cols)[:, None] * lay.batch * chunk + chunk - 1 - np.arange(chunk)[None, :]).ravel()
        out = []
        for p, q in enumerate(geo.moduli):
            r = np.ascontiguousarray(_powers(roots[p], exps, q).T).astype(np.float64)  # [N, cols chunk]
            step = max(1, int(2.0**53 // (q * wmax)))  # terms per exact partial sum
            acc = None
            for s0 in range(0, len(exps), step):
                part = r[:, s0 : s0 + step] @ w[s0 : s0 + step]
                if acc is None:
                    acc = part
                else:
                    acc += _cmod_inplace(part, q)
                _cmod_inplace(acc, q)
            out.append(acc.reshape(big, lay.queries, lay.replies))
        return out

    def _buffer(self, name: str, shape, dtype=np.float64) -> np.ndarray:
        """A scratch array reused across messages (fresh large arrays cost page faults): a
        contiguous prefix of a flat buffer that only grows."""
        size = math.prod(int(d) for d in shape)
        a = self._buffers.get(name)
        if a is None or a.size < size or a.dtype != dtype:
            a = self._buffers[name] = np.empty(size, dtype)
        return a[:size].reshape(shape)

    def announce(self) -> dict:
        return {"za_scale": self.za_scale, "za_col_norm": self.za_col_norm, "flood_std": self.flood_std,
                "drop_bits": self.drop_bits, "groups": self.geo.groups}

    @property
    def done(self) -> bool:
        return len(self._seen) == self.geo.groups

    def _parse(self, message: bytes) -> "tuple[range, np.ndarray]":
        """A message -> (its groups, [primes, k, 2, T, N] NTT-form residues)."""
        meta, blobs = base.unpack_blobs(message, what="fit message")
        first, count = meta.get("first"), meta.get("count")
        lay, geo = self.layout, self.geo
        if meta.get("kind") != "fit-groups" or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in (first, count)):
            raise base.DeserializationError("fit message: expected kind 'fit-groups' with int first and count")
        if self.done:
            raise FitProtocolError(f"fit message: all {geo.groups} column groups were already answered")
        if not (1 <= count and 0 <= first and first + count <= geo.groups):
            raise FitProtocolError(f"fit message: groups {first}..{first + count - 1} out of range [0, {geo.groups})")
        groups = range(first, first + count)
        if any(j in self._seen for j in groups):
            raise FitProtocolError(f"fit message: a group of {first}..{first + count - 1} was already answered")
        if len(blobs) != count * lay.queries:
            raise base.DeserializationError(f"fit message: {len(blobs)} ciphertexts, {count} groups need "
                                            f"{count * lay.queries}")
        level, scale = len(geo.moduli), 2.0**self.params.query_scale_bits
        cts = self._buffer("cts", (level, count, 2, lay.queries, self.params.poly_modulus_degree), np.uint64)
        for i, blob in enumerate(blobs):
            j, t = divmod(i, lay.queries)
            c0, c1 = self._codec.parse(blob, f"fit message group {first + j} chunk {t}", level, True, scale)
            cts[:, j, 0, t], cts[:, j, 1, t] = c0, c1
        self._seen.update(groups)  # counted before the work: a failing message still uses its groups
        return groups, cts

    def _products(self, cts: np.ndarray, private: bool = False) -> np.ndarray:
        """[primes, k, 2, T, N] NTT-form ciphertexts -> [k, 2, G, primes, N] NTT-form products.

        Per prime and NTT coordinate, Y[(j, s), g] = sum_t C[(j, s), t] W[t, g]: one batched
        float64 matrix product, exact (``CoeffFitParams.max_terms``), reduced once.

        With ``private``, every reply is re-randomised here, in the same float64 sums: + u pk
        (an encryption of zero under the client's public key without its e0, e1; u ternary from
        the OS's CSPRNG, one per reply; ``_coefficients`` adds e1)."""
        level, k, _, t, big = cts.shape
        g = self.layout.replies
        out = self._buffer("products", (k, 2, g, level, big), np.uint64)
        rows = out.reshape(k * 2 * g, level, big)
        c = self._buffer("c", (big, 2 * k * t))
        y = self._buffer("y", (big, 2 * k, g))
        if private:
            u_res = _ternary_residues(_secure_ternary(k * g, big), self.geo.moduli,
                                      self._buffer("u_res", (k * g, level, big), np.uint64))
            u_ntt = self._poly.to_ntt(u_res, level, out=self._buffer("u_ntt", (k * g, level, big), np.uint64))
            u_t = self._buffer("u_t", (big, k, g))
            tmp = self._buffer("u_tmp", (big, k, g))
        for p, q in enumerate(self.geo.moduli):
            _transpose_into(c, cts[p].reshape(-1, big))  # [N, 2k T]
            _centre_inplace(c, q)
            np.matmul(c.reshape(big, 2 * k, t), self._plain[p], out=y)  # [N, 2k, G], exact
            if private:
                _transpose_into(u_t.reshape(big, -1), u_ntt[:, p])
                y4 = y.reshape(big, k, 2, g)
                for s in range(2):  # + u pk_s: below 2 q^2 more, still exact (max_terms)
                    np.multiply(u_t, self._pk_f[s, p][:, None, None], out=tmp)
                    y4[:, :, s] += tmp
            _fmod_inplace(y, q)
            _transpose_into(rows[:, p], y.reshape(big, -1))
        return out

    def _coefficients(self, y: np.ndarray, j: int, private: bool) -> "tuple[np.ndarray, np.ndarray]":
        """Group j of the NTT-form products [k, 2, G, primes, N] (re-randomised by
        ``_products``) -> (c0 at every score position [primes, G, cols B], c1 in coefficient
        form [G, primes, N], + e1 if ``private``) (scratch buffers: valid until the next call).
        Only c1 goes through an inverse NTT; c0's few coefficients are read off by ``_extract``."""
        _, _, g, level, big = y.shape
        qs = np.asarray(self.geo.moduli, np.uint64)[:, None]
        yj = y[j]
        c0 = self._extract(yj[0])
        c1 = self._poly.from_ntt(yj[1], level, out=self._buffer("c1", (g, level, big), np.uint64))
        if private:
            # e1 makes a_pk u + e1 an RLWE sample, so c1 hides c1_W; c0 needs no e0: its sent
            # coefficients are flooded, the others never leave.
            e = _secure_noise((g, 1, big))
            np.add(c1, np.where(e < 0, e + qs.astype(np.int64), e).astype(np.uint64), out=c1)  # + (e mod q) < 2q
            tmp = np.subtract(c1, qs, out=self._buffer("c1_tmp", c1.shape, np.uint64))  # wraps above 2^63 if < q
            np.minimum(c1, tmp, out=c1)
        return c0, c1

    def _extract(self, y0: np.ndarray) -> np.ndarray:
        """NTT-form polynomials [G, primes, N] -> their coefficients at the score positions
        [primes, G, cols B]: a_i = N^-1 sum_k a_k r_k^-i, as two exact float64 matrix products
        per prime (the table split in 12-bit limbs: centred residue x limb x N < 2^47)."""
        if self._inverse is None:
            big = self.params.poly_modulus_degree
            pos = self.geo.positions(np.arange(self.layout.cols * self.layout.batch))
            x = np.zeros((len(self.geo.moduli), 1, big), np.uint64)
            x[:, 0, 1] = 1
            roots = self._poly.to_ntt_pm(x)[:, 0]
            self._inverse = []
            for p, q in enumerate(self.geo.moduli):
                v = _powers(roots[p], (2 * big - pos) % (2 * big), q) * np.uint64(pow(big, -1, q)) % np.uint64(q)
                v = np.ascontiguousarray(v.T)  # [N, positions]
                self._inverse.append(((v & np.uint64(0xFFF)).astype(np.float64), (v >> np.uint64(12)).astype(np.float64)))
        g, level, big = y0.shape
        out = np.empty((level, g, len(self._inverse[0][0][0])), np.uint64)
        for p, q in enumerate(self.geo.moduli):
            x = _centre_inplace(y0[:, p].astype(np.float64), q)
            lo, hi = (x @ self._inverse[p][0], x @ self._inverse[p][1])
            _fmod_inplace(lo, q)
            _fmod_inplace(hi, q)
            hi *= 4096.0
            lo += hi
            out[p] = _fmod_inplace(lo, q)
        return out

    def _reply_blob(self, c0_all: np.ndarray, c1: np.ndarray, j: int) -> bytes:
        """One group's reply (``_coefficients``) -> flooded, switched, packed."""
        from linalign.fhe.privacy import _residues, integer_gaussian

        geo, lay = self.geo, self.layout
        moduli = geo.moduli
        qs = np.asarray(moduli, np.uint64)[:, None]
        counts = geo.counts(j)
        c0 = np.concatenate([c0_all[:, g, geo.sent(j, g)] for g in range(lay.replies)], axis=1)  # [primes, sent]
        if self._sigma > 0:
            hi, lo = integer_gaussian(self._rng, self._sigma, c0.shape[1])
            c0 = (c0 + _residues(hi, lo, moduli)) % qs
        c0 = np.split(_switch_crt(c0, moduli), np.cumsum(counts)[:-1])
        c1 = _switch_crt(c1.transpose(1, 0, 2).reshape(len(moduli), -1), moduli).reshape(lay.replies, -1)
        return wire.dump_sparse(c0, list(c1), geo.q_kept, geo.switched_scale, self.drop_bits)

    def cross(self, message: bytes) -> bytes:
        """One message of column groups -> their replies (sanitised)."""
        groups, cts = self._parse(message)
        y = self._products(cts, private=not self._calibration)
        blobs = [self._reply_blob(*self._coefficients(y, i, private=not self._calibration), j)
                 for i, j in enumerate(groups)]
        return base.pack_blobs({"kind": "fit-reply", "first": groups.start, "count": len(groups)}, blobs)


def _powers(r: np.ndarray, exps: np.ndarray, q: int, step: int = 64) -> np.ndarray:
    """[len(exps), N] r^e mod q (uint64; q < 2^32; e >= 0): r^e = (r^step)^(e // step) r^(e % step)
    from a table of ``step`` baby powers and max(e) / step giant ones, one multiply per entry."""
    qq = np.uint64(q)
    exps = np.asarray(exps, np.int64)
    if exps.size and (exps.min() < 0 or q >= 1 << 32):
        raise ValueError("_powers takes exponents >= 0 and a modulus below 2^32")
    r = np.asarray(r, np.uint64) % qq
    baby = np.empty((step, len(r)), np.uint64)
    baby[0] = 1
    for i in range(1, step):
        baby[i] = baby[i - 1] * r % qq
    top = int(exps.max(initial=0)) // step + 1
    giant = np.empty((top, len(r)), np.uint64)
    giant[0] = 1
    g = baby[-1] * r % qq
    for i in range(1, top):
        giant[i] = giant[i - 1] * g % qq
    return giant[exps // step] * baby[exps % step] % qq


def _switch_crt(res: np.ndarray, moduli: "list[int]") -> np.ndarray:
    """Residues [primes, m] (< each prime) -> the value divided by the last prime, rounded, as
    integers modulo the product of the others (uint64; two or three primes of < 2^25, so every
    intermediate is an integer below 2^52 and float64 arithmetic is exact)."""
    if len(moduli) not in (2, 3) or max(moduli) >= 1 << 25:
        raise ValueError(f"_switch_crt takes two or three primes below 2^25, got {moduli}")
    last = moduli[-1]
    t = res[-1].astype(np.float64)
    t -= last * (t > last // 2)  # centred: the division rounds
    q0 = moduli[0]
    k0 = _fmod_inplace((res[0].astype(np.float64) - t) * pow(last, -1, q0), q0)  # (x - t) / last mod q0
    if len(moduli) == 2:
        return k0.astype(np.uint64)
    q1 = moduli[1]
    k1 = _fmod_inplace((res[1].astype(np.float64) - t) * pow(last, -1, q1), q1)
    k1 -= k0  # Garner: value = k0 + q0 ((k1 - k0) q0^-1 mod q1) < q0 q1 < 2^50
    k1 = _fmod_inplace(k1 * pow(q0, -1, q1), q1)
    return (k0 + k1 * float(q0)).astype(np.uint64)


def calibrate(provider: CoeffFitProvider, policy, seed: int = 0) -> float:
    """B (value units) for this provider's plaintexts: a client of the provider's own with one
    group of random unit columns runs through the unflooded, un-re-randomised, unswitched
    circuit; each decrypted coefficient is compared with the exact integer result of the
    encoded columns and embeddings. Returns policy.margin times the largest error."""
    lay, geo = provider.layout, provider.geo
    rng = np.random.default_rng(seed)
    h = min(lay.batch, geo.h)
    client = CoeffFitClient(rng.standard_normal((provider.n, max(1, h - 1))), provider.d_a, provider.params,
                            groups_per_message=1, _layout=lay)
    msg = client.encrypt_message(0)
    saved, provider._seen = provider._seen, set()
    try:
        groups, cts = provider._parse(msg)
    finally:
        provider._seen = saved
    got = client._decrypt_exact(*provider._coefficients(provider._products(cts), 0, private=False), 0)
    # Exact integers: x (|x| < 2^47) split in 24-bit halves, each product sum exact in int64.
    x_int = client._group_coeffs(0)  # [T, N]
    cols = client.geo.group_columns(0)
    xs = x_int[:, : cols * lay.chunk].reshape(lay.queries, cols, lay.chunk).transpose(1, 0, 2).reshape(cols, -1)
    xs = xs[:, : provider.n]
    zs = np.rint(provider._z_scaled * 2.0**provider.params.z_scale_bits).astype(np.int64)
    # x (|x| < 2^47) in 16-bit limbs: limb x z x n < 2^16 2^21 2^12 -> exact float64 BLAS products,
    # recombined modulo 2^64 like the decrypted values (``_crt_small``).
    zf = zs.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = np.zeros((xs.shape[0], zs.shape[1]), np.int64)
        for shift in (0, 16, 32):
            limb = ((xs >> shift) & 0xFFFF) if shift < 32 else (xs >> 32)
            exact += np.rint(limb.astype(np.float64) @ zf).astype(np.int64) << np.int64(shift)
    worst = 0.0
    for g in range(lay.replies):
        idx = client.geo.sent(0, g)
        b_idx, a_idx = idx % lay.batch, g * lay.cols + idx // lay.batch
        with np.errstate(over="ignore"):
            err = got[g] - exact[b_idx, a_idx]  # the true difference is far below 2^63
        worst = max(worst, float(np.abs(err).max()))
    if not worst > 0:
        raise base.FHEError("noise calibration failed: no error measured")
    return policy.margin * worst / geo.scale

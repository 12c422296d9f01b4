"""Circuit privacy for CKKS replies (SEAL): real parts only, slot masking, re-randomisation,
noise flooding.

A reply ct = (c0, c1) computed from the client's ciphertext and the provider's plaintexts leaks
more than its result slots unless it is sanitised. ``Sanitizer`` does, in order:

1. Real parts only: ct + conj(ct) (one key switch with the client's conjugation key, Galois
   step 0). A malicious client could put a second query in the imaginary parts of its slots;
   those products are removed here, not just hidden.
2. Slot masking: a plaintext multiply by 1/2 on the result slots and 0 elsewhere (no rescale:
   its rounding would cost more precision than the mask's scale). Other slots (partial sums over other windows of the provider's matrix) become
   value * delta_s, with |delta_s| ~ sqrt(N) 2^-mask_bits the public encoding error of the
   mask: far below the flooding noise and included in the calibrated bound B below.
3. Re-randomisation: + Enc_pk(0) under the client's public key. Otherwise c1 is a public
   linear function of the client's c1 and the provider's plaintexts (one multiply_plain gives
   c1_out = c1_in * p(V): the client could divide).
4. Gaussian flooding: iid integer Gaussian noise of std sigma on every coefficient of c0, at
   full integer resolution (``integer_gaussian``: a rounded float would only reach multiples
   of ~2^18 at sigma ~ 2^70 and leave the low bits of the error readable). For any fixed
   error polynomial e with ||e||_2 <= B (integer units), the statistical distance between
   (noise) and (e + noise) is at most ||e||_2 / (2 sigma) (Pinsker on the Gaussian KL
   ||e||^2 / (2 sigma^2); rounding to integers is a post-processing of both). With
   sigma = 2^lambda_s B the reply is within statistical distance 2^-(lambda_s + 1) of one
   whose error does not depend on the provider's plaintexts.

B is measured, not assumed: each backend's ``calibrate`` runs the provider's exact circuit
(sanitisation steps 1-2 included) on the provider's *own* fresh key pair with the same
parameters, layout and plaintexts, and takes the largest slot error against the exact
result, times ``FloodPolicy.margin``. ||e||_2 of a coefficient vector equals the RMS of its
canonical embedding, so the largest complex slot error bounds it (the imaginary parts are
not observable through decoding; after step 1 they hold only noise of the same law, hence the
sqrt(2)). This covers honestly generated ciphertexts (fresh encryption noise); a client that
sends ciphertexts with inflated noise can exceed B (threat model: docs/notes/helix.md).

The flood costs precision: each decoded slot receives real Gaussian noise of standard
deviation sigma sqrt(N/2) / scale = 2^lambda_s B sqrt(N/2) (``FloodPolicy.decoded_std``); the
provider announces it and the client uses it in its range checks.

SEAL has no API to add an arbitrary coefficient polynomial, so ``add_coeffs`` moves the
ciphertext out of NTT form (``Evaluator.transform_from_ntt``), adds the polynomial to c0's RNS
components in its uncompressed serialization, and moves it back.
"""

from __future__ import annotations

import dataclasses
import math
import secrets

import numpy as np

from linalign.fhe import base


HI_SHIFT = 31  # integer noise = hi * 2^31 + lo
LO_STD = 2.0**36  # lo's std: above the smoothing parameter of 2^31 Z (~3 * 2^31 at eps = 2^-40)
DIRECT_MAX_STD = 2.0**44  # below this, one rounded float64 Gaussian (|value| < 2^50 << 2^53)


def integer_gaussian(rng, sigma: float, n: int) -> "tuple[np.ndarray, np.ndarray]":
    """[n] integers ~ N(0, sigma^2) at full integer resolution, as (hi, lo) int64 with value
    hi * 2^31 + lo.

    A float64 Gaussian rounded at sigma ~ 2^70 only reaches multiples of ~2^18: the client
    would read the flooded error modulo 2^18 exactly. So hi is a rounded Gaussian of std
    sigma / 2^31 and lo a rounded Gaussian of std 2^36 (above the smoothing parameter of the
    lattice 2^31 Z); their combination is statistically close to a discrete Gaussian of std
    sqrt(sigma^2 + 2^72) ~ sigma over the integers (convolution of lattice Gaussians).
    """
    if sigma < DIRECT_MAX_STD:
        # float64 integers are exact below 2^53: a rounded Gaussian already has full integer
        # resolution, and the 2^36 lo term below would swamp a small sigma (it used to put a
        # floor of 2^36 on the flood, 4e-3 per slot at scale 2^50).
        lo = np.rint(rng.normal(0.0, sigma, n))
        return np.zeros(n, np.int64), lo.astype(np.int64)
    hi = np.rint(rng.normal(0.0, sigma / 2.0**HI_SHIFT, n))
    if not np.all(np.abs(hi) < 2.0**61):
        raise base.FHEError("flooding noise beyond 2^92: the noise bound is not usable")
    lo = np.rint(rng.normal(0.0, LO_STD, n))
    return hi.astype(np.int64), lo.astype(np.int64)


def _residues(hi: np.ndarray, lo: np.ndarray, moduli: "list[int]") -> np.ndarray:
    """[k, N] uint64 residues of hi * 2^31 + lo modulo each prime (< 2^61), exact in int64.

    hi mod q is split into pieces of w = 62 - bits(q) bits; piece_i * (2^(31 + w i) mod q) is
    then below 2^62 and every partial sum stays inside int64.
    """
    out = np.empty((len(moduli), hi.size), dtype=np.uint64)
    for j, q in enumerate(moduli):
        q = int(q)
        width = 62 - q.bit_length()  # piece * (multiplier < q) < 2^62
        acc = np.mod(lo, q)  # int64 in [0, q)
        h = np.mod(hi, q)
        shift = HI_SHIFT
        while np.any(h):
            piece = h & ((1 << width) - 1)
            mult = pow(2, shift, q)
            acc = np.mod(acc + np.mod(piece * mult, q), q)
            h = h >> width
            shift += width
        out[j] = acc.astype(np.uint64)
    return out


def add_coeffs(ctx, evaluator, ct, hi: np.ndarray, lo: np.ndarray):
    """ct + (hi 2^31 + lo, 0): adds an integer polynomial [N] to c0. Returns a new ciphertext."""
    import seal

    ct = seal.Ciphertext(ct)
    evaluator.transform_from_ntt_inplace(ct)
    blob = ct.to_string()  # seal-python serializes uncompressed
    n = ct.poly_modulus_degree()
    k = ct.coeff_modulus_size()
    moduli = [m.value() for m in ctx.get_context_data(ct.parms_id()).parms().coeff_modulus()]
    nbytes = ct.size() * k * n * 8
    head, data = blob[: len(blob) - nbytes], np.frombuffer(blob, np.uint64, offset=len(blob) - nbytes).copy()
    data = data.reshape(ct.size(), k, n)
    add = _residues(np.asarray(hi, np.int64), np.asarray(lo, np.int64), moduli)
    for j, q in enumerate(moduli):  # residues < q < 2^61: the uint64 sum cannot wrap
        data[0, j] = (data[0, j] + add[j]) % np.uint64(q)
    out = seal.Ciphertext()
    out.load_bytes(ctx, head + data.tobytes())
    evaluator.transform_to_ntt_inplace(out)
    return out


@dataclasses.dataclass(frozen=True)
class FloodPolicy:
    """How much to flood.

    Attributes:
      flood_bits: lambda_s; statistical distance <= 2^-(lambda_s + 1) per reply.
      margin: factor applied to the measured largest slot error to get B.
    """

    flood_bits: int = 12
    margin: float = 4.0

    def sigma(self, bound_value: float, scale: float) -> float:
        """Coefficient noise standard deviation (integer units) for an error bound B (value units)."""
        return 2.0**self.flood_bits * bound_value * scale

    def decoded_std(self, bound_value: float, n: int) -> float:
        """Standard deviation of the flood in each decoded slot's real part (value units)."""
        return 2.0**self.flood_bits * bound_value * math.sqrt(n / 2)


class Sanitizer:
    """Keeps real parts (and optionally only ``keep_slots``), re-randomises and floods.

    Two uses:

    * ``__call__(ct)``: steps 1-4 of the module docstring on a finished result (the windowed
      layout ``seal-v1``, whose other slots hold partial sums and must be masked);
    * ``real_part(ct)`` before the rescale, then ``finish(ct)`` after it (the replicated
      inference layout and the fit, whose slots hold only results, replicas of results or
      zeros: no mask, so no mask encoding error in B and no headroom spent on it). The key
      switch of the conjugation then happens at the product's scale and its noise is divided
      by the rescale prime.

    Args:
      ctx: the SEALContext of the session.
      galois_keys: the client's Galois keys (must include step 0, conjugation).
      public_key: the client's seal.PublicKey, or None for calibration (no re-randomisation;
        it adds fresh-encryption-sized noise only).
      params: CKKSParams of the session.
      keep_slots: [m] slot indices whose real parts are results, or None (no mask).
      mask_bits: scale of the 0 / 1/2 mask plaintext; the result ends at scale
        2^(scale_bits + mask_bits), i.e. with headroom_bits - mask_bits bits for |values|.
        More bits: smaller delta_s, less headroom. Ignored without ``keep_slots``.
    """

    def __init__(self, ctx, galois_keys, public_key, params, keep_slots=None, mask_bits: int = 0):
        import seal

        self.ctx, self.params = ctx, params
        self.mask_bits = int(mask_bits) if keep_slots is not None else 0
        self._gk = galois_keys
        self._enc = None if public_key is None else seal.Encryptor(ctx, public_key)
        self._encoder = seal.CKKSEncoder(ctx)
        self._ev = seal.Evaluator(ctx)
        self._mask = None
        self._zeros = {}
        if keep_slots is not None:
            mask = np.zeros(params.slots)
            mask[np.asarray(keep_slots, dtype=np.int64)] = 0.5  # (ct + conj ct) / 2 = real part
            self._mask = mask
        if self.headroom_bits < 4:
            raise base.FHEError(f"mask_bits={mask_bits} leaves {self.headroom_bits} bits of headroom")
        self._rng = np.random.default_rng(secrets.randbits(128))
        self.bound = 0.0  # B, set by ``set_flood``
        self.flood_bits = 0

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest |value| the sanitised reply can hold."""
        return self.params.headroom_bits - self.mask_bits

    def set_flood(self, bound_value: float, policy: "FloodPolicy") -> float:
        """Turns flooding on for B = ``bound_value``; returns the decoded flood std per slot."""
        self.bound, self.flood_bits = float(bound_value), int(policy.flood_bits)
        self._policy = policy
        return policy.decoded_std(bound_value, self.params.poly_modulus_degree)

    def real_part(self, ct):
        """ct + conj(ct): twice the real part of every slot (imaginary parts removed)."""
        out = self._ev.complex_conjugate(ct, self._gk)
        self._ev.add_inplace(out, ct)
        return out

    def finish(self, ct):
        """Mask (if any), re-randomise, flood; returns a new ciphertext at ct's level."""
        ev, out = self._ev, ct
        if self._mask is not None:
            mask = self._encoder.encode(self._mask, 2.0**self.mask_bits)
            ev.mod_switch_to_inplace(mask, out.parms_id())
            out = ev.multiply_plain(out, mask)
        if self._enc is not None:
            key = (tuple(out.parms_id()), out.scale())
            zero = self._zeros.get(key)
            if zero is None:  # one encoding per level and scale, not one per reply
                zero = self._encoder.encode(np.zeros(self.params.slots), out.scale())
                ev.mod_switch_to_inplace(zero, out.parms_id())
                self._zeros[key] = zero
            out = ev.add(out, self._enc.encrypt(zero))
        if self.bound > 0:
            sigma = self._policy.sigma(self.bound, out.scale())
            hi, lo = integer_gaussian(self._rng, sigma, self.params.poly_modulus_degree)
            out = add_coeffs(self.ctx, ev, out, hi, lo)
        return out

    def __call__(self, ct):
        """Steps 1-4 on a finished result (same level, scale times 2^mask_bits)."""
        return self.finish(self.real_part(ct))


def noise_bound(errors_value: "list[np.ndarray]", policy: FloodPolicy) -> float:
    """B from measured decryption errors (value units, real parts of all slots).

    The imaginary parts are not observable through CKKS decoding; their error has the same
    distribution as the real parts' (the error polynomial's embedding is conjugation-symmetric
    in law), so |complex error| <= sqrt(2) * the largest real error, times ``policy.margin``.
    """
    worst = max(float(np.abs(e).max()) for e in errors_value)
    if not np.isfinite(worst) or worst <= 0:
        raise base.FHEError(f"noise calibration failed: largest error {worst}")
    return policy.margin * math.sqrt(2.0) * worst

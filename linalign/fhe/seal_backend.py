"""Packed CKKS linear layer on Microsoft SEAL through seal-python (``import seal``).

One ciphertext up, one ciphertext down, all K scores inside it. Two layouts:

* ``seal`` (default): ``packing.ReplicatedLayout`` on the ``n8192`` chain [60, 50, 60]. The
  input is rotated n1 - 1 times (baby steps), the products n2 - 1 times (giant steps, Horner),
  then folded over the whole ring and conjugated while still at scale 2^100, then rescaled
  once: the reply is at the last level (one prime) and every slot holds a score or zero, so
  the sanitiser needs no mask; the client averages the M = S / R replicas of each score.
  With ``batch`` B > 1 (a power of two, B d' <= S) one ciphertext carries B queries of one
  client and one reply their B K scores (``encrypt_batch`` / ``decrypt_batch``).
* ``seal-v1``: the previous ``packing.PackedLayout`` (copies of z serve R rows each, fold
  inside each copy) on the ``n8192-v1`` chain [50, 50, 50, 60]; its other slots hold partial
  sums of V, which the sanitiser masks. Kept for before/after benchmarks.

The client encrypts with the secret key; the provider receives the parameters, Galois keys for
exactly the rotation steps the layout uses, and the client's public key, which it uses only to
re-randomise replies (``linalign.fhe.privacy``): with ``enable_privacy`` every reply is
re-randomised and its error term flooded.

Wire format (``base.pack_blobs``):
  public context: meta {backend, d_in, k_out, params, steps[, batch]}, blobs [galois keys,
                  public key]
  query / reply:  meta {kind}, blobs [ciphertext]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linalign.fhe import base
from linalign.fhe.packing import PackedLayout, ReplicatedLayout
from linalign.fhe.params import CKKSParams

NAME = "seal"
NAME_V1 = "seal-v1"
MAX_DIM = 1 << 15
MAX_BATCH = 1 << 14  # queries per ciphertext; the layout bounds it further (B d' <= S)
MIN_PRIVATE_RING = 8192  # N = 4096 (109-bit modulus): flooded replies have std ~ 2 (measured)
MASK_BITS = 40  # the score mask's scale: 2^-40 relative mask error, 10 bits of score headroom (n8192)


def input_shift_bits(params: CKKSParams) -> int:
    """Bits moved from the head's encoding scale to the query's (replicated layout).

    The baby steps rotate the fresh query; each key switch adds noise of fixed size, which the
    plaintext multiply then carries into the result relative to the query's scale. Encoding
    the query at 2^(scale + s) and the head at 2^(scale - s) keeps the product at 2^(2 scale)
    (rescale and reply unchanged) and divides that noise by 2^s; the head keeps scale - s bits
    (42 at n8192: 2e-13 relative encoding error). The query's primes have room to spare (at
    n8192 2^110 / 2^58 leaves 52 bits for |x|)."""
    return max(0, min(8, params.scale_bits - 30))


def query_scale(params: CKKSParams, layout) -> float:
    """The query's encoding scale: 2^(scale + input_shift_bits) for the replicated layout."""
    shift = input_shift_bits(params) if isinstance(layout, ReplicatedLayout) else 0
    return 2.0 ** (params.scale_bits + shift)


def reply_drop_bits(params: CKKSParams) -> int:
    """Low bits of every reply coefficient the provider rounds away (``wire``, one prime).

    The rounding error is ~1900 2^t / 2^scale per decoded slot at N = 8192 (``wire``): with
    t = scale_bits - 31 about 1e-6 per slot, 7e-8 per score after the replicas, under the
    flood. n8192: 19 of 60 bits (reply 123 -> 84 KB); n4096 (scale 2^31): none."""
    return max(0, params.scale_bits - 31)


def _seal():
    import seal  # lazy: heavy native extension

    return seal


def make_context(params: CKKSParams):
    """SEALContext for ``params``; SEAL itself re-checks 128-bit security (tc128)."""
    seal = _seal()
    parms = seal.EncryptionParameters(seal.scheme_type.ckks)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    ctx = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
    if not ctx.parameters_set():
        raise base.FHEError(f"SEAL rejected {params}: {ctx.parameter_error_message()}")
    return ctx


def ciphertext_bytes(params: CKKSParams, levels_dropped: int = 0) -> int:
    """Exact serialized size of a 2-polynomial ciphertext (header + members + data) at the top
    data level minus ``levels_dropped`` primes."""
    k = len(params.coeff_mod_bit_sizes) - 1 - levels_dropped
    return 113 + 2 * k * params.poly_modulus_degree * 8


def reply_scale(ctx, params: CKKSParams) -> float:
    """Scale of a replicated-layout reply: 2^(2 scale_bits) / p1, as SEAL's rescale computes it."""
    p1 = ctx.first_context_data().parms().coeff_modulus()[-1].value()
    return 2.0 ** (2 * params.scale_bits) / p1


def load_ciphertext(ctx, data: bytes, what: str, expect_bytes: "int | None" = None):
    """Parses and validates a serialized SEAL ciphertext against ``ctx``.

    Args:
      expect_bytes: when given, the exact length the blob must have; checked before SEAL parses
        it, so a hostile header cannot make SEAL allocate beyond one ciphertext.
    """
    seal = _seal()
    if expect_bytes is not None and len(data) != expect_bytes:
        raise base.DeserializationError(f"{what}: {len(data)} bytes, a ciphertext here has {expect_bytes}")
    ct = seal.Ciphertext()
    try:
        ct.load_bytes(ctx, bytes(data))
    except (RuntimeError, ValueError) as e:
        raise base.DeserializationError(f"{what}: not a valid SEAL ciphertext ({e})") from None
    if ct.size() != 2:
        raise base.DeserializationError(f"{what}: ciphertext has {ct.size()} polynomials, want 2")
    return ct


def _layout(name: str, d: int, k: int, slots: int, batch: int = 1):
    if name == NAME:
        return ReplicatedLayout.make(d, k, slots, batch)
    if batch != 1:
        raise ValueError(f"{name} carries one query per ciphertext, got batch={batch}")
    return PackedLayout.make(d, k, slots)


class SealClient(base.ClientBackend):
    """Key owner. See ``base.ClientBackend``."""

    name = NAME
    default_params = "n8192"
    compact = True  # seeded queries, bit-packed replies (linalign.fhe.wire)

    def __init__(self, d_in: int, k_out: int, params=None, batch: int = 1):
        super().__init__(d_in, k_out, params if params is not None else self.default_params)
        seal = _seal()
        try:
            self.layout = _layout(self.name, self.d_in, self.k_out, self.params.slots, batch)
        except ValueError as e:
            raise base.FHEError(str(e)) from None
        self.batch = getattr(self.layout, "batch", 1)  # PackedLayout (seal-v1): one
        self._ctx = make_context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._secret_key = keygen.secret_key()
        galois = seal.GaloisKeys()
        keygen.create_galois_keys(self.layout.rotation_steps, galois)
        public_key = keygen.create_public_key()
        self._encryptor = seal.Encryptor(self._ctx, self._secret_key)
        self._decryptor = seal.Decryptor(self._ctx, self._secret_key)
        self._encoder = seal.CKKSEncoder(self._ctx)
        if self.compact:
            from linalign.fhe import wire

            self._seeded = wire.SeededEncryptor(self._ctx, self._secret_key)
            self._codec = wire.CompactCodec(self._ctx, self._encryptor.encrypt_symmetric)
        meta = {"backend": self.name, "d_in": self.d_in, "k_out": self.k_out, "params": self.params.to_dict(),
                "steps": self.layout.rotation_steps}
        if self.batch != 1:
            meta["batch"] = self.batch
        self._public = base.pack_blobs(meta, [galois.to_string(), public_key.to_string()])

    def public_context(self) -> bytes:
        return self._public

    def decrypt_slots(self, reply: bytes, drop_bits: "int | None" = None) -> np.ndarray:
        """All [S] decoded slots of a reply (tests: what a curious client could read).

        ``drop_bits``: the reply's rounded-away bits (default ``reply_drop_bits``; 0 for the
        calibration's untruncated replies)."""
        if drop_bits is None:
            drop_bits = reply_drop_bits(self.params)
        meta, blobs = base.unpack_blobs(reply, what="reply")
        if meta.get("kind") != "reply" or len(blobs) != 1:
            raise base.DeserializationError("reply: expected kind 'reply' with one ciphertext")
        if self.compact:
            ct = self._codec.load(blobs[0], "reply", 1, False, reply_scale(self._ctx, self.params), drop_bits)
        else:
            ct = load_ciphertext(self._ctx, blobs[0], "reply")
        return np.asarray(self._encoder.decode(self._decryptor.decrypt(ct)), dtype=np.float64)

    def secret_key_bytes(self) -> bytes:
        """The serialized secret key, for tests that prove it never leaves the client."""
        return self._secret_key.to_string()

    def encrypt(self, x_d: np.ndarray) -> bytes:
        return self._encrypt_slots(self.layout.replicate(base.check_vector(x_d, self.d_in, "query")))

    def encrypt_batch(self, x_nd: np.ndarray) -> bytes:
        """Up to ``batch`` queries [n, d_in] in one query blob; ``decrypt_batch`` reads the reply."""
        x = base.check_batch(x_nd, self.d_in, self.batch)
        return self._encrypt_slots(self.layout.replicate(x))

    def _encrypt_slots(self, z_s: np.ndarray) -> bytes:
        pt = self._encoder.encode(z_s, query_scale(self.params, self.layout))
        if self.compact:
            return base.pack_blobs({"kind": "query"}, [self._seeded.encrypt(pt)])
        ct = self._encryptor.encrypt_symmetric(pt)
        return base.pack_blobs({"kind": "query"}, [ct.to_string()])

    def decrypt(self, reply: bytes) -> np.ndarray:
        vals = self.decrypt_slots(reply)
        if isinstance(self.layout, ReplicatedLayout):
            return self.layout.scores(vals)  # mean of the M replicas of each score
        return vals[self.layout.score_slots()]

    def decrypt_batch(self, reply: bytes, n: "int | None" = None) -> np.ndarray:
        """[n, k_out] scores of the first ``n`` (default ``batch``) queries of a batched reply."""
        n = self.batch if n is None else int(n)
        if not 1 <= n <= self.batch or not isinstance(self.layout, ReplicatedLayout):
            raise base.FHEError(f"n must be in [1, {self.batch}] for a {self.name} client, got {n}")
        return self.layout.scores(self.decrypt_slots(reply), n)


class SealClientV1(SealClient):
    """The previous layout and chain (``seal-v1``), for before/after benchmarks."""

    name = NAME_V1
    default_params = "n8192-v1"
    compact = False  # SEAL's own (uncompressed) serialisation


class SealProvider(base.ProviderBackend):
    """Evaluator built from public bytes only. See ``base.ProviderBackend``."""

    name = NAME

    def __init__(self, public_context: bytes):
        seal = _seal()
        meta, blobs = base.unpack_blobs(public_context, what="public context")
        if meta.get("backend") != self.name:
            raise base.DeserializationError(f"public context is for {meta.get('backend')!r}, not {self.name!r}")
        if set(meta) - {"backend", "d_in", "k_out", "params", "steps", "batch"}:
            raise base.DeserializationError(f"public context: unexpected fields {sorted(meta)}")
        if len(blobs) != 2:
            raise base.DeserializationError(f"public context: want 2 blobs (Galois keys, public key), got {len(blobs)}")
        self.d_in = base.optional_meta_int(meta, "d_in", 1, MAX_DIM, "public context")
        self.k_out = base.optional_meta_int(meta, "k_out", 1, MAX_DIM, "public context")
        try:
            self.params = CKKSParams.from_dict(meta["params"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise base.DeserializationError(f"public context: bad params ({e})") from None
        batch = base.optional_meta_int(meta, "batch", 1, MAX_BATCH, "public context") if "batch" in meta else 1
        try:
            self.layout = _layout(self.name, self.d_in, self.k_out, self.params.slots, batch)
        except ValueError as e:
            raise base.DeserializationError(f"public context: {e}") from None
        if meta.get("steps") != self.layout.rotation_steps:
            raise base.DeserializationError("public context: rotation steps do not match the layout")
        self._ctx = make_context(self.params)
        try:
            self._galois = self._ctx.from_galois_str(blobs[0])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad Galois keys ({e})") from None
        for step in self.layout.rotation_steps:
            if not self._galois.has_key(_galois_element(self.params, step)):
                raise base.DeserializationError(f"public context: no Galois key for rotation step {step}")
        try:
            self._public_key = self._ctx.from_public_str(blobs[1])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad public key ({e})") from None
        self._evaluator = seal.Evaluator(self._ctx)
        self._encoder = seal.CKKSEncoder(self._ctx)
        self._query_bytes = ciphertext_bytes(self.params)
        self._sanitizer = None
        # Rounding happens after the flood and is not part of the calibrated circuit (calibrate
        # sets 0): it is post-processing of a reply the client may decrypt anyway.
        self.reply_drop_bits = reply_drop_bits(self.params)
        self.compact = self.name == NAME
        if self.compact:
            from linalign.fhe import wire

            self._codec = wire.CompactCodec(self._ctx, seal.Encryptor(self._ctx, self._public_key).encrypt)

    def calibrate(self, v_dk, c_k, input_norm: float, policy, trials: int = 3, seed: int = 0) -> float:
        """B for this head and this provider's circuit (``calibrate`` with its backend and batch)."""
        return calibrate(self.params, v_dk, c_k, input_norm, policy, trials, seed, self.name, self.queries_per_message)

    def enable_privacy(self, bound_value: float, policy) -> float:
        """Every later reply is re-randomised (and, for seal-v1, masked) and flooded; returns
        the decoded flood std per slot.

        Args:
          bound_value: B from ``calibrate`` (evaluation-error bound, value units).
          policy: linalign.fhe.privacy.FloodPolicy.
        """
        if self.params.poly_modulus_degree < MIN_PRIVATE_RING:
            raise base.FHEError(
                f"N={self.params.poly_modulus_degree} cannot carry circuit-private (flooded) replies at useful precision "
                f"(its scale 2^{self.params.scale_bits} gives B ~ 1e-5, a flood of std ~ 2 per slot at "
                f"lambda_s = 12); use n8192 or n16384")
        self._sanitizer = self._make_sanitizer(self._public_key)
        return self._sanitizer.set_flood(bound_value, policy)

    def _make_sanitizer(self, public_key):
        from linalign.fhe.privacy import Sanitizer

        if isinstance(self.layout, ReplicatedLayout):
            return Sanitizer(self._ctx, self._galois, public_key, self.params)
        return Sanitizer(self._ctx, self._galois, public_key, self.params, self.layout.score_slots(), MASK_BITS)

    @property
    def reply_headroom_bits(self) -> int:
        """log2 of the largest |score| a sanitised reply can carry."""
        return self._make_sanitizer(None).headroom_bits

    @property
    def queries_per_message(self) -> int:
        return getattr(self.layout, "batch", 1)  # PackedLayout (seal-v1): one

    @property
    def replicas(self) -> int:
        """Copies of each score the client averages (1 for seal-v1)."""
        return getattr(self.layout, "replicas", 1)

    def is_private(self) -> bool:
        # The provider context is built from parameters and Galois keys only; there is no
        # code path that could hold a SecretKey here.
        return False

    def prepare(self, v_dk: np.ndarray, c_k: np.ndarray) -> Any:
        v, c = base.check_head(v_dk, c_k, self.d_in, self.k_out)
        scale = 2.0**self.params.scale_bits
        if isinstance(self.layout, ReplicatedLayout):
            # ct + conj(ct) doubles the real part: the head is halved here instead.
            head_scale = 2.0 ** (self.params.scale_bits - input_shift_bits(self.params))
            diags = [self._encoder.encode(row, head_scale) for row in self.layout.diagonals(v / 2)]
            # The bias is added after the conjugation (at the reply's level): not halved.
            bias = self._encoder.encode(self.layout.bias_slots(c), reply_scale(self._ctx, self.params))
            self._evaluator.mod_switch_to_inplace(bias, self._ctx.last_parms_id())
            return {"diags": diags, "bias": bias}
        diags = [self._encoder.encode(row, scale) for row in self.layout.diagonals(v)]
        return {"diags": diags, "bias": self.layout.bias_slots(c)}

    def _load_query(self, query: bytes):
        meta, blobs = base.unpack_blobs(query, what="query")
        if meta.get("kind") != "query" or len(blobs) != 1:
            raise base.DeserializationError("query: expected kind 'query' with one ciphertext")
        top = len(self.params.coeff_mod_bit_sizes) - 1
        if self.compact:
            return self._codec.load(blobs[0], "query", top, True, query_scale(self.params, self.layout))
        ct = load_ciphertext(self._ctx, blobs[0], "query", self._query_bytes)
        if ct.coeff_modulus_size() != top:
            raise base.DeserializationError("query: ciphertext is not at the top level")
        return ct

    def apply(self, query: bytes, head: Any) -> bytes:
        ct = self._load_query(query)
        try:
            if isinstance(self.layout, ReplicatedLayout):
                out = self._apply_replicated(ct, head)
            else:
                out = self._apply_windowed(ct, head)
        except RuntimeError as e:  # e.g. SEAL refuses a transparent result (an all-zero head)
            raise base.FHEError(f"SEAL evaluation failed: {e}") from None
        body = self._codec.dump(out, self.reply_drop_bits) if self.compact else out.to_string()
        return base.pack_blobs({"kind": "reply"}, [body])

    def _rotate(self, ct, step: int):
        try:
            return self._evaluator.rotate_vector(ct, step, self._galois)
        except (RuntimeError, ValueError) as e:  # SEAL: "Galois key not present"
            raise base.FHEError(f"rotation by {step} needs a Galois key the client did not send ({e})") from None

    def _conjugate(self, ct):
        try:
            return self._evaluator.complex_conjugate(ct, self._galois)
        except (RuntimeError, ValueError) as e:
            raise base.FHEError(f"conjugation needs the Galois key of step 0 ({e})") from None

    def _apply_replicated(self, ct, head):
        ev, diags, lay = self._evaluator, head["diags"], self.layout
        # Baby steps: rot(z, b) for b < n1, each one step on from the last (one key, step 1).
        babies = [ct]
        for _ in range(1, lay.n1):
            babies.append(self._rotate(babies[-1], 1))

        def inner(g):
            out = ev.multiply_plain(babies[0], diags[g * lay.n1])
            for b in range(1, lay.n1):
                ev.add_inplace(out, ev.multiply_plain(babies[b], diags[g * lay.n1 + b]))
            return out

        # Giant steps in Horner form on products (scale 2^100, before the rescale).
        acc = inner(lay.n2 - 1)
        for g in range(lay.n2 - 2, -1, -1):
            acc = self._rotate(acc, lay.n1)
            ev.add_inplace(acc, inner(g))
        # Fold and conjugation stay at the product's scale, so their key-switching noise is
        # divided by the rescale prime. (Measured: folding after the rescale, where a key switch
        # costs about a third, made the evaluation error ~100x larger, and the flood calibrated
        # on it with it; the conjugation alone after it, 6x.)
        for step in self.layout.fold_steps:
            ev.add_inplace(acc, self._rotate(acc, step))
        # Real parts (ct + conj ct = 2 Re, the head was halved) in every mode: the layout's
        # result is defined by it, and a client's imaginary parts never reach the reply.
        ev.add_inplace(acc, self._conjugate(acc))
        ev.rescale_to_next_inplace(acc)  # -> the last level: the reply is one prime wide
        ev.add_plain_inplace(acc, head["bias"])
        if self._sanitizer is not None:
            acc = self._sanitizer.finish(acc)
        return acc

    def _apply_windowed(self, ct, head):
        ev = self._evaluator
        acc = ev.multiply_plain(ct, head["diags"][0])
        for r in self.layout.diag_steps:
            acc = ev.add(acc, ev.multiply_plain(self._rotate(ct, r), head["diags"][r]))
        ev.rescale_to_next_inplace(acc)
        # Folding after the rescale: key switching at one prime is ~2x cheaper.
        for step in self.layout.fold_steps:
            acc = ev.add(acc, self._rotate(acc, step))
        bias = self._encoder.encode(head["bias"], acc.scale())
        ev.mod_switch_to_inplace(bias, acc.parms_id())
        ev.add_plain_inplace(acc, bias)
        # Slots other than the K scores hold partial sums of other column windows of V, and the
        # error term depends on V: the sanitizer masks the first and floods the second.
        if self._sanitizer is not None:
            acc = self._sanitizer(acc)
        return acc


class SealProviderV1(SealProvider):
    name = NAME_V1


def _galois_element(params: CKKSParams, step: int) -> int:
    """SEAL's Galois element for a slot rotation by ``step`` (0: conjugation), i.e. 3^step
    mod 2N (step >= 0), 2N - 1 for the conjugation."""
    m = 2 * params.poly_modulus_degree
    return m - 1 if step == 0 else pow(3, step, m)


def calibrate(params: CKKSParams, v_dk: np.ndarray, c_k: np.ndarray, input_norm: float, policy,
              trials: int = 3, seed: int = 0, backend: str = NAME, batch: int = 1) -> float:
    """The flooding bound B for this head: the provider's own keys, its exact circuit.

    Runs ``trials`` random queries of L2 norm ``input_norm`` through an unflooded provider
    (conjugation and, for seal-v1, the mask included; no re-randomisation) built from a fresh
    client of the provider's own, and compares every slot with the plaintext replay of the
    schedule (``batch`` queries per ciphertext: the provider's layout). Returns B (value
    units) = margin * sqrt(2) * largest slot error.
    """
    from linalign.fhe.privacy import noise_bound

    d, k = np.shape(v_dk)
    spec = base.get_backend(backend)
    client = spec.client(d, k, params, batch=batch) if batch != 1 else spec.client(d, k, params)
    provider = spec.provider(client.public_context())
    provider._sanitizer = provider._make_sanitizer(None)  # no flood, no re-randomisation
    provider.reply_drop_bits = 0  # the circuit's error only: rounding comes after the flood
    head = provider.prepare(v_dk, c_k)
    lay = provider.layout
    rng = np.random.default_rng(seed)
    errs = []
    for _ in range(trials):
        x = rng.standard_normal((batch, d))
        x *= input_norm / np.linalg.norm(x, axis=1, keepdims=True)
        want = lay.simulate_slots(x if batch > 1 else x[0], v_dk, c_k)
        if not isinstance(lay, ReplicatedLayout):
            keep = np.zeros(provider.params.slots, dtype=bool)
            keep[lay.score_slots()] = True
            want = np.where(keep, want, 0.0)
        query = client.encrypt_batch(x) if batch > 1 else client.encrypt(x[0])
        reply = provider.apply(query, head)
        errs.append(client.decrypt_slots(reply, 0) - want)  # 0: the reply is not rounded here
    return noise_bound(errs, policy)


base.register_backend(NAME, SealClient, SealProvider, "SEAL CKKS, replicated layout, reply at the last level")
base.register_backend(NAME_V1, SealClientV1, SealProviderV1, "SEAL CKKS, previous windowed layout (benchmarks)")

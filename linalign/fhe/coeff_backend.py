"""Rotation-free linear layer with coefficient encoding on SEAL (backend ``seal-coeff``).

The slot backends (``seal``) spend most of a query on key switching: a d=768, K=16 product
needs 12 rotations and a conjugation, each a key switch that costs about 1.5 ms at N=8192 and
a Galois key of ~0.8 MB, and flooding a slot-encoded reply needs N=8192 because the flood's
standard deviation per decoded slot is sqrt(N/2) times its per-coefficient one. Encoding the
query in the *coefficients* of the plaintext polynomial instead (as Cheetah and Apple's
nearest-neighbour search encode theirs, here with CKKS's fixed-point scales) removes both:

* z_q(X) = sum_i z_i X^i and W_qg(X) holds the head's columns reversed
  (``packing.CoefficientLayout``), so one ciphertext x plaintext multiply puts every score of
  a group in one coefficient of z_q W_qg: no rotation, no Galois key, no rescale, so the
  chain is one 60-bit prime at N=4096 (128-bit secure with 49 bits to spare);
* the reply carries c0 only at the score positions plus the whole c1, rounded
  (``wire.dump_sparse``); the other coefficients, partial sums of the head, never leave;
* the flood goes on the K score coefficients themselves, and each score receives exactly the
  flood's standard deviation (no sqrt(N/2)).

Circuit privacy (``enable_privacy``): every reply polynomial is re-randomised with a fresh
Enc_pk(0) (c1 = c1_q W + a u + e: pseudorandom, so it says nothing about W), then the K sent
coefficients are flooded with integer Gaussian noise of std sigma = 2^lambda_s sqrt(K) B,
where B bounds one score coefficient's evaluation noise (the fresh-encryption noise times the
head), measured by ``calibrate`` on the provider's own keys; by Pinsker the sent vector is then
within statistical distance 2^-(lambda_s + 1) of one whose noise does not depend on the head.
The rounding of c1 comes after the flood (post-processing). Threat model as for ``seal``
(docs/notes/helix.md): an honest-but-curious client learns x V + c and the flood; a client may
put anything in its polynomial (the padding coefficients included), which gives it K linear
functionals of V per query, the same rate as honest queries, and the query budget bounds.

Wire format (``base.pack_blobs``):
  public context: meta {backend, d_in, k_out, params, chunk}, blobs [public key]
  query:          meta {kind}, blobs [Q seeded ciphertexts (``wire.SeededEncryptor``)]
  reply:          meta {kind}, blobs [``wire.dump_sparse``]
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from linalign.fhe import base, wire
from linalign.fhe.packing import CoefficientLayout, negacyclic
from linalign.fhe.params import CoeffParams, get_coeff_params

NAME = "seal-coeff"
MAX_DIM = 1 << 15
MAX_PLAINTEXTS = 1024  # Q G head plaintexts per session (32 KB each at N=4096): a hostile batch cannot
# make the provider encode more
ROUNDING_BITS = 22  # reply c1 is rounded to 2^(product_scale - 22): ~4e-6 per score at N=4096


def reply_drop_bits(params: CoeffParams) -> int:
    """Low bits of every reply c1 coefficient rounded away. The error is e1 s with |e1| <=
    2^(t-1): std 0.29 2^t sqrt(2N/3), i.e. ~15 2^t at N = 4096, 3.6e-6 of a score unit with
    t = product_scale_bits - 22 (60 -> 32 bits per coefficient at c4096)."""
    return max(1, params.product_scale_bits - ROUNDING_BITS)


def _layout(params: CoeffParams, d: int, k: int, batch: int = 1) -> CoefficientLayout:
    n = params.poly_modulus_degree
    up = (n * params.prime_bits + 7) // 8 + wire.SEED_BYTES
    down = (n * (params.prime_bits - reply_drop_bits(params)) + 7) // 8
    try:
        lay = CoefficientLayout.make(d, k, n, up, down, batch)
    except ValueError as e:
        raise base.FHEError(str(e)) from None
    if lay.multiplies > MAX_PLAINTEXTS:
        raise base.FHEError(f"d={d}, K={k}, batch={batch} needs {lay.multiplies} head plaintexts "
                            f"(> {MAX_PLAINTEXTS}): use a smaller batch")
    return lay


def _int_coeffs(x: np.ndarray, scale: float, q: int, what: str) -> np.ndarray:
    """round(x scale) as int64, refusing values the prime cannot hold."""
    y = np.rint(np.asarray(x, np.float64) * scale)
    lim = min(q // 4, 2**62)
    if not np.all(np.abs(y) < lim):
        raise base.FHEError(f"{what}: an entry times the encoding scale 2^{math.log2(scale):.0f} exceeds "
                            f"the modulus (largest |entry| {np.abs(x).max():.3g})")
    return y.astype(np.int64)


def _seal_context(params: CoeffParams):
    from linalign.fhe.seal_backend import make_context

    return make_context(params)


class CoeffClient(base.ClientBackend):
    """Key owner. See ``base.ClientBackend``; ``params`` names a ``COEFF_PRESETS`` entry,
    ``batch`` queries share each message (``encrypt_batch`` / ``decrypt_batch``)."""

    name = NAME

    def __init__(self, d_in: int, k_out: int, params=None, batch: int = 1):
        import seal

        if int(d_in) < 1 or int(k_out) < 1 or max(int(d_in), int(k_out)) > MAX_DIM:
            raise base.FHEError(f"d_in and k_out must be in [1, {MAX_DIM}], got d_in={d_in}, k_out={k_out}")
        self.d_in, self.k_out = int(d_in), int(k_out)
        self.params = get_coeff_params(params)
        self.layout = _layout(self.params, self.d_in, self.k_out, batch)
        self.batch = self.layout.batch
        self._ctx = _seal_context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._secret_key = keygen.secret_key()
        public_key = keygen.create_public_key()
        self._q = self._ctx.first_context_data().parms().coeff_modulus()[0].value()
        self._codec = wire.CompactCodec(self._ctx, seal.Encryptor(self._ctx, self._secret_key).encrypt_symmetric)
        self._poly = wire.PolyTransform(self._codec)
        self._seeded = wire.SeededEncryptor(self._ctx, self._secret_key)
        s = self._poly.from_ntt(self._seeded._s[self._q][None], 1)[0].astype(np.int64)
        s = np.where(s > self._q // 2, s - self._q, s)
        if not np.all(np.abs(s) <= 1):
            raise base.FHEError("secret key is not ternary")
        # Row j of _rows[g]: the signed secret coefficients that meet c1 at coefficient j of c1 s
        # (negacyclic): (c1 s)_j = sum_i c1_i s_{j - i} with s_{-m} = -s_{N - m}.
        n = self.params.poly_modulus_degree
        i = np.arange(n)
        self._rows = []
        for g in range(self.layout.replies):
            pos = self.layout.positions(g)[:, None]
            self._rows.append((np.where(i <= pos, 1, -1) * s[(pos - i) % n]).astype(np.int64))
        meta = {"backend": self.name, "d_in": self.d_in, "k_out": self.k_out, "params": self.params.to_dict(),
                "chunk": self.layout.chunk}
        if self.batch != 1:
            meta["batch"] = self.batch
        self._public = base.pack_blobs(meta, [public_key.to_string()])

    def public_context(self) -> bytes:
        return self._public

    def secret_key_bytes(self) -> bytes:
        return self._secret_key.to_string()

    def encrypt(self, x_d: np.ndarray) -> bytes:
        return self._encrypt(base.check_vector(x_d, self.d_in, "query"))

    def encrypt_batch(self, x_nd: np.ndarray) -> bytes:
        """Up to ``batch`` queries [n, d_in] in one message; ``decrypt_batch`` reads the reply."""
        x = base.check_batch(x_nd, self.d_in, self.batch)
        return self._encrypt(x)

    def _encrypt(self, x: np.ndarray) -> bytes:
        scale = 2.0**self.params.query_scale_bits
        blobs = [self._seeded.encrypt(self._poly.plaintext(_int_coeffs(z, scale, self._q, "query"), scale, 1))
                 for z in self.layout.query_coeffs(x)]
        return base.pack_blobs({"kind": "query"}, blobs)

    def decrypt_coeffs(self, reply: bytes, drop_bits: "int | None" = None) -> "list[np.ndarray]":
        """Per reply polynomial g, its decrypted score coefficients (at ``layout.positions(g)``)
        in integer units of the product scale, exact (Python ints in object arrays).
        ``drop_bits``: the reply's rounding (0: unrounded, the calibration's)."""
        t = reply_drop_bits(self.params) if drop_bits is None else int(drop_bits)
        meta, blobs = base.unpack_blobs(reply, what="reply")
        if meta.get("kind") != "reply" or len(blobs) != 1:
            raise base.DeserializationError("reply: expected kind 'reply' with one blob")
        counts = [len(self.layout.positions(g)) for g in range(self.layout.replies)]
        q, out = self._q, []
        polys = wire.load_sparse(blobs[0], "reply", q, self.params.poly_modulus_degree, counts,
                                 2.0**self.params.product_scale_bits, t)
        for rows, (c0, c1) in zip(self._rows, polys):
            # c1 stands for c1 2^t; (c1 s)_j = rows[j] . c1, exact in int64 while
            # N 2^(bits(q) - t) < 2^63 (N = 4096, t = 28: 2^44).
            acc = rows @ c1.astype(np.int64) if t >= 8 else rows.astype(object) @ c1.astype(object)
            vals = []
            for c0_j, a in zip(c0.tolist(), acc.tolist()):
                v = (c0_j + (int(a) << t)) % q
                vals.append(v - q if v > q // 2 else v)
            out.append(np.asarray(vals, dtype=object))
        return out

    def _values(self, reply: bytes) -> "list[np.ndarray]":
        scale = 2.0**self.params.product_scale_bits
        return [np.asarray([float(v) / scale for v in g], np.float64) for g in self.decrypt_coeffs(reply)]

    def decrypt(self, reply: bytes) -> np.ndarray:
        return self.layout.scores(self._values(reply))

    def decrypt_batch(self, reply: bytes, n: "int | None" = None) -> np.ndarray:
        """[n, k_out] scores of the first ``n`` (default ``batch``) queries of a batched reply."""
        n = self.batch if n is None else int(n)
        if not 1 <= n <= self.batch:
            raise base.FHEError(f"n must be in [1, {self.batch}], got {n}")
        return self.layout.scores(self._values(reply), n)


class CoeffProvider(base.ProviderBackend):
    """Evaluator built from public bytes only: Q G plaintext multiplies per query."""

    name = NAME

    def __init__(self, public_context: bytes):
        import seal

        meta, blobs = base.unpack_blobs(public_context, what="public context")
        if meta.get("backend") != self.name:
            raise base.DeserializationError(f"public context is for {meta.get('backend')!r}, not {self.name!r}")
        if not {"backend", "d_in", "k_out", "params", "chunk"} <= set(meta) <= {
                "backend", "d_in", "k_out", "params", "chunk", "batch"}:
            raise base.DeserializationError(f"public context: fields {sorted(meta)} are not "
                                            "backend, chunk, d_in, k_out, params[, batch]")
        if len(blobs) != 1:
            raise base.DeserializationError(f"public context: want 1 blob (public key), got {len(blobs)}")
        self.d_in = base.optional_meta_int(meta, "d_in", 1, MAX_DIM, "public context")
        self.k_out = base.optional_meta_int(meta, "k_out", 1, MAX_DIM, "public context")
        try:
            self.params = CoeffParams.from_dict(meta["params"])
        except (TypeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad params ({e})") from None
        batch = base.optional_meta_int(meta, "batch", 2, MAX_DIM, "public context") if "batch" in meta else 1
        try:
            self.layout = _layout(self.params, self.d_in, self.k_out, batch)
        except base.FHEError as e:
            raise base.DeserializationError(f"public context: {e}") from None
        if meta["chunk"] != self.layout.chunk:
            raise base.DeserializationError("public context: chunk does not match the layout")
        self._ctx = _seal_context(self.params)
        try:
            self._public_key = self._ctx.from_public_str(blobs[0])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad public key ({e})") from None
        self._encryptor = seal.Encryptor(self._ctx, self._public_key)
        self._evaluator = seal.Evaluator(self._ctx)
        self._codec = wire.CompactCodec(self._ctx, self._encryptor.encrypt)
        self._poly = wire.PolyTransform(self._codec)
        self._q = self._ctx.first_context_data().parms().coeff_modulus()[0].value()
        self.reply_drop_bits = reply_drop_bits(self.params)
        self._private = False
        self._sigma = 0.0
        self._zero = None
        self._rng = np.random.default_rng(secrets.randbits(128))

    def is_private(self) -> bool:
        return False  # built from parameters and a public key only

    @property
    def reply_headroom_bits(self) -> int:
        """log2 of the largest |score| a reply coefficient carries (flood included: one bit)."""
        return self.params.headroom_bits - 1

    @property
    def replicas(self) -> int:
        return 1

    @property
    def queries_per_message(self) -> int:
        return self.layout.batch

    def calibrate(self, v_dk, c_k, input_norm: float, policy, trials: int = 3, seed: int = 0) -> float:
        """B for this head: ``calibrate`` on this provider's parameters and batch."""
        return calibrate(self.params, v_dk, c_k, input_norm, policy, trials, seed, self.layout.batch)

    def enable_privacy(self, bound_value: float, policy) -> float:
        """Re-randomise and flood every later reply; returns the flood's std per score.

        Args:
          bound_value: B, the bound on one score coefficient's evaluation error (value units).
          policy: linalign.fhe.privacy.FloodPolicy; sigma = 2^lambda_s sqrt(B K) B.
        """
        scale = 2.0**self.params.product_scale_bits
        sent = self.k_out * self.layout.batch
        bound_all = math.sqrt(sent) * float(bound_value)  # ||e||_2 over the B K sent coefficients
        self._sigma = policy.sigma(bound_all, scale)
        self._private = True
        return self._sigma / scale

    def prepare(self, v_dk: np.ndarray, c_k: np.ndarray) -> Any:
        v, c = base.check_head(v_dk, c_k, self.d_in, self.k_out)
        hs, ps = 2.0**self.params.head_scale_bits, 2.0**self.params.product_scale_bits
        w = self.layout.head_coeffs(v)
        plains = [[None if not np.any(ints := _int_coeffs(w[qi, g], hs, self._q, "head")) else
                   self._poly.plaintext(ints, hs, 1) for g in range(self.layout.replies)]
                  for qi in range(self.layout.queries)]
        bias = [np.mod(_int_coeffs(b, ps, self._q, "bias"), np.int64(self._q)).astype(np.uint64)
                for b in self.layout.bias_values(c)]
        return {"plains": plains, "bias": bias}

    def _load_query(self, query: bytes) -> list:
        meta, blobs = base.unpack_blobs(query, what="query")
        if meta.get("kind") != "query" or len(blobs) != self.layout.queries:
            raise base.DeserializationError(f"query: expected kind 'query' with {self.layout.queries} ciphertexts")
        scale = 2.0**self.params.query_scale_bits
        return [self._codec.load(b, "query", 1, True, scale) for b in blobs]

    def _zero_enc(self):
        import seal

        if self._zero is None:
            pt = seal.CKKSEncoder(self._ctx).encode(0.0, 2.0**self.params.product_scale_bits)
            self._zero = pt
        return self._encryptor.encrypt(self._zero)

    def apply(self, query: bytes, head: Any) -> bytes:
        from linalign.fhe.privacy import _residues, integer_gaussian

        cts = self._load_query(query)
        ev, q, lay = self._evaluator, self._q, self.layout
        bias = head["bias"]
        c0s, c1s = [], []
        for g in range(lay.replies):
            acc = None
            try:
                for qi, ct in enumerate(cts):
                    plain = head["plains"][qi][g]
                    if plain is None:
                        continue  # an all-zero block of the head
                    prod = ev.multiply_plain(ct, plain)
                    acc = prod if acc is None else ev.add(acc, prod)
                if self._private:
                    zero = self._zero_enc()
                    acc = zero if acc is None else ev.add(acc, zero)
            except RuntimeError as e:
                raise base.FHEError(f"SEAL evaluation failed: {e}") from None
            if acc is None:
                raise base.FHEError(f"head columns {g * lay.cols}.. are all zero: the reply would be transparent")
            ev.transform_from_ntt_inplace(acc)
            blob = acc.to_string()
            n = self.params.poly_modulus_degree
            data = np.frombuffer(blob, np.uint64, 2 * n, len(blob) - 2 * n * 8).reshape(2, n)
            pos = lay.positions(g)
            qq = np.uint64(q)
            c0 = (data[0, pos] + bias[g]) % qq
            if self._private:
                hi, lo = integer_gaussian(self._rng, self._sigma, len(pos))
                c0 = (c0 + _residues(hi, lo, [q])[0]) % qq
            c0s.append(c0)
            c1s.append(data[1])
        body = wire.dump_sparse(c0s, c1s, q, 2.0**self.params.product_scale_bits, self.reply_drop_bits)
        return base.pack_blobs({"kind": "reply"}, [body])


def calibrate(params: CoeffParams, v_dk: np.ndarray, c_k: np.ndarray, input_norm: float, policy,
              trials: int = 3, seed: int = 0, batch: int = 1) -> float:
    """B for this head: the provider's own keys, its exact circuit, no flood.

    Runs ``trials`` random queries of norm ``input_norm`` through an unflooded, unrounded
    provider of a fresh client of the provider's own and compares each decrypted score
    coefficient with the exact integer result of the encoded query and head (the encodings'
    rounding is the function computed, not noise). Returns B (value units) = margin * the
    largest error.
    """
    d, k = np.shape(v_dk)
    client = CoeffClient(d, k, params, batch)
    provider = CoeffProvider(client.public_context())
    provider.reply_drop_bits = 0  # the circuit's error only: rounding comes after the flood
    head = provider.prepare(v_dk, c_k)
    lay = provider.layout
    qs, hs = 2.0**params.query_scale_bits, 2.0**params.head_scale_bits
    to_int = np.vectorize(int, otypes=[object])  # exact Python integers
    w = to_int(np.rint(lay.head_coeffs(np.asarray(v_dk, np.float64)) * hs))
    bias = [to_int(np.rint(b * qs * hs)) for b in lay.bias_values(np.asarray(c_k, np.float64))]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(trials):
        x = rng.standard_normal((batch, d))
        x *= input_norm / np.linalg.norm(x, axis=1, keepdims=True)
        z = to_int(np.rint(lay.query_coeffs(x) * qs))
        got = client.decrypt_coeffs(provider.apply(client.encrypt_batch(x), head), drop_bits=0)
        for g in range(lay.replies):
            exact = sum(negacyclic(z[i], w[i, g]) for i in range(lay.queries))[lay.positions(g)] + bias[g]
            worst = max(worst, float(max(abs(int(a) - int(b)) for a, b in zip(got[g], exact))))
    if not worst > 0:
        raise base.FHEError("noise calibration failed: no error measured")
    return policy.margin * worst / (qs * hs)


base.register_backend(NAME, CoeffClient, CoeffProvider, "SEAL, coefficient encoding: no rotation, no Galois key")

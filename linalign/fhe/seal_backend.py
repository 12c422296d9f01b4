"""Packed CKKS linear layer on Microsoft SEAL through seal-python (``import seal``).

One ciphertext up, one ciphertext down, all K scores inside it (layout: ``packing.py``).
The client encrypts with the secret key (symmetric CKKS encryption is as secure as public-key
encryption and needs no public key on the wire); the provider receives only the parameters and
Galois keys for exactly the rotation steps the layout uses.

Wire format (``base.pack_blobs``):
  public context: meta {backend, d_in, k_out, params, steps}, blobs [galois keys]
  query / reply:  meta {kind}, blobs [ciphertext]
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from linalign.fhe import base
from linalign.fhe.packing import PackedLayout
from linalign.fhe.params import CKKSParams

NAME = "seal"
MAX_DIM = 1 << 15


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


def load_ciphertext(ctx, data: bytes, what: str):
    """Parses and validates a serialized SEAL ciphertext against ``ctx``."""
    seal = _seal()
    ct = seal.Ciphertext()
    try:
        ct.load_bytes(ctx, bytes(data))
    except (RuntimeError, ValueError) as e:
        raise base.DeserializationError(f"{what}: not a valid SEAL ciphertext ({e})") from None
    if ct.size() != 2:
        raise base.DeserializationError(f"{what}: ciphertext has {ct.size()} polynomials, want 2")
    return ct


class SealClient(base.ClientBackend):
    """Key owner. See ``base.ClientBackend``."""

    name = NAME

    def __init__(self, d_in: int, k_out: int, params=None):
        super().__init__(d_in, k_out, params)
        seal = _seal()
        self.layout = PackedLayout.make(self.d_in, self.k_out, self.params.slots)
        self._ctx = make_context(self.params)
        keygen = seal.KeyGenerator(self._ctx)
        self._secret_key = keygen.secret_key()
        galois = seal.GaloisKeys()
        keygen.create_galois_keys(self.layout.rotation_steps, galois)
        self._encryptor = seal.Encryptor(self._ctx, self._secret_key)
        self._decryptor = seal.Decryptor(self._ctx, self._secret_key)
        self._encoder = seal.CKKSEncoder(self._ctx)
        self._public = base.pack_blobs(
            {
                "backend": NAME,
                "d_in": self.d_in,
                "k_out": self.k_out,
                "params": self.params.to_dict(),
                "steps": self.layout.rotation_steps,
            },
            [galois.to_string()],
        )

    def public_context(self) -> bytes:
        return self._public

    def secret_key_bytes(self) -> bytes:
        """The serialized secret key, for tests that prove it never leaves the client."""
        return self._secret_key.to_string()

    def encrypt(self, x_d: np.ndarray) -> bytes:
        x = base.check_vector(x_d, self.d_in, "query")
        pt = self._encoder.encode(self.layout.replicate(x), 2.0**self.params.scale_bits)
        ct = self._encryptor.encrypt_symmetric(pt)
        return base.pack_blobs({"kind": "query"}, [ct.to_string()])

    def decrypt(self, reply: bytes) -> np.ndarray:
        meta, blobs = base.unpack_blobs(reply, what="reply")
        if meta.get("kind") != "reply" or len(blobs) != 1:
            raise base.DeserializationError("reply: expected kind 'reply' with one ciphertext")
        ct = load_ciphertext(self._ctx, blobs[0], "reply")
        vals = self._encoder.decode(self._decryptor.decrypt(ct))
        return np.asarray(vals, dtype=np.float64)[self.layout.score_slots()]


class SealProvider(base.ProviderBackend):
    """Evaluator built from public bytes only. See ``base.ProviderBackend``."""

    name = NAME

    def __init__(self, public_context: bytes):
        seal = _seal()
        meta, blobs = base.unpack_blobs(public_context, what="public context")
        if meta.get("backend") != NAME:
            raise base.DeserializationError(f"public context is for {meta.get('backend')!r}")
        if set(meta) - {"backend", "d_in", "k_out", "params", "steps"}:
            raise base.DeserializationError(f"public context: unexpected fields {sorted(meta)}")
        if len(blobs) != 1:
            raise base.DeserializationError(f"public context: want 1 blob (Galois keys), got {len(blobs)}")
        self.d_in = base.optional_meta_int(meta, "d_in", 1, MAX_DIM, "public context")
        self.k_out = base.optional_meta_int(meta, "k_out", 1, MAX_DIM, "public context")
        try:
            self.params = CKKSParams.from_dict(meta["params"])
        except (KeyError, TypeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad params ({e})") from None
        try:
            self.layout = PackedLayout.make(self.d_in, self.k_out, self.params.slots)
        except ValueError as e:
            raise base.DeserializationError(f"public context: {e}") from None
        if meta.get("steps") != self.layout.rotation_steps:
            raise base.DeserializationError("public context: rotation steps do not match the layout")
        self._ctx = make_context(self.params)
        try:
            self._galois = self._ctx.from_galois_str(blobs[0])
        except (RuntimeError, ValueError) as e:
            raise base.DeserializationError(f"public context: bad Galois keys ({e})") from None
        self._evaluator = seal.Evaluator(self._ctx)
        self._encoder = seal.CKKSEncoder(self._ctx)
        self._rng = np.random.default_rng(secrets.randbits(128))

    def is_private(self) -> bool:
        # The provider context is built from parameters and Galois keys only; there is no
        # code path that could hold a SecretKey here.
        return False

    def _slot_mask(self) -> np.ndarray:
        """[S] uniform noise of magnitude 2^(headroom - 2) outside the score slots, 0 on them."""
        bound = 2.0 ** (self.params.headroom_bits - 2)
        mask = self._rng.uniform(-bound, bound, self.params.slots)
        mask[self.layout.score_slots()] = 0.0
        return mask

    def prepare(self, v_dk: np.ndarray, c_k: np.ndarray) -> Any:
        v, c = base.check_head(v_dk, c_k, self.d_in, self.k_out)
        scale = 2.0**self.params.scale_bits
        diags = [self._encoder.encode(row, scale) for row in self.layout.diagonals(v)]
        return {"diags": diags, "bias": self.layout.bias_slots(c)}

    def apply(self, query: bytes, head: Any) -> bytes:
        meta, blobs = base.unpack_blobs(query, what="query")
        if meta.get("kind") != "query" or len(blobs) != 1:
            raise base.DeserializationError("query: expected kind 'query' with one ciphertext")
        ct = load_ciphertext(self._ctx, blobs[0], "query")
        if ct.coeff_modulus_size() != len(self.params.coeff_mod_bit_sizes) - 1:
            raise base.DeserializationError("query: ciphertext is not at the top level")
        ev, gk = self._evaluator, self._galois
        acc = ev.multiply_plain(ct, head["diags"][0])
        for r in self.layout.diag_steps:
            acc = ev.add(acc, ev.multiply_plain(ev.rotate_vector(ct, r, gk), head["diags"][r]))
        ev.rescale_to_next_inplace(acc)
        # Folding after the rescale: key switching at one prime is ~2x cheaper.
        for step in self.layout.fold_steps:
            acc = ev.add(acc, ev.rotate_vector(acc, step, gk))
        # Slots other than the K scores hold partial sums of other column windows of V; they
        # are drowned in fresh uniform noise so the client reads only the K scores
        # (the noise needs no level: it is added, not multiplied).
        bias = head["bias"] + self._slot_mask()
        bias = self._encoder.encode(bias, acc.scale())
        ev.mod_switch_to_inplace(bias, acc.parms_id())
        ev.add_plain_inplace(acc, bias)
        return base.pack_blobs({"kind": "reply"}, [acc.to_string()])


base.register_backend(NAME, SealClient, SealProvider, "SEAL CKKS, packed, minimal Galois keys")

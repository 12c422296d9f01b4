"""CKKS linear layer on TenSEAL, the library the paper used.

Two registered backends:

* "tenseal-dot" (the paper's baseline): one ``CKKSVector.dot`` per class. Each dot is a
  plaintext multiply plus a rotate-and-sum over all slots (log2(N/2) rotations), and each
  class's score comes back as its own ciphertext: 1 ciphertext up, K down.
* "tenseal": TenSEAL's own packed vector-matrix product ``CKKSVector.matmul`` (= ``mm``): one
  ciphertext up, one down holding all K scores. TenSEAL's Python API exposes no rotation, so
  the rotation-frugal layout of ``packing.py`` cannot be expressed here; ``matmul`` does a
  rotate-and-sum per column plus a rotation to place each score, and is measured to be slower
  than the dots (see docs/notes/helix.md). The fast packed path is the "seal" backend.

Wire format (``base.pack_blobs``):
  public context: meta {backend, d_in, k_out, params}, blobs [TenSEAL context without secret key]
  query: meta {kind}, blobs [CKKSVector]; reply: meta {kind}, blobs [CKKSVector] * (K or 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linalign.fhe import base
from linalign.fhe.params import CKKSParams

MAX_DIM = 1 << 15


def _ts():
    import tenseal as ts  # lazy: heavy native extension

    return ts


class _TensealClient(base.ClientBackend):
    name = ""

    def __init__(self, d_in: int, k_out: int, params=None):
        super().__init__(d_in, k_out, params)
        ts = _ts()
        if self.d_in > self.params.slots:
            raise base.FHEError(f"d_in={self.d_in} exceeds {self.params.slots} slots")
        self._ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.params.coeff_mod_bit_sizes),
        )
        self._ctx.global_scale = 2.0**self.params.scale_bits
        # Power-of-two rotation keys: what dot's rotate-and-sum and matmul need.
        self._ctx.generate_galois_keys()
        ctx_bytes = self._ctx.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False
        )
        self._public = base.pack_blobs(
            {"backend": self.name, "d_in": self.d_in, "k_out": self.k_out, "params": self.params.to_dict()},
            [ctx_bytes],
        )

    def public_context(self) -> bytes:
        return self._public

    def secret_key_bytes(self) -> bytes:
        """A serialization holding only parameters and the secret key, for leak tests."""
        return self._ctx.serialize(
            save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )

    def encrypt(self, x_d: np.ndarray) -> bytes:
        ts = _ts()
        x = base.check_vector(x_d, self.d_in, "query")
        return base.pack_blobs({"kind": "query"}, [ts.ckks_vector(self._ctx, x.tolist()).serialize()])

    def _load_reply(self, reply: bytes, n_ct: int) -> list:
        ts = _ts()
        meta, blobs = base.unpack_blobs(reply, what="reply")
        if meta.get("kind") != "reply" or len(blobs) != n_ct:
            raise base.DeserializationError(f"reply: expected kind 'reply' with {n_ct} ciphertexts")
        out = []
        for i, b in enumerate(blobs):
            try:
                out.append(ts.ckks_vector_from(self._ctx, b))
            except Exception as e:  # TenSEAL raises assorted native errors on bad bytes
                raise base.DeserializationError(f"reply ciphertext {i}: {e}") from None
        return out


def check_context_params(ctx, params: CKKSParams) -> None:
    """Refuses a TenSEAL context whose ring, modulus chain or scale is not the declared one.

    The metadata's ``params`` passed the 128-bit check, but the serialized context is what the
    library computes with; a peer could declare n8192 and send a weaker or a huge context.
    TenSEAL exposes no per-prime sizes, so the chain is compared through its length and the
    total bit count at each level (a product of b-bit primes has sum(b) - len + 1 .. sum(b) bits).
    """
    try:
        key_data = ctx.seal_context().data.key_context_data()
        n = key_data.parms().poly_modulus_degree()
        totals, data = [], key_data
        while data is not None:
            totals.append(int(data.total_coeff_modulus_bit_count()))
            data = data.next_context_data()
        scale = float(ctx.global_scale)
    except Exception as e:  # noqa: BLE001 - native bindings raise assorted errors on odd contexts
        raise base.DeserializationError(f"public context: parameters unreadable ({e})") from None
    bits = list(params.coeff_mod_bit_sizes)
    want = [sum(bits[: len(bits) - i]) for i in range(len(bits))]  # key level first
    if n != params.poly_modulus_degree:
        raise base.DeserializationError(f"public context: ring dimension {n}, declared {params.poly_modulus_degree}")
    if len(totals) != len(bits) or any(not w - (len(bits) - i) < t <= w for i, (t, w) in enumerate(zip(totals, want))):
        raise base.DeserializationError(f"public context: modulus chain of {totals} bits, declared primes {bits}")
    if scale != 2.0**params.scale_bits:
        raise base.DeserializationError(f"public context: scale {scale}, declared 2^{params.scale_bits}")


class _TensealProvider(base.ProviderBackend):
    name = ""

    def __init__(self, public_context: bytes):
        ts = _ts()
        meta, blobs = base.unpack_blobs(public_context, what="public context")
        if meta.get("backend") != self.name:
            raise base.DeserializationError(f"public context is for {meta.get('backend')!r}")
        if len(blobs) != 1:
            raise base.DeserializationError(f"public context: want 1 blob, got {len(blobs)}")
        self.d_in = base.optional_meta_int(meta, "d_in", 1, MAX_DIM, "public context")
        self.k_out = base.optional_meta_int(meta, "k_out", 1, MAX_DIM, "public context")
        try:
            self.params = CKKSParams.from_dict(meta["params"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise base.DeserializationError(f"public context: bad params ({e})") from None
        try:
            self._ctx = ts.context_from(blobs[0])
        except Exception as e:
            raise base.DeserializationError(f"public context: not a TenSEAL context ({e})") from None
        if self._ctx.is_private():
            raise base.PrivateContextError("public context carries a secret key; refusing it")
        if not self._ctx.has_galois_keys():
            raise base.DeserializationError("public context: no Galois keys")
        check_context_params(self._ctx, self.params)

    def is_private(self) -> bool:
        return bool(self._ctx.is_private())

    def _load_query(self, query: bytes):
        ts = _ts()
        meta, blobs = base.unpack_blobs(query, what="query")
        if meta.get("kind") != "query" or len(blobs) != 1:
            raise base.DeserializationError("query: expected kind 'query' with one ciphertext")
        try:
            ct = ts.ckks_vector_from(self._ctx, blobs[0])
        except Exception as e:
            raise base.DeserializationError(f"query: not a TenSEAL CKKS vector ({e})") from None
        if ct.size() != self.d_in:
            raise base.DeserializationError(f"query: vector size {ct.size()} != d_in {self.d_in}")
        return ct


class TensealDotClient(_TensealClient):
    name = "tenseal-dot"

    def decrypt(self, reply: bytes) -> np.ndarray:
        cts = self._load_reply(reply, self.k_out)
        return np.array([ct.decrypt()[0] for ct in cts], dtype=np.float64)


class TensealDotProvider(_TensealProvider):
    name = "tenseal-dot"

    def prepare(self, v_dk, c_k) -> Any:
        v, c = base.check_head(v_dk, c_k, self.d_in, self.k_out)
        return {"cols": [v[:, k].tolist() for k in range(self.k_out)], "bias": c.tolist()}

    def apply(self, query: bytes, head: Any) -> bytes:
        ct = self._load_query(query)
        outs = []
        for col, bias in zip(head["cols"], head["bias"]):
            outs.append((ct.dot(col) + [bias]).serialize())
        return base.pack_blobs({"kind": "reply"}, outs)


class TensealPackedClient(_TensealClient):
    name = "tenseal"

    def decrypt(self, reply: bytes) -> np.ndarray:
        (ct,) = self._load_reply(reply, 1)
        vals = np.asarray(ct.decrypt(), dtype=np.float64)
        if vals.shape != (self.k_out,):
            raise base.DeserializationError(f"reply decrypts to {vals.shape}, want ({self.k_out},)")
        return vals


class TensealPackedProvider(_TensealProvider):
    name = "tenseal"

    def prepare(self, v_dk, c_k) -> Any:
        v, c = base.check_head(v_dk, c_k, self.d_in, self.k_out)
        return {"v": v.tolist(), "bias": c.tolist()}

    def apply(self, query: bytes, head: Any) -> bytes:
        ct = self._load_query(query)
        out = ct.matmul(head["v"]) + head["bias"]
        return base.pack_blobs({"kind": "reply"}, [out.serialize()])


base.register_backend(
    "tenseal-dot", TensealDotClient, TensealDotProvider, "TenSEAL, one dot per class (baseline)"
)
base.register_backend("tenseal", TensealPackedClient, TensealPackedProvider, "TenSEAL matmul, packed")

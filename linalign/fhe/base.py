"""The encrypted-linear-layer interface HELIX runs on, and the backend registry.

Two roles, two classes, so the secret key cannot travel by accident:

* ``ClientBackend`` (party B) generates the keys, keeps the secret key, exports
  ``public_context()`` (parameters + public/evaluation keys, never the secret key), encrypts
  query vectors and decrypts replies.
* ``ProviderBackend`` (party A) is built from the public-context bytes alone and evaluates
  ``linear(ct, V [d, K], c [K]) -> ct``: one ciphertext x plaintext product plus bias.

Everything that crosses the wire is ``bytes``: the public context (once per session), one
query blob per vector (client -> provider), one reply blob per vector (provider -> client).
A blob may hold several library ciphertexts (the one-dot-per-class baseline replies with K
of them); ``pack_blobs``/``unpack_blobs`` give every backend the same self-describing
container, so sizes measured with ``len()`` are exactly what a socket carries.

Backends register under a name:

  "tenseal-dot"  TenSEAL, one ``dot`` per class (the paper's baseline): 1 ct up, K down.
  "tenseal"      TenSEAL, packed: all K scores in one ciphertext up and one down.
  "seal"         Microsoft SEAL (seal-python), packed with only the rotations it needs.
  "seal-coeff"   SEAL with coefficient encoding: no rotation, no Galois key, N=4096.

Usage:

  client = make_client("seal", d_in=768, k_out=16)
  provider = make_provider(client.public_context())
  head = provider.prepare(v_dk, c_k)            # encode the plaintext head once
  scores_k = client.decrypt(provider.apply(client.encrypt(z_d), head))
"""

from __future__ import annotations

import abc
import dataclasses
import json
import struct
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from linalign.fhe.params import CKKSParams, get_params


class FHEError(ValueError):
    """Bad input to, or unusable output from, an encrypted computation."""


class PrivateContextError(FHEError):
    """A context handed to the provider side holds a secret key."""


class DeserializationError(FHEError):
    """Bytes that should hold a context or ciphertext do not parse."""


# ---------------------------------------------------------------------------------------------
# A tiny self-describing container: magic, JSON metadata, named byte blobs.
_BLOB_MAGIC = b"LAFB"
_HDR = struct.Struct("<4sII")  # magic, meta length, number of blobs
_LEN = struct.Struct("<Q")
MAX_BLOB_META = 1 << 16
MAX_BLOBS = 4096  # a fit column carries ceil(n / S) ciphertexts; 4096 covers n = 2^24 at N = 8192


def _no_constants(name: str):
    raise ValueError(f"non-finite JSON constant {name}")


def _finite_float(text: str) -> float:
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"JSON number {text[:40]} is not a finite float")
    return v


def pack_blobs(meta: Mapping[str, Any], blobs: "list[bytes]") -> bytes:
    """Packs JSON metadata and a list of byte strings into one byte string.

    Args:
      meta: JSON-serialisable metadata (backend name, shapes, layout).
      blobs: library-serialized objects (contexts, keys, ciphertexts).

    Returns:
      bytes: magic | len(meta) | n | meta | (len_i | blob_i)*.
    """
    meta_b = json.dumps(dict(meta), sort_keys=True).encode()
    parts = [_HDR.pack(_BLOB_MAGIC, len(meta_b), len(blobs)), meta_b]
    for b in blobs:
        parts.append(_LEN.pack(len(b)))
        parts.append(bytes(b))
    return b"".join(parts)


def unpack_blobs(data: bytes, *, what: str = "blob") -> "tuple[dict, list[bytes]]":
    """Inverse of ``pack_blobs``; raises DeserializationError naming what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DeserializationError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HDR.size:
        raise DeserializationError(f"{what}: {len(data)} bytes is shorter than the header")
    magic, meta_len, n = _HDR.unpack_from(data, 0)
    if magic != _BLOB_MAGIC:
        raise DeserializationError(f"{what}: bad magic {magic!r}")
    if meta_len > MAX_BLOB_META:
        raise DeserializationError(f"{what}: metadata length {meta_len} exceeds {MAX_BLOB_META}")
    if n > MAX_BLOBS:
        raise DeserializationError(f"{what}: {n} blobs exceeds the limit of {MAX_BLOBS}")
    off = _HDR.size
    if off + meta_len > len(data):
        raise DeserializationError(f"{what}: truncated metadata")
    try:
        meta = json.loads(data[off : off + meta_len].decode(), parse_constant=_no_constants,
                          parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DeserializationError(f"{what}: metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DeserializationError(f"{what}: metadata is not a JSON object")
    off += meta_len
    blobs = []
    for i in range(n):
        if off + _LEN.size > len(data):
            raise DeserializationError(f"{what}: truncated before blob {i} of {n}")
        (ln,) = _LEN.unpack_from(data, off)
        off += _LEN.size
        if off + ln > len(data):
            raise DeserializationError(f"{what}: blob {i} claims {ln} bytes, {len(data) - off} left")
        blobs.append(data[off : off + ln])
        off += ln
    if off != len(data):
        raise DeserializationError(f"{what}: {len(data) - off} trailing bytes")
    return meta, blobs


# ---------------------------------------------------------------------------------------------
def check_vector(x_d: Any, d: int, name: str = "x") -> np.ndarray:
    """Returns x as float64 [d]; raises FHEError on wrong shape or non-finite entries."""
    x = np.asarray(x_d, dtype=np.float64)
    if x.shape != (d,):
        raise FHEError(f"{name} must have shape ({d},), got {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise FHEError(f"{name} has non-finite entries at indices {bad[:5].tolist()}")
    return x


def check_batch(x_nd: Any, d: int, batch: int) -> np.ndarray:
    """Returns up to ``batch`` queries as float64 [n, d]; raises FHEError on a wrong shape or a
    non-finite entry."""
    x = np.asarray(x_nd, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d or not 1 <= len(x) <= batch:
        raise FHEError(f"a batch must have shape (n <= {batch}, {d}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise FHEError("a batch contains NaN or infinity")
    return x


def check_head(v_dk: Any, c_k: Any, d: int, k: int) -> "tuple[np.ndarray, np.ndarray]":
    """Returns (V [d, k], c [k]) as float64; raises FHEError naming the problem."""
    v = np.asarray(v_dk, dtype=np.float64)
    c = np.asarray(c_k, dtype=np.float64)
    if v.shape != (d, k):
        raise FHEError(f"head V must have shape ({d}, {k}) for this context, got {v.shape}")
    if c.shape != (k,):
        raise FHEError(f"head bias c must have shape ({k},), got {c.shape}")
    for arr, nm in ((v, "V"), (c, "c")):
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise FHEError(f"head {nm} has non-finite entries, first at {bad[0].tolist()}")
    return v, c


@dataclasses.dataclass(frozen=True)
class WireSizes:
    """Bytes that cross the wire for one session and one query.

    Attributes:
      setup_bytes: public context (parameters, public key, Galois keys), sent once.
      query_bytes: client -> provider for one query vector.
      reply_bytes: provider -> client for one query vector.
    """

    setup_bytes: int
    query_bytes: int
    reply_bytes: int

    @property
    def per_query_bytes(self) -> int:
        return self.query_bytes + self.reply_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "per_query_bytes": self.per_query_bytes}


class ClientBackend(abc.ABC):
    """Party B: owns the secret key.

    Subclasses generate keys in ``__init__``.

    Attributes:
      name: registry name.
      params: the CKKS parameter set.
      d_in: query dimension d.
      k_out: number of scores K.
    """

    name: ClassVar[str] = ""
    batch: int = 1  # queries per ciphertext (``encrypt_batch``); backends that batch set it

    def __init__(self, d_in: int, k_out: int, params: "str | CKKSParams | None" = None):
        if int(d_in) < 1 or int(k_out) < 1:
            raise FHEError(f"d_in and k_out must be positive, got d_in={d_in}, k_out={k_out}")
        self.d_in = int(d_in)
        self.k_out = int(k_out)
        self.params = get_params(params)

    @abc.abstractmethod
    def public_context(self) -> bytes:
        """Serialized parameters and evaluation keys, WITHOUT the secret key."""

    @abc.abstractmethod
    def encrypt(self, x_d: np.ndarray) -> bytes:
        """Encrypts one query vector [d_in]; returns the query blob."""

    @abc.abstractmethod
    def decrypt(self, reply: bytes) -> np.ndarray:
        """Decrypts one reply blob into float64 scores [k_out]."""

    def encrypt_many(self, x_nd: np.ndarray) -> "list[bytes]":
        """Encrypts each row of x [n, d_in]; one query blob per row."""
        x = np.asarray(x_nd, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise FHEError(f"queries must have shape (n, {self.d_in}), got {x.shape}")
        return [self.encrypt(row) for row in x]

    def wire_sizes(self, provider: "ProviderBackend", head: Any = None) -> WireSizes:
        """Measures the bytes of one session setup and one query/reply round trip.

        Args:
          provider: a provider built from this client's public context.
          head: a prepared head; a random one is used when None (sizes do not depend on values).
        """
        if head is None:
            rng = np.random.default_rng(0)
            head = provider.prepare(
                rng.standard_normal((self.d_in, self.k_out)) / np.sqrt(self.d_in),
                np.zeros(self.k_out),
            )
        q = self.encrypt(np.zeros(self.d_in))
        r = provider.apply(q, head)
        return WireSizes(len(self.public_context()), len(q), len(r))


class ProviderBackend(abc.ABC):
    """Party A: evaluates the plaintext head on ciphertexts, never holds a secret key.

    Subclasses parse the public context in ``__init__`` and must raise PrivateContextError if
    it carries a secret key.

    Attributes:
      name, params, d_in, k_out: as announced by the client's public context.
    """

    name: ClassVar[str] = ""
    d_in: int
    k_out: int
    params: CKKSParams

    @abc.abstractmethod
    def __init__(self, public_context: bytes):
        ...

    @abc.abstractmethod
    def is_private(self) -> bool:
        """True iff the loaded context holds a secret key (must always be False here)."""

    @abc.abstractmethod
    def prepare(self, v_dk: np.ndarray, c_k: np.ndarray) -> Any:
        """Encodes the head (V [d_in, k_out], c [k_out]) as plaintexts once."""

    @abc.abstractmethod
    def apply(self, query: bytes, head: Any) -> bytes:
        """Enc(x) -> Enc(x V + c) for one query blob; returns the reply blob."""

    def linear(self, query: bytes, v_dk: np.ndarray, c_k: np.ndarray) -> bytes:
        """Enc(x) -> Enc(x V + c); prepares the head on every call (use prepare/apply to reuse)."""
        return self.apply(query, self.prepare(v_dk, c_k))

    @property
    def queries_per_message(self) -> int:
        """Queries one query blob carries (the client's ``batch``; budgets count these)."""
        return 1


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    name: str
    client: Callable[..., ClientBackend]
    provider: Callable[[bytes], ProviderBackend]
    doc: str


_REGISTRY: dict[str, BackendSpec] = {}
# Built-in backends live in modules imported on first use (they pull in tenseal / seal).
_LAZY: dict[str, str] = {
    "tenseal-dot": "linalign.fhe.tenseal_backend",
    "tenseal": "linalign.fhe.tenseal_backend",
    "seal": "linalign.fhe.seal_backend",
    "seal-v1": "linalign.fhe.seal_backend",
    "seal-coeff": "linalign.fhe.coeff_backend",
}


def register_backend(
    name: str,
    client: Callable[..., ClientBackend],
    provider: Callable[[bytes], ProviderBackend],
    doc: str = "",
) -> None:
    """Registers a backend pair under ``name`` (re-registering the same name replaces it)."""
    _REGISTRY[name] = BackendSpec(name, client, provider, doc)


def get_backend(name: str) -> BackendSpec:
    """Returns the backend registered as ``name``, importing its module on first use."""
    if name not in _REGISTRY and name in _LAZY:
        import importlib

        importlib.import_module(_LAZY[name])
    if name not in _REGISTRY:
        raise FHEError(f"unknown FHE backend {name!r}; known {available_backends()}")
    return _REGISTRY[name]


def available_backends() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def make_client(
    name: str, d_in: int, k_out: int, params: "str | CKKSParams | None" = None, **options
) -> ClientBackend:
    """Generates keys for backend ``name`` sized for d_in-dim queries and k_out scores.

    ``options``: backend-specific settings (``batch`` for ``seal``: queries per ciphertext)."""
    return get_backend(name).client(d_in, k_out, params, **options)


def make_provider(public_context: bytes) -> ProviderBackend:
    """Builds the provider side from public-context bytes; the backend name is inside them."""
    meta, _ = unpack_blobs(public_context, what="public context")
    name = meta.get("backend")
    if not isinstance(name, str):
        raise DeserializationError("public context: metadata has no backend name")
    return get_backend(name).provider(public_context)


def context_meta(public_context: bytes) -> dict:
    """The metadata of a public context: backend, d_in, k_out, params, layout."""
    meta, _ = unpack_blobs(public_context, what="public context")
    for key in ("backend", "d_in", "k_out", "params"):
        if key not in meta:
            raise DeserializationError(f"public context: metadata lacks {key!r}")
    return meta


def optional_meta_int(meta: Mapping, key: str, lo: int, hi: int, what: str) -> int:
    """Reads an int field from metadata and range-checks it (untrusted input)."""
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise DeserializationError(f"{what}: field {key!r}={v!r} not an int in [{lo}, {hi}]")
    return v


__all__ = [
    "FHEError",
    "PrivateContextError",
    "DeserializationError",
    "WireSizes",
    "ClientBackend",
    "ProviderBackend",
    "BackendSpec",
    "register_backend",
    "get_backend",
    "available_backends",
    "make_client",
    "make_provider",
    "context_meta",
    "pack_blobs",
    "unpack_blobs",
    "check_vector",
    "check_batch",
    "check_head",
]

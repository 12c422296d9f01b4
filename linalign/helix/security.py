"""HELIX transport security: TLS contexts, shared-secret authentication, peer limits, budgets,
request log.

* TLS through Python's ``ssl``: the server loads its certificate chain and key from files; with
  ``client_ca`` it requires a client certificate signed by that CA (mutual TLS) and takes the
  certificate's subject common name as the client's identity. The client verifies the server
  against ``ca`` and its host name. TLS 1.2 is the floor.
* Shared-secret authentication (HMAC-SHA256 challenge-response, both directions): the client
  sends HELLO {client_id, nonce_c}; the server answers CHALLENGE {nonce_s}; the client proves
  AUTH {mac = HMAC(secret, "helix-auth-v1|client|" id | nonce_c | nonce_s)}; the server compares
  with ``hmac.compare_digest`` (an unknown id is compared against a random secret, so timing does
  not reveal which ids exist) and replies READY {mac = HMAC(secret, "...|server|" ...)}, which
  the client checks, so a server without the secret cannot pose as the provider.
* Non-loopback addresses need TLS and an authentication method (``check_exposure``).
* ``Budget``: per identity, queries and fits over the server's lifetime. d + 1 queries (the
  zero vector and the d unit vectors) recover the provider's head V, c exactly, so the query
  budget is the one control on how much of the head a client can learn.
* ``request_logger``: one JSON line per request (identity, peer, type, sizes, ms, outcome),
  appended by the standard ``logging`` file handler (one write per line; an append-only log is
  never rewritten, so there is no half-written state to protect against).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging as pylogging
import pathlib
import secrets
import socket
import ssl
import threading
from typing import Optional

AUTH_TAG = b"helix-auth-v1"
NONCE_BYTES = 32
MAX_ID_CHARS = 128


class AuthError(PermissionError):
    """Authentication failed or is not possible with this configuration."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: bool, authenticated: bool, who: str) -> None:
    """Refuses a non-loopback address without TLS and authentication."""
    if is_loopback(host):
        return
    if not tls:
        raise ValueError(f"{who} {host!r} is not loopback: TLS is required (certificate and key files)")
    if not authenticated:
        raise ValueError(f"{who} {host!r} is not loopback: client authentication is required "
                         "(a shared-secret file or a client CA for mutual TLS)")


def server_tls_context(cert: str, key: str, client_ca: Optional[str] = None) -> ssl.SSLContext:
    """Server side: certificate chain and key from files; optional mutual TLS."""
    for path, what in ((cert, "certificate"), (key, "key")):
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"TLS {what} file {path} does not exist")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ValueError(f"TLS certificate {cert} / key {key} unusable: {e}") from None
    if client_ca:
        if not pathlib.Path(client_ca).is_file():
            raise FileNotFoundError(f"client CA file {client_ca} does not exist")
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_tls_context(ca: str, cert: Optional[str] = None, key: Optional[str] = None) -> ssl.SSLContext:
    """Client side: verifies the server against ``ca`` (host name included); optional client cert."""
    if not pathlib.Path(ca).is_file():
        raise FileNotFoundError(f"CA file {ca} does not exist")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def cert_identity(sock) -> Optional[str]:
    """The subject common name of the peer's verified certificate, or None."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return f"cert:{value}"
    return None


def load_secrets(path: str) -> dict:
    """{client_id: secret bytes} from a JSON file {"id": "hex secret", ...} (>= 16 bytes each)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"secrets file {path} does not exist")
    try:
        raw = json.loads(p.read_text())
        out = {str(k): bytes.fromhex(v) for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"secrets file {path}: want a JSON object of id -> hex secret ({e})") from None
    short = [k for k, v in out.items() if len(v) < 16]
    if short or not out:
        raise ValueError(f"secrets file {path}: secrets must be >= 16 bytes (short: {short[:5]}), at least one id")
    return out


def load_secret(path: str) -> bytes:
    """One client's secret: a file holding the hex secret."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"secret file {path} does not exist")
    try:
        s = bytes.fromhex(p.read_text().strip())
    except ValueError as e:
        raise ValueError(f"secret file {path}: not hex ({e})") from None
    if len(s) < 16:
        raise ValueError(f"secret file {path}: secret shorter than 16 bytes")
    return s


def mac(secret: bytes, role: str, client_id: str, nonce_c: bytes, nonce_s: bytes) -> str:
    """HMAC-SHA256 over the tag, the role, the id and both nonces (hex)."""
    msg = b"|".join([AUTH_TAG, role.encode(), client_id.encode(), nonce_c, nonce_s])
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


class SecretAuthenticator:
    """Server side of the challenge-response."""

    def __init__(self, table: dict):
        self._table = dict(table)
        self._decoy = secrets.token_bytes(32)

    def verify(self, client_id: str, nonce_c: bytes, nonce_s: bytes, claimed: str) -> Optional[bytes]:
        """Returns the client's secret if ``claimed`` is its MAC, else None (constant time)."""
        secret = self._table.get(client_id, self._decoy)
        ok = hmac.compare_digest(mac(secret, "client", client_id, nonce_c, nonce_s).encode(),
                                 str(claimed).encode())
        return secret if ok and client_id in self._table else None


def parse_hello(meta: dict) -> "tuple[str, bytes]":
    """(client_id, nonce_c) from a HELLO, validated."""
    cid, nonce = meta.get("client_id"), meta.get("nonce")
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_ID_CHARS or not cid.isprintable():
        raise ValueError(f"HELLO: client_id must be 1..{MAX_ID_CHARS} printable characters")
    if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
        raise ValueError(f"HELLO: nonce must be {NONCE_BYTES} bytes of hex")
    try:
        return cid, bytes.fromhex(nonce)
    except ValueError:
        raise ValueError("HELLO: nonce is not hex") from None


class PeerLimiter:
    """Counts open connections in total and per peer address."""

    def __init__(self, max_open: int, max_per_peer: int):
        self.max_open, self.max_per_peer = max_open, max_per_peer
        self._lock = threading.Lock()
        self._open: dict = {}

    def acquire(self, peer: str) -> Optional[str]:
        """None if admitted, else the reason for refusing."""
        with self._lock:
            total = sum(self._open.values())
            if total >= self.max_open:
                return f"server busy: {total} connections open (limit {self.max_open})"
            if self._open.get(peer, 0) >= self.max_per_peer:
                return f"too many connections from {peer} (limit {self.max_per_peer})"
            self._open[peer] = self._open.get(peer, 0) + 1
            return None

    def release(self, peer: str) -> None:
        with self._lock:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]

    def open_count(self) -> int:
        with self._lock:
            return sum(self._open.values())


class Budget:
    """Per-identity query and fit counts over the server's lifetime."""

    def __init__(self, queries: int, fits: int):
        self.limits = {"query": queries, "fit": fits}
        self._used: dict = {}
        self._lock = threading.Lock()

    def spend(self, identity: str, kind: str, n: int = 1) -> None:
        """Raises PermissionError once ``identity`` would exceed its ``kind`` budget."""
        with self._lock:
            used = self._used.setdefault(identity, {"query": 0, "fit": 0})
            if used[kind] + n > self.limits[kind]:
                raise PermissionError(f"{kind} budget of {self.limits[kind]} for {identity!r} is spent")
            used[kind] += n

    def left(self, identity: str) -> dict:
        with self._lock:
            used = self._used.get(identity, {"query": 0, "fit": 0})
            return {k: self.limits[k] - used[k] for k in self.limits}


def request_logger(path: Optional[str]) -> pylogging.Logger:
    """A logger writing one JSON line per request to ``path`` (or nowhere)."""
    log = pylogging.getLogger(f"linalign.helix.requests.{id(path)}")
    log.propagate = False
    log.setLevel(pylogging.INFO)
    if path and not log.handlers:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        h = pylogging.FileHandler(path, encoding="utf-8")
        h.setFormatter(pylogging.Formatter("%(message)s"))
        log.addHandler(h)
    return log


def peer_name(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "?"

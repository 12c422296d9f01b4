"""HELIX client (party B): fits its map under encryption and sends encrypted queries.

  with HelixClient(port, host="provider.example", tls_ca="ca.pem", client_id="org-b",
                   secret=load_secret("org-b.key")) as cl:
      info = cl.info()
      affine = cl.fit(z_public_nb, lam=1e-2)            # W, b stay with the client
      scores_nk = cl.query(affine.apply(z_query_nb))     # provider sees only ciphertexts

Every byte sent and received is counted in ``stats`` (setup vs. per-query traffic).

Range checks: the provider announces its input bound (largest query norm), the head's scale
and score bound, and its flooding noise. ``query`` refuses a row whose norm exceeds the input
bound (its scores could overflow the CKKS modulus and decrypt to garbage), and a decrypted
score beyond score bound + 8 flood std raises instead of being returned.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets as pysecrets
import socket
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from linalign.fhe import base
from linalign.helix import messages as M
from linalign.helix import security as S


@dataclasses.dataclass
class TrafficStats:
    setup_up: int = 0
    setup_down: int = 0
    query_up: int = 0
    query_down: int = 0
    queries: int = 0
    fit_up: int = 0
    fit_down: int = 0
    query_seconds: float = 0.0
    fit_seconds: float = 0.0


class HelixClient:
    """One connection to a HELIX provider.

    Args:
      port, host: the provider's address; a non-loopback host needs ``tls_ca``.
      timeout_s: socket timeout for every send and receive.
      tls_ca: CA file that signed the provider's certificate (turns TLS on).
      tls_cert, tls_key: this client's certificate (mutual TLS).
      server_hostname: name to verify in the provider's certificate (default: host).
      client_id, secret: shared-secret authentication (the server's secrets file has the id).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 600.0,
                 max_message_bytes: int = M.DEFAULT_MAX_MESSAGE_BYTES, *, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 server_hostname: Optional[str] = None, client_id: str = "client",
                 secret: Optional[bytes] = None):
        S.check_exposure(host, bool(tls_ca), True, "provider address")
        sock = M.no_delay(socket.create_connection((host, port), timeout=timeout_s))
        try:
            if tls_ca:
                ctx = S.client_tls_context(tls_ca, tls_cert, tls_key)
                sock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        self.max_message_bytes = max_message_bytes
        self.stats = TrafficStats()
        self._backend: Optional[base.ClientBackend] = None
        self._announced: dict = {}
        try:
            self.identity = self._hello(client_id, secret)
        except Exception:
            self._sock.close()
            raise

    def _hello(self, client_id: str, secret: Optional[bytes]) -> str:
        nonce_c = pysecrets.token_bytes(S.NONCE_BYTES)
        msg = self._exchange(M.MsgType.HELLO, {"client_id": client_id, "nonce": nonce_c.hex()})
        if msg.type == M.MsgType.CHALLENGE:
            if secret is None:
                raise S.AuthError("the provider requires a shared secret (client_id + secret)")
            try:
                nonce_s = bytes.fromhex(str(msg.meta.get("nonce", "")))
            except ValueError:
                raise M.ProtocolError("CHALLENGE nonce is not hex") from None
            if len(nonce_s) != S.NONCE_BYTES:
                raise M.ProtocolError("CHALLENGE nonce has the wrong length")
            msg = self._exchange(M.MsgType.AUTH, {"mac": S.mac(secret, "client", client_id, nonce_c, nonce_s)})
            if msg.type != M.MsgType.READY:
                raise M.ProtocolError(f"expected READY after AUTH, got {msg.type.name}")
            want = S.mac(secret, "server", client_id, nonce_c, nonce_s)
            if not hmac.compare_digest(want.encode(), str(msg.meta.get("mac", "")).encode()):
                raise S.AuthError("the provider did not prove knowledge of the shared secret")
        elif msg.type == M.MsgType.READY:
            if secret is not None:
                raise S.AuthError("a secret was given but the provider did not authenticate itself")
        else:
            raise M.ProtocolError(f"expected CHALLENGE or READY after HELLO, got {msg.type.name}")
        return str(msg.meta.get("identity", ""))

    def _exchange(self, t: M.MsgType, meta=None, blobs=None) -> M.Message:
        M.send(self._sock, t, meta, blobs)
        msg = M.recv(self._sock, self.max_message_bytes)
        if msg.type == M.MsgType.ERROR:
            raise M.PeerError(f"provider refused {t.name}: {msg.meta.get('error')}")
        return msg

    def close(self) -> None:
        try:
            M.send(self._sock, M.MsgType.BYE)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, t: M.MsgType, want: M.MsgType, meta=None, blobs=None):
        up = M.send(self._sock, t, meta, blobs)
        msg = M.recv(self._sock, self.max_message_bytes)
        if msg.type == M.MsgType.ERROR:
            raise M.PeerError(f"provider refused {t.name}: {msg.meta.get('error')}")
        if msg.type != want:
            raise M.ProtocolError(f"expected {want.name}, got {msg.type.name}")
        down = M.HEADER.size + len(base.pack_blobs(msg.meta, msg.blobs))
        return msg, up, down

    def info(self) -> dict:
        return self._call(M.MsgType.INFO, M.MsgType.INFO_REPLY)[0].meta

    def setup_inference(self, d: int, k: int, backend: str = "seal-coeff", params=None, batch: int = 1) -> None:
        """Generates fresh keys for this session and sends the public context.

        ``backend``: ``seal-coeff`` (coefficient encoding at N=4096: no Galois keys, ~2.5 ms and
        ~95 KB per query at d=768, K=16) or ``seal`` (slot encoding at N=8192, 100x more precise
        scores, ~10x slower). ``params``: the backend's preset (None: its default).

        ``batch`` (``seal``, ``seal-coeff``): queries per message; ``query`` then sends rows in groups of
        ``batch`` (each group counts ``batch`` queries against the provider's budget)."""
        options = {"batch": int(batch)} if batch != 1 else {}
        self._backend = base.make_client(backend, d, k, params, **options)
        msg, up, down = self._call(M.MsgType.INFER_SETUP, M.MsgType.READY, blobs=[self._backend.public_context()])
        try:
            self._announced = {key: float(msg.meta[key]) for key in ("head_scale", "score_bound", "input_norm",
                                                                      "flood_std")}
        except (KeyError, TypeError, ValueError) as e:
            raise M.ProtocolError(f"provider's READY lacks its bounds ({e})") from None
        a = self._announced
        if not all(np.isfinite(v) and v >= 0 for v in a.values()) or a["head_scale"] <= 0:
            raise M.ProtocolError(f"provider announced unusable bounds {a}")
        self.stats.setup_up += up
        self.stats.setup_down += down

    @property
    def announced(self) -> dict:
        """The provider's bounds for this session: head_scale, score_bound, input_norm, flood_std."""
        return dict(self._announced)

    def query(self, z_nd: np.ndarray) -> np.ndarray:
        """Encrypted scores for each row of z [n, d] (already mapped into A's space).

        Returns:
          [n, K] float64 decrypted scores x V + c.
        """
        if self._backend is None:
            raise RuntimeError("call setup_inference() before query()")
        z = np.asarray(z_nd, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self._backend.d_in:
            raise base.FHEError(f"queries must have shape (n, {self._backend.d_in}), got {z.shape}")
        a = self._announced
        norms = np.linalg.norm(z, axis=1)
        over = np.flatnonzero(~(norms <= a["input_norm"]))  # catches NaN too
        if over.size:
            i = int(over[0])
            raise base.FHEError(f"query row {i} has norm {norms[i]:.4g} > the provider's input bound "
                                f"{a['input_norm']:.4g}: its scores could overflow the CKKS modulus")
        limit = a["score_bound"] + 8 * a["flood_std"] + 1e-9
        out = np.empty((z.shape[0], self._backend.k_out))
        t0 = time.perf_counter()
        step = self._backend.batch
        for i in range(0, len(z), step):
            rows = z[i:i + step]
            try:
                q = self._backend.encrypt(rows[0]) if step == 1 else self._backend.encrypt_batch(rows)
            except base.FHEError as e:
                raise base.FHEError(f"query row {i}: {e}") from None
            msg, up, down = self._call(M.MsgType.QUERY, M.MsgType.RESULT, blobs=[q])
            if len(msg.blobs) != 1:
                raise M.ProtocolError(f"RESULT carries {len(msg.blobs)} blobs, want 1")
            if step == 1:
                scaled = self._backend.decrypt(msg.blobs[0])[None]
            else:
                scaled = self._backend.decrypt_batch(msg.blobs[0], len(rows))
            worst = float(np.max(np.abs(scaled)))
            if not worst <= limit:
                raise base.FHEError(f"query row {i}: decrypted |score| {worst:.4g} exceeds the possible "
                                    f"{limit:.4g} (input bound x head norm + flood): overflow or corrupt reply")
            out[i:i + len(rows)] = scaled / a["head_scale"]
            self.stats.query_up += up
            self.stats.query_down += down
            self.stats.queries += len(rows)
            if (i + len(rows)) // 100 > i // 100:
                logging.info("encrypted queries: %d / %d", i + len(rows), z.shape[0])
        self.stats.query_seconds += time.perf_counter() - t0
        return out

    def fit_stats(self, z_public_nb: np.ndarray, d_a: int, params=None, backend: "str | None" = None,
                  progress: "Callable[[int, int], None] | None" = None):
        """Runs the encrypted fitting exchange; returns linalign.align SufficientStats.

        Args:
          backend: a fit backend (``linalign.fhe.fitting.FIT_BACKENDS``; default seal-coeff-fit).
          progress: called with (columns done, columns in all) after each message.
        """
        from linalign.fhe.fitting import make_fit_client

        t0 = time.perf_counter()
        fc = make_fit_client(z_public_nb, d_a, backend, params)
        ready, up, down = self._call(M.MsgType.FIT_SETUP, M.MsgType.READY, blobs=[fc.public_context()])
        fc.set_provider_bounds(ready.meta)
        self.stats.setup_up += up
        self.stats.setup_down += down
        rows = []
        for i in range(fc.num_messages):
            msg, up, down = self._call(M.MsgType.FIT_COLUMN, M.MsgType.FIT_RESULT, blobs=[fc.encrypt_message(i)])
            if len(msg.blobs) != 1:
                raise M.ProtocolError(f"FIT_RESULT carries {len(msg.blobs)} blobs, want 1")
            rows.append(fc.decrypt_message(msg.blobs[0], i))
            self.stats.fit_up += up
            self.stats.fit_down += down
            cols = fc.message_columns(i)
            if progress is not None:
                progress(cols.stop, fc.d_b + 1)
            if i == fc.num_messages - 1 or cols.start // 32 != cols.stop // 32:
                logging.info("encrypted fit: %d / %d columns", cols.stop, fc.d_b + 1)
        self.stats.fit_seconds += time.perf_counter() - t0
        return fc.stats(np.concatenate(rows))

    def fit(self, z_public_nb: np.ndarray, lam: float, params=None, metadata_extra: Optional[dict] = None,
            backend: "str | None" = None, progress: "Callable[[int, int], None] | None" = None):
        """Encrypted fit + local ridge solve; returns linalign.align.affine_map.AffineMap."""
        from linalign.align.affine_map import AffineMap, MapMetadata
        from linalign.align.solve import solve

        info = self.info()
        if not info.get("d_a"):
            raise M.ProtocolError("provider offers no public-set embeddings to fit on")
        z = np.asarray(z_public_nb)
        if info.get("n_public") != z.shape[0]:
            raise base.FHEError(f"provider embedded {info.get('n_public')} public rows, client has {z.shape[0]}")
        stats = self.fit_stats(z, int(info["d_a"]), params, backend, progress)
        w, b = solve(stats, lam)
        meta = MapMetadata(d_b=int(z.shape[1]), d_a=int(info["d_a"]), lam=float(lam), n=int(z.shape[0]),
                           data_fingerprint=str(info.get("public_fingerprint", "")),
                           extra={"fit": "helix-encrypted", "fit_backend": backend or "seal-coeff-fit",
                                  **(metadata_extra or {})})
        return AffineMap(np.asarray(w, np.float32), np.asarray(b, np.float32), meta)

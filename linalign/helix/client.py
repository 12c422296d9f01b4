"""HELIX client (party B): fits its map under encryption and sends encrypted queries.

  with HelixClient(port) as cl:
      info = cl.info()
      affine = cl.fit(z_public_nb, lam=1e-2)            # W, b stay with the client
      scores_nk = cl.query(affine.apply(z_query_nb))     # provider sees only ciphertexts

Every byte sent and received is counted in ``stats`` (setup vs. per-query traffic).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Optional

import numpy as np
from absl import logging

from linalign.fhe import base
from linalign.helix import messages as M


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
    """One connection to a HELIX provider on 127.0.0.1."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 600.0,
                 max_message_bytes: int = M.DEFAULT_MAX_MESSAGE_BYTES):
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self.max_message_bytes = max_message_bytes
        self.stats = TrafficStats()
        self._backend: Optional[base.ClientBackend] = None

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

    def setup_inference(self, d: int, k: int, backend: str = "seal", params=None) -> None:
        """Generates fresh keys for this session and sends the public context."""
        self._backend = base.make_client(backend, d, k, params)
        _, up, down = self._call(M.MsgType.INFER_SETUP, M.MsgType.READY, blobs=[self._backend.public_context()])
        self.stats.setup_up += up
        self.stats.setup_down += down

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
        out = np.empty((z.shape[0], self._backend.k_out))
        t0 = time.perf_counter()
        for i, row in enumerate(z):
            try:
                q = self._backend.encrypt(row)
            except base.FHEError as e:
                raise base.FHEError(f"query row {i}: {e}") from None
            msg, up, down = self._call(M.MsgType.QUERY, M.MsgType.RESULT, blobs=[q])
            out[i] = self._backend.decrypt(msg.blobs[0])
            self.stats.query_up += up
            self.stats.query_down += down
            self.stats.queries += 1
            if (i + 1) % 100 == 0:
                logging.info("encrypted queries: %d / %d", i + 1, z.shape[0])
        self.stats.query_seconds += time.perf_counter() - t0
        return out

    def fit_stats(self, z_public_nb: np.ndarray, d_a: int, params="n8192"):
        """Runs the encrypted fitting exchange; returns linalign.align SufficientStats."""
        from linalign.fhe.fitting import FitClient

        t0 = time.perf_counter()
        fc = FitClient(z_public_nb, d_a, params)
        _, up, down = self._call(M.MsgType.FIT_SETUP, M.MsgType.READY, blobs=[fc.public_context()])
        self.stats.setup_up += up
        self.stats.setup_down += down
        rows = []
        for j in range(fc.num_columns):
            msg, up, down = self._call(M.MsgType.FIT_COLUMN, M.MsgType.FIT_RESULT, blobs=[fc.encrypt_column(j)])
            rows.append(fc.decrypt_column(msg.blobs[0], j))
            self.stats.fit_up += up
            self.stats.fit_down += down
            if j % 32 == 0:
                logging.info("encrypted fit: column %d / %d", j, fc.num_columns)
        self.stats.fit_seconds += time.perf_counter() - t0
        return fc.stats(np.stack(rows))

    def fit(self, z_public_nb: np.ndarray, lam: float, params="n8192", metadata_extra: Optional[dict] = None):
        """Encrypted fit + local ridge solve; returns linalign.align.affine_map.AffineMap."""
        from linalign.align.affine_map import AffineMap, MapMetadata
        from linalign.align.solve import solve

        info = self.info()
        if not info.get("d_a"):
            raise M.ProtocolError("provider offers no public-set embeddings to fit on")
        z = np.asarray(z_public_nb)
        if info.get("n_public") != z.shape[0]:
            raise base.FHEError(f"provider embedded {info.get('n_public')} public rows, client has {z.shape[0]}")
        stats = self.fit_stats(z, int(info["d_a"]), params)
        w, b = solve(stats, lam)
        meta = MapMetadata(d_b=int(z.shape[1]), d_a=int(info["d_a"]), lam=float(lam), n=int(z.shape[0]),
                           data_fingerprint=str(info.get("public_fingerprint", "")),
                           extra={"fit": "helix-encrypted", **(metadata_extra or {})})
        return AffineMap(np.asarray(w, np.float32), np.asarray(b, np.float32), meta)

"""Throw-away certificates for tests, benchmarks and trials on one machine (``openssl`` CLI).

Real deployments use certificates from the organisations' own CA; this makes a private CA, a
server certificate for ``localhost`` / 127.0.0.1 / ::1 and client certificates, with
``openssl req`` and ``openssl x509``. Keys are EC P-256.

  paths = make_ca(tmp, "ca")
  server = make_cert(tmp, "server", paths, "localhost", server=True)
  client = make_cert(tmp, "client-a", paths, "client-a")
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from typing import NamedTuple

from linalign.atomic import atomic_write


class CertPaths(NamedTuple):
    cert: pathlib.Path
    key: pathlib.Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("the openssl command is needed to make certificates")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr[-500:]}")


def make_ca(directory, name: str = "ca") -> CertPaths:
    """A self-signed CA certificate and key in ``directory``."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return CertPaths(cert, key)


def make_cert(directory, name: str, ca: CertPaths, common_name: str, server: bool = False) -> CertPaths:
    """A certificate for ``common_name`` signed by ``ca`` (server: SAN localhost, 127.0.0.1, ::1)."""
    d = pathlib.Path(directory)
    cert, key, csr, ext = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={common_name}")
    usage = "serverAuth" if server else "clientAuth"
    lines = [f"extendedKeyUsage={usage}", "basicConstraints=CA:FALSE"]
    if server:
        lines.append(f"subjectAltName=DNS:{common_name},DNS:localhost,IP:127.0.0.1,IP:::1")
    atomic_write(ext, "\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return CertPaths(cert, key)

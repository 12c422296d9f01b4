"""Install metadata: the core dependencies cover what the core imports; FHE pins live in `fhe`.

A fresh virtual environment with jax, flax, transformers and friends takes minutes to build, so
the proof that a core install (no `fhe` extra) loads a GGUF, extracts, fits and runs the
classification study is CI leg 2 (`.ci/run`: a new Python 3.12 venv from `pip install -e
.[dev,reference]`, then the real-model tests in CORE_REAL). Here the metadata that install reads
is checked against the code: every third-party module a core module imports must come from
install_requires. The GPU and TPU install paths are resolved by pip against the pinned set
(slow: they ask PyPI).
"""

import ast
import importlib.metadata
import json
import pathlib
import re
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Optional in the core, by design (each import is guarded or only used by the extra named).
OPTIONAL = {"torch": "reference", "accelerate": "reference", "pyarrow": "Parquet reader"}
FHE_ONLY = ("linalign/fhe/", "linalign/helix/")  # HELIX needs the fhe extra
# Import name -> distribution for the FHE libraries, which a core environment does not have.
FHE_DISTS = {"tenseal": ["tenseal"], "seal": ["seal-python"], "concrete": ["concrete-python"],
             "concrete_ml_extensions": ["concrete-ml-extensions"]}


def _setup_kwargs() -> dict:
    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        src = (REPO / "setup.py").read_text()
        exec(compile(src, str(REPO / "setup.py"), "exec"), {"__name__": "__main__"})
    finally:
        setuptools.setup = real
    return captured


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _imports(path: pathlib.Path) -> set:
    """Top-level names of every absolute import in a file (function-level ones included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_console_script_and_extras_are_declared():
    kw = _setup_kwargs()
    assert kw["entry_points"]["console_scripts"] == ["linalign = linalign.cli:console_main"]
    from linalign import cli
    assert callable(cli.console_main)
    # No Python upper limit and no exact pins in the core; the FHE pins only in the extra.
    assert "<" not in kw["python_requires"]
    assert not [r for r in kw["install_requires"] if "==" in r or "<" in r]
    fhe = {_dist_name(r): r for r in kw["extras_require"]["fhe"]}
    assert {"tenseal", "seal-python", "concrete-python"} <= set(fhe)
    assert all("==" in r or "<" in r for r in fhe.values())


def test_core_imports_are_core_dependencies():
    kw = _setup_kwargs()
    core = {_dist_name(r) for r in kw["install_requires"]}
    fhe = core | {_dist_name(r) for r in kw["extras_require"]["fhe"]}
    to_dist = {k: [d.lower().replace("_", "-") for d in v]
               for k, v in importlib.metadata.packages_distributions().items()}
    missing = []
    for path in sorted((REPO / "linalign").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        allowed = fhe if rel.startswith(FHE_ONLY) else core
        for mod in sorted(_imports(path) - set(sys.stdlib_module_names) - {"linalign"} - set(OPTIONAL)):
            dists = to_dist.get(mod) or FHE_DISTS.get(mod)
            assert dists, f"{rel} imports {mod!r}, which no installed distribution provides"
            if not set(dists) & allowed:
                missing.append(f"{rel}: {mod} ({', '.join(dists)})")
    # Transitive dependencies of a declared one are not enough: each import is declared itself.
    assert not missing, "imported but not declared:\n" + "\n".join(missing)


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("accelerator,plugin", [("cuda12", "jax-cuda12-plugin"), ("tpu", "libtpu")])
def test_accelerator_install_resolves_against_the_pinned_set(tmp_path, accelerator, plugin):
    """pip's resolver on `pip install . jax[<accelerator>]==<pinned jax>` with the lock file as
    constraints: what a GPU (SLURM) or TPU node installs. About 40 s each (PyPI metadata)."""
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from this machine")
    lock = (REPO / "requirements.lock").read_text()
    jax_pin = re.search(r"^jax==(\S+)$", lock, re.M).group(1)
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--quiet",
                        "--ignore-installed", "--report", str(report), "-c", str(REPO / "requirements.lock"),
                        str(REPO), f"jax[{accelerator}]=={jax_pin}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert got["jax"] == jax_pin and got["jaxlib"] == jax_pin and "linalign" in got
    assert plugin in got, sorted(got)
    # The node gets the core only: no torch, no FHE libraries.
    assert not {"torch", "tenseal", "seal-python", "concrete-python", "concrete-ml"} & set(got)

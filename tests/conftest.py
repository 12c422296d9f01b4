"""Test configuration: eight CPU devices for mesh tests, float64 available for references.

Optional libraries. The core suite runs without the `fhe` extra (TenSEAL, SEAL, Concrete ML)
and without the `reference` extra (torch): tests marked ``fhe`` are skipped with a reason when
an FHE library is absent, and a test that fails only because an optional library is not
installed is reported as skipped, naming it. With ``LINALIGN_REQUIRE_OPTIONAL=1`` (the pinned CI
leg, where everything is installed) neither happens, so a broken install fails loudly.
"""

import importlib.util
import os

import pytest

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# Import name -> how to get it. Only these may turn a failure into a skip.
_FHE = {"tenseal": "tenseal", "seal": "seal-python", "concrete": "concrete-python"}
OPTIONAL = {
    **{m: f"{pkg} (the fhe extra: pip install '.[fhe]')" for m, pkg in _FHE.items()},
    "concrete_ml_extensions": "concrete-ml-extensions (the fhe extra)",
    "onnx": "onnx (pinned FHE set, requirements.txt)",
    "onnxruntime": "onnxruntime (pinned FHE set, requirements.txt)",
    "brevitas": "brevitas (pinned FHE set, requirements.txt)",
    "torch": "torch (the reference extra: pip install '.[reference]')",
    "accelerate": "accelerate (the reference extra)",
    "pyarrow": "pyarrow (optional Parquet reader)",
}
REQUIRE_ALL = os.environ.get("LINALIGN_REQUIRE_OPTIONAL", "") == "1"


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def pytest_collection_modifyitems(config, items):
    missing = [m for m in _FHE if _absent(m)]
    if not missing or REQUIRE_ALL:
        return
    reason = ("needs the FHE libraries (the fhe extra: pip install '.[fhe]'); not installed: "
              + ", ".join(_FHE[m] for m in missing))
    for item in items:
        if item.get_closest_marker("fhe"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    exc = call.excinfo
    if REQUIRE_ALL or exc is None or not exc.errisinstance(ModuleNotFoundError):
        return
    root = (getattr(exc.value, "name", None) or "").split(".")[0]
    if root in OPTIONAL and _absent(root):
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), item.location[1] or 0,
                        f"Skipped: needs {OPTIONAL[root]}, which is not installed")


_EXIT = {}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # Concrete's compiled-FHE runtime, once it has executed a circuit, ends the interpreter with
    # status 0 from its own exit handler, hiding failed tests from the shell. When it was loaded,
    # leave with pytest's own status, after everything pytest prints has been flushed.
    import sys

    if "status" in _EXIT and any(m == "concrete" or m.startswith("concrete.") for m in sys.modules):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT["status"])

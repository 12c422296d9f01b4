"""setup.py's core dependencies cover every third-party module the core imports.

The core is everything outside linalign/fhe (the HE backends, the `fhe` extra). Imports are read
from the source (module level and inside functions alike), so a dependency added to the code but
not to install_requires fails here instead of at a user's first GGUF load."""

import ast
import importlib.metadata
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
# Imported only behind an explicit optional path, each named in its module's error message.
OPTIONAL = {"torch": "reference extra", "pyarrow": "optional Parquet reader"}


def _install_requires() -> set[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            names = [ast.literal_eval(e) for e in node.value.elts]
            return {re.split(r"[<>=!~;\[ ]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names}
    raise AssertionError("setup.py has no install_requires")


def _core_imports() -> dict[str, str]:
    found = {}
    for path in sorted((REPO / "linalign").rglob("*.py")):
        if "fhe" in path.relative_to(REPO / "linalign").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top != "linalign" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_core_import_is_a_declared_dependency():
    declared = _install_requires()
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for mod, where in _core_imports().items():
        if mod in OPTIONAL:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        assert names, f"{mod} (imported in {where}) is not installed here"
        if not names & declared:
            missing[mod] = (where, sorted(names))
    assert not missing, f"imported by the core but not in setup.py install_requires: {missing}"


def test_gguf_loading_dependencies_are_core_and_fhe_pins_are_not():
    declared = _install_requires()
    assert {"gguf", "transformers", "jinja2"} <= declared
    text = (REPO / "setup.py").read_text()
    core = text[text.index("install_requires"):text.index("extras_require")]
    assert "<2" not in core and "concrete" not in core and "python_requires=\">=3.11\"" in text

"""tests/conftest.py: optional libraries skip with a reason when absent, and only those.

Runs pytest in a subprocess with the root conftest as a plugin and chosen modules hidden
(``sys.modules[name] = None`` makes Python treat them as not installed)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

TESTS = '''
import pytest

@pytest.mark.fhe
def test_needs_fhe():
    import tenseal  # noqa: F401

def test_needs_torch():
    import torch  # noqa: F401

def test_needs_an_unknown_module():
    import no_such_module_anywhere  # noqa: F401

def test_plain():
    assert 1 + 1 == 2
'''


def _run(tmp_path, require_all: bool):
    (tmp_path / "test_opt.py").write_text(TESTS)
    code = ("import sys; sys.modules['tenseal'] = None; sys.modules['torch'] = None; "
            "import pytest; sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', "
            f"'-p', 'conftest', '-c', {str(REPO / 'pytest.ini')!r}, '--rootdir', {str(tmp_path)!r}, "
            f"{str(tmp_path / 'test_opt.py')!r}]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
           "LINALIGN_REQUIRE_OPTIONAL": "1" if require_all else "0"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def test_absent_optional_libraries_skip_with_the_install_hint(tmp_path):
    p = _run(tmp_path, require_all=False)
    out = p.stdout
    assert "1 failed, 1 passed, 2 skipped" in out, out[-2000:]
    assert "needs the FHE libraries (the fhe extra: pip install '.[fhe]'); not installed: tenseal" in out
    assert "needs torch (the reference extra: pip install '.[reference]'), which is not installed" in out
    assert "no_such_module_anywhere" in out  # not an optional library: a real failure


def test_require_optional_turns_the_skips_into_failures(tmp_path):
    p = _run(tmp_path, require_all=True)
    assert "3 failed, 1 passed" in p.stdout, p.stdout[-2000:]

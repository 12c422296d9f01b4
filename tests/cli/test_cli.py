"""The `linalign` command: subcommands, the shared flag vocabulary, one-line user errors.

Each check runs the real dispatcher in a fresh process (absl flags are process-global), the way
a user runs it: `python -m linalign.cli <command> ...` is what the `linalign` console script
calls (``linalign.cli:console_main``, declared in setup.py).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Every program, by its command line (the sub-subcommands of helix and distributed included).
PROGRAMS = {
    "extract": ["extract"], "fit": ["fit"], "experiments": ["experiments"],
    "helix serve": ["helix", "serve"], "helix fit": ["helix", "fit"], "helix query": ["helix", "query"],
    "assets": ["assets"], "distributed fit": ["distributed", "fit"],
    "distributed extract": ["distributed", "extract"], "distributed plan": ["distributed", "plan"],
    "plan": ["plan"],
}

# The shared vocabulary: which program takes which shared flag. A program that has the concept
# must use this name (old spellings must not be listed in its help).
SHARED = {
    "extract": {"model", "out_dir", "batch_size", "cache_dir", "mesh", "pooling", "dtype"},
    "fit": {"source", "target", "out_dir", "batch_size", "mesh", "lam", "dtype"},
    "experiments": {"out_dir", "batch_size", "cache_dir", "lam", "pooling"},
    "helix serve": set(),
    "helix fit": {"out_dir", "lam"},
    "helix query": {"out_dir"},
    "assets": {"cache_dir"},
    "distributed fit": {"source", "target", "out_dir", "batch_size", "mesh", "lam", "dtype"},
    "distributed extract": {"model", "out_dir", "batch_size", "cache_dir", "mesh", "pooling", "dtype"},
    "distributed plan": {"out_dir", "batch_size", "mesh"},
    "plan": {"out_dir", "batch_size", "mesh"},
}
VOCABULARY = {"source", "target", "out_dir", "batch_size", "cache_dir", "mesh", "lam", "pooling",
              "dtype", "model"}
OLD_NAMES = {"source_store", "target_store", "forward_batch", "fit_dtype", "batch", "out",
             "map_out", "report_dir", "extract_mesh"}


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def linalign(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "linalign.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _help_flags(text: str) -> dict:
    """flag name -> its help block (the lines under `flags:`)."""
    out, name = {}, None
    for line in text.split("\nflags:\n", 1)[1].splitlines():
        if line.startswith("  --"):
            name = line[4:].split("=")[0].split(" ")[0]
            out[name] = line
        elif name:
            out[name] += "\n" + line
    return out


@pytest.fixture(scope="module")
def helps():
    """`linalign <program> --help` for every program (one process each)."""
    out = {}
    for name, argv in PROGRAMS.items():
        r = linalign(*argv, "--help")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        out[name] = r.stdout
    return out


def test_top_level_help_lists_every_command():
    r = linalign("--help")
    assert r.returncode == 0
    for command in ("extract", "fit", "experiments", "helix", "assets", "distributed", "plan"):
        assert f"\n  {command} " in r.stdout, command
    bare = linalign()
    assert bare.returncode == 2 and "usage: linalign <command>" in bare.stdout


def test_each_subcommand_lists_only_its_own_flags_under_the_shared_names(helps):
    for name, text in helps.items():
        flags = set(_help_flags(text))
        assert flags & VOCABULARY == SHARED[name], name
        assert not flags & OLD_NAMES, (name, flags & OLD_NAMES)
        assert not {"alsologtostderr", "log_dir", "verbosity"} & flags, name  # absl's own
        assert {"debug", "verbose"} <= flags, name
    # Sub-subcommands list only their own flags: serve's server limits are not in query's help.
    assert "head" in _help_flags(helps["helix serve"]) and "head" not in _help_flags(helps["helix query"])
    assert "checkpoint_every" not in _help_flags(helps["distributed extract"])
    assert "corpus" not in _help_flags(helps["distributed fit"])


def test_shared_flags_have_one_default_and_help_everywhere(helps):
    blocks = {}
    for name, text in helps.items():
        for flag, block in _help_flags(text).items():
            blocks.setdefault(flag, {})[name] = block
    # Same text wherever the flag means the same thing.
    for flag in ("pooling", "cache_dir", "mesh"):
        first = {b.split("\n")[0] for b in blocks[flag].values()}
        assert len(first) == 1, (flag, first)
    assert all("(default: mean)" in b.replace("\n      ", " ") for b in blocks["pooling"].values())
    # Batch size: one default per kind (texts per forward pass, rows per fitting step).
    for name in ("extract", "experiments", "distributed extract", "plan"):
        assert "(default: 32)" in blocks["batch_size"][name], name
    for name in ("fit", "distributed fit"):
        assert "(default: 8192)" in blocks["batch_size"][name], name
    for name in ("fit", "distributed fit", "experiments"):
        assert "(default: auto)" in blocks["lam"][name].replace("\n      ", " "), name


def test_usage_text_keeps_its_line_breaks(helps):
    fit = helps["fit"]
    assert "  linalign fit --source=STORE_OR_NPY --target=STORE_OR_NPY --out_dir=DIR \\\n" in fit
    assert "\n      [--lam=auto" in fit
    assert "\n  linalign helix serve --host=0.0.0.0" in helps["helix serve"]


def test_python_dash_m_entry_points_still_work():
    for module in ("linalign.fit", "linalign.extract", "linalign.experiments", "linalign.assets"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "\nflags:\n" in r.stdout, (module, r.stderr[-1000:])
    r = subprocess.run([sys.executable, "-m", "linalign.distributed", "plan", "--help"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--seq=INT" in r.stdout


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    z_b = rng.normal(size=(600, 8)).astype(np.float32)
    z_a = (z_b @ rng.normal(size=(8, 12)) + 0.1 * rng.normal(size=(600, 12))).astype(np.float32)
    np.save(d / "zb.npy", z_b)
    np.save(d / "za.npy", z_a)
    (d / "full").mkdir()
    (d / "full" / "keep.txt").write_text("x")
    return d


def _mistakes(d):
    """(program argv, a mistake, a fragment the one-line message must contain)."""
    fit = ["fit", f"--source={d / 'zb.npy'}", f"--target={d / 'za.npy'}", f"--out_dir={d / 'o'}"]
    dfit = ["distributed", "fit", f"--source={d / 'zb.npy'}", f"--target={d / 'za.npy'}",
            f"--out_dir={d / 'o'}"]
    ext = ["extract", "--model=all-minilm-l6-v2", "--corpus=bbc_news", f"--out_dir={d / 'e'}"]
    return [
        (fit[:2], [], "--target, --out_dir are required"),
        (fit, ["--mesh=data=x"], "--mesh=data=x"),
        (fit, ["--lam=ridge"], "--lam=ridge"),
        (fit, ["--batch_size=0"], "--batch_size=0"),
        (fit, ["--bogus=1"], "Unknown command line flag 'bogus'"),
        (fit, ["--dtype=int8"], "--dtype=int8"),
        (["fit", f"--source={d / 'nope.npy'}", f"--target={d / 'za.npy'}", f"--out_dir={d / 'o'}"],
         [], "nope.npy"),
        (["fit", f"--source={d / 'zb.npy'}", f"--target={d / 'za.npy'}", f"--out_dir={d / 'full'}"],
         [], "pass --overwrite"),
        (ext, ["--pooling=max"], "--pooling=max"),
        (ext, ["--mesh=data=0"], "--mesh=data=0"),
        (["extract", "--model=no-such-model", "--corpus=bbc_news", f"--out_dir={d / 'e'}"], [],
         "no-such-model"),
        (["extract", "--model=all-minilm-l6-v2", f"--corpus={d / 'missing.txt'}", f"--out_dir={d / 'e'}"],
         [], "missing.txt"),
        (["experiments"], ["--study=nope"], "unknown study 'nope'"),
        (["experiments"], ["--study=demo", "--lam=often"], "--lam=often"),
        (["experiments"], ["--study=demo", "--pooling=max"], "--pooling=max"),
        (["helix", "fit"], [f"--public={d / 'zb.npy'}", f"--out_dir={d / 'h'}", "--lam=auto"],
         "takes a fixed number"),
        (["helix", "fit"], [f"--out_dir={d / 'h'}"], "--public is required"),
        (["helix", "query"], ["--map=/nonexistent", f"--embeddings={d / 'zb.npy'}", f"--out_dir={d / 'q'}"],
         "/nonexistent"),
        (["helix", "serve"], [], "--head is required"),
        (["helix"], ["--port=1"], "give a subcommand"),
        (["helix", "sreve"], [], "unknown subcommand 'sreve'"),
        (["assets"], [], "give --list and/or --fetch"),
        (["assets"], ["--fetch=nope"], "unknown asset 'nope'"),
        (dfit, ["--mesh=model"], "--mesh=model"),
        (dfit[:3], [], "--target, --out_dir are required"),
        (["distributed", "extract"], ["--model=x", "--corpus=y", f"--out_dir={d / 'e'}", "--batch_size=-3"],
         "--batch_size=-3"),
        (["plan"], ["--mesh=data=2,data=2"], "appears twice"),
        (["plan"], ["--model_config=llama-9000", "--d_b=0", "--cpu_devices=2"], "llama-9000"),
        (["distributed", "plan"], ["stray"], "unexpected arguments"),
        (["nosuchcommand"], [], "unknown command 'nosuchcommand'"),
    ]


def test_user_mistakes_exit_2_with_one_line(pair):
    seen = set()
    for argv, extra, fragment in _mistakes(pair):
        r = linalign(*argv, *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (argv, extra, r.returncode, r.stderr[-1500:])
        assert len(lines) == 1 and "error: " in lines[0], (argv, extra, r.stderr[-1500:])
        assert fragment in lines[0], (argv, extra, lines[0])
        assert "Traceback" not in r.stderr
        seen.add(" ".join(a for a in argv[:2] if not a.startswith("-")))
    assert {"fit", "extract", "experiments", "helix fit", "helix query", "helix serve", "assets",
            "distributed fit", "distributed extract", "plan", "distributed plan"} <= seen


def test_debug_shows_the_traceback(pair):
    argv = ["fit", f"--source={pair / 'nope.npy'}", f"--target={pair / 'za.npy'}",
            f"--out_dir={pair / 'o'}"]
    r = linalign(*argv, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = subprocess.run([sys.executable, "-m", "linalign.cli", *argv], cwd=REPO,
                       env={**_env(), "LINALIGN_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert "Traceback" in r.stderr


def test_fit_prints_at_most_five_lines_besides_its_progress_bar(pair, tmp_path):
    r = linalign("fit", f"--source={pair / 'zb.npy'}", f"--target={pair / 'za.npy'}",
                 f"--out_dir={tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr[-2000:]
    # tqdm redraws with carriage returns; everything else is a line of its own.
    lines = [ln for ln in (r.stdout + r.stderr).replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith("accumulating")]
    assert len(lines) <= 5, lines
    assert lines[-1] == f"wrote {tmp_path / 'out'}/map.safetensors, report.md, report.json"
    assert "accumulating" in r.stderr  # the progress bar
    assert not [ln for ln in lines if "orbax" in ln or "xla_bridge" in ln or "libtpu" in ln]


def test_distributed_fit_is_quiet_and_says_where_it_wrote(pair, tmp_path):
    r = linalign("distributed", "fit", f"--source={pair / 'zb.npy'}", f"--target={pair / 'za.npy'}",
                 f"--out_dir={tmp_path / 'out'}", "--cluster=none", "--checkpoint_every=1",
                 "--batch_size=100", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in (r.stdout + r.stderr).replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith("accumulating")]
    assert len(lines) <= 5, lines
    assert lines[-1].startswith(f"wrote {tmp_path / 'out'}/map.safetensors")
    assert "accumulating" in r.stderr


def test_old_flag_spellings_still_work(pair, tmp_path):
    r = linalign("distributed", "fit", f"--source_store={pair / 'zb.npy'}",
                 f"--target_store={pair / 'za.npy'}", f"--out_dir={tmp_path / 'out'}",
                 "--fit_dtype=float64", "--cluster=none", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    assert json.loads((tmp_path / "out" / "report.json").read_text())["n_train"] > 0

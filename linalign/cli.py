"""The ``linalign`` command: one entry point for every linalign program.

    linalign extract      hidden states of a corpus -> an embedding store
    linalign fit          an affine map between two models' embeddings
    linalign experiments  the paper's studies (report.md, results.json, plots)
    linalign helix        HELIX provider (serve) and client (fit, query)
    linalign assets       list and fetch the bundled real models and corpora
    linalign distributed  the fit and the extraction on many processes (and plan)
    linalign plan         per-device memory plan of a forward pass and a fit

Each program is an absl program whose module defines its flags in a function, so only the
chosen program's flags exist (and ``--help`` lists only those); ``python -m linalign.<x>``
runs the same code through ``main``. A user mistake (bad flag value, missing file, corrupt
input) ends with one line, ``<prog>: error: <message>``, and exit status 2; ``--debug`` (or
LINALIGN_DEBUG=1) shows the traceback instead. Logging is quiet unless ``--verbose``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex
import sys
import textwrap
from typing import Callable, Optional, Sequence

# name -> (module, one-line summary). The module defines PROGRAM (one program) or PROGRAMS
# (name -> Program, for commands with their own subcommands).
COMMANDS = {
    "extract": ("linalign.extract.__main__", "hidden states of a corpus -> an embedding store"),
    "fit": ("linalign.fit", "an affine map between two models' embeddings of the same texts"),
    "experiments": ("linalign.experiments.__main__", "the paper's studies: report.md, results.json, plots"),
    "helix": ("linalign.helix.__main__", "HELIX: provider (serve) and client (fit, query) over a socket"),
    "assets": ("linalign.assets.__main__", "list and fetch the bundled real models and corpora"),
    "distributed": ("linalign.distributed.__main__", "fit and extract on many processes; plan memory"),
    "plan": ("linalign.distributed.__main__", "per-device memory plan (same as distributed plan)"),
}
_KINDS = {"int": "INT", "float": "FLOAT", "string": "TEXT",
          "comma separated list of strings": "A,B,..."}
HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")
EXIT_USAGE = 2
COMMAND_LINE = ""  # the command being run, as typed (reports record it)


@dataclasses.dataclass
class Program:
    """One runnable program.

    Attributes:
      usage: the usage text printed by --help, line breaks kept (examples, what it writes).
      define: defines the program's flags (called once per process).
      main: ``main(argv) -> exit status or None``; argv[0] is the program name, the rest are
        positional arguments left after the flags.
      required: flags that must be given.
      summary: one line for the command list.
    """

    usage: str
    define: Callable[[], None]
    main: Callable[[list], Optional[int]]
    required: Sequence[str] = ()
    summary: str = ""
    own_flags: Optional[list] = None  # filled by the first define


def user_error_types() -> tuple:
    """Exceptions shown as one line: bad input and files, never a bug's KeyError/TypeError."""
    from absl import app, flags

    types = [ValueError, OSError, app.UsageError, flags.Error]
    # RuntimeErrors the user can act on: a failed asset download or checksum, and the HELIX
    # provider's refusal (an ERROR frame: budget spent, fit not allowed). Only modules already
    # loaded by the command can have raised them.
    for module, name in (("linalign.assets.store", "AssetError"), ("linalign.helix.messages", "PeerError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                      FileExistsError)) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return msg


def _define_common() -> None:
    from absl import flags

    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "Show the full traceback of an error (also LINALIGN_DEBUG=1).")
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Log progress details (absl INFO, library logs).")


def _ensure_defined(program: Program) -> list:
    from absl import flags

    from linalign.flags import HIDDEN

    if program.own_flags is None:
        before = set(flags.FLAGS)
        program.define()
        _define_common()
        # absl.logging defines its own flags when first imported; they are not the program's.
        new = [n for n in flags.FLAGS if n not in before and n not in HIDDEN
               and not flags.FLAGS.find_module_defining_flag(n, "").startswith("absl.")]
        program.own_flags = sorted(set(new) | {"debug", "verbose"})
    return program.own_flags


def format_help(prog: str, program: Program) -> str:
    """Usage text (line breaks kept) and the program's own flags, one block."""
    from absl import flags

    lines = [textwrap.dedent(program.usage).strip("\n"), "", "flags:"]
    for name in _ensure_defined(program):
        fl = flags.FLAGS[name]
        text = re.sub(r"^<[^>]*>: ", "", fl.help)
        if fl.boolean:
            kind = ""
        elif getattr(fl.parser, "enum_values", None):
            kind = "={" + ",".join(fl.parser.enum_values) + "}"
        else:
            kind = "=" + _KINDS.get(fl.flag_type(), "VALUE")
        req = " (required)" if name in program.required else ""
        lines.append(f"  --{name}{kind}{req}")
        if fl.boolean and fl.default:
            text += f" (default: on; --no{name} turns it off)"
        elif not fl.boolean and fl.default not in (None, "", []) and not req:
            default = ",".join(map(str, fl.default)) if isinstance(fl.default, list) else fl.default
            text += f" (default: {default})"
        lines.extend(textwrap.wrap(text, width=96, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def _quiet(verbose: bool) -> None:
    """absl INFO (orbax, jax backend probing) only with --verbose; warnings always."""
    import logging as pylogging

    from absl import logging

    logging.use_absl_handler()
    level = logging.INFO if verbose else logging.WARNING
    logging.set_verbosity(level)
    logging.set_stderrthreshold(level)
    for name in ("jax", "orbax", "absl", "transformers", "httpx"):
        pylogging.getLogger(name).setLevel(pylogging.INFO if verbose else pylogging.WARNING)


def _debug_on(argv: Sequence[str]) -> bool:
    return os.environ.get("LINALIGN_DEBUG", "") not in ("", "0") or any(
        a in ("--debug", "--debug=true", "--debug=1") for a in argv)


def run(prog: str, program: Program, args: Sequence[str]) -> int:
    """Parses ``args`` (flags and positionals, no program name) and runs ``program``."""
    from absl import flags

    debug = _debug_on(args)
    try:
        _ensure_defined(program)
    except user_error_types() as e:  # pragma: no cover - a definition bug
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if any(a in HELP_ARGS for a in args):
        print(format_help(prog, program))
        return 0
    F = flags.FLAGS
    F.unparse_flags()  # a second run in one process starts from the defaults
    try:
        rest = F([prog, *args])
    except flags.Error as e:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}; see {prog} --help", file=sys.stderr)
        return EXIT_USAGE
    missing = [n for n in program.required if F[n].value in (None, "", [])]
    if missing:
        print(f"{prog}: error: " + ", ".join(f"--{n}" for n in missing)
              + f" {'is' if len(missing) == 1 else 'are'} required; see {prog} --help", file=sys.stderr)
        return EXIT_USAGE
    _quiet(F["verbose"].value)
    if "cache_dir" in program.own_flags and F["cache_dir"].value:
        # One switch for every reader of the cache (assets, hidden states, compiled programs).
        os.environ["LINALIGN_CACHE"] = F["cache_dir"].value
    global COMMAND_LINE
    COMMAND_LINE = " ".join([prog, *map(shlex.quote, args)])
    debug = debug or F["debug"].value
    try:
        status = program.main(rest)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `linalign ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except user_error_types() as e:
        if debug:
            raise
        from absl import app

        hint = f"; see {prog} --help" if isinstance(e, (app.UsageError, flags.Error)) else ""
        print(f"{prog}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return EXIT_USAGE
    return int(status or 0)


def _programs(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    if command == "plan":
        return module.PROGRAMS["plan"]
    return getattr(module, "PROGRAMS", None) or module.PROGRAM


def _first_positional(args: Sequence[str]) -> Optional[int]:
    for i, a in enumerate(args):
        if a == "--":
            return None
        if not a.startswith("-"):
            return i
    return None


def top_help() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:{width}s}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (f"usage: linalign <command> [flags]\n\ncommands:\n{rows}\n\n"
            "`linalign <command> --help` lists a command's flags. Every command takes --debug "
            "(tracebacks)\nand --verbose (library logs). Shared flags have one name everywhere: "
            "--source/--target,\n--out_dir, --batch_size, --cache_dir, --mesh, --lam, --pooling, "
            "--dtype, --model.")


def dispatch(command: str, args: Sequence[str], prog: str) -> int:
    """Runs ``command`` (a key of COMMANDS) with ``args``; ``prog`` names it in messages."""
    target = _programs(command)
    if not isinstance(target, dict):
        return run(prog, target, args)
    names = "|".join(target)
    i = _first_positional(args)
    if i is None:
        if any(a in HELP_ARGS for a in args):
            width = max(map(len, target))
            print(f"usage: {prog} {{{names}}} [flags]\n\n" + "\n".join(
                f"  {n:{width}s}  {p.summary}" for n, p in target.items())
                + f"\n\n`{prog} <subcommand> --help` lists its flags.")
            return 0
        print(f"{prog}: error: give a subcommand, one of {{{names}}}; see {prog} --help",
              file=sys.stderr)
        return EXIT_USAGE
    sub = args[i]
    if sub not in target:
        print(f"{prog}: error: unknown subcommand {sub!r}; use one of {{{names}}}", file=sys.stderr)
        return EXIT_USAGE
    return run(f"{prog} {sub}", target[sub], [*args[:i], *args[i + 1:]])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``linalign <command> [flags]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_ARGS:
        print(top_help())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from linalign import __version__
        print(f"linalign {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"linalign: error: unknown command {command!r}; commands: {', '.join(COMMANDS)} "
              "(linalign --help)", file=sys.stderr)
        return EXIT_USAGE
    return dispatch(command, args[1:], f"linalign {command}")


def _exit(run_it: Callable[[], int]) -> None:
    """Runs ``run_it`` and exits with its status.

    A process of a multi-process job that fails leaves at once (``runtime.leave_if_failed``), so
    the launcher stops the others instead of every process waiting at a barrier for it.
    """
    try:
        status = run_it()
    except SystemExit:
        raise
    except BaseException as e:
        _leave_if_failed(1, e)
        raise
    _leave_if_failed(status)
    sys.exit(status)


def _leave_if_failed(status: int, error: Optional[BaseException] = None) -> None:
    runtime = sys.modules.get("linalign.distributed.runtime")  # never imports jax itself
    if runtime is not None:
        runtime.leave_if_failed(status, error)


def module_main(command: str, sub: Optional[str] = None) -> None:
    """``python -m linalign.<command>``: the same program, named as the user typed it."""
    mod = COMMANDS[command][0].removesuffix(".__main__")
    args = sys.argv[1:] if sub is None else [sub, *sys.argv[1:]]
    _exit(lambda: dispatch(command, args, f"python -m {mod}"))


def console_main() -> None:
    """The ``linalign`` console script."""
    _exit(main)


if __name__ == "__main__":
    from linalign.cli import console_main as _console_main  # the importable module's state

    _console_main()

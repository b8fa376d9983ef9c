"""The ``uniter`` command-line entry point.

Subcommands are discovered from the modules of :mod:`uniter_tf.commands`; see that package's
docstring for the contract each module follows.

What every command shares, so that each module need not repeat it:

* A clean terminal (:mod:`uniter_tf.console`): library logs, warnings and TensorFlow's C++ lines go to
  a log file (``$UNITER_LOG_DIR``, default ``~/.cache/uniter/logs``); ``--verbose`` or
  ``UNITER_VERBOSE=1`` brings them back.
* Errors a person can act on: a bad flag, a missing file or a bad value is reported in one line,
  ``uniter COMMAND: error: ...``, with exit status 2 and no traceback (it goes to the log file, and to
  the terminal with ``--verbose``). Any other failure exits 1 with one line naming the log file.
* Unknown flags are rejected, except by commands that run Apache Beam (``BEAM_FLAGS = True``): those
  pass them to Beam's PipelineOptions, and still reject a flag Beam does not know either.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from uniter_tf import __version__
from uniter_tf import commands as commands_package
from uniter_tf import console


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _command_modules():
    modules = []
    for info in sorted(pkgutil.iter_modules(commands_package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{commands_package.__name__}.{info.name}"))
    return modules


def _build(include_subparsers: bool = False):
    parser = _Parser(
            prog="uniter",
            description="UNITER image-text models in TensorFlow: data, training, export and serving.",
            epilog=f"Library logs and warnings go to a file per run in {console.default_log_dir()} (set "
                   f"${console.ENV_LOG_DIR} to change); --verbose or {console.ENV_VERBOSE}=1 shows them on the "
                   "terminal instead.")
    parser.add_argument("--version", action="version", version=f"uniter-tf {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help=f"Show library logs, warnings and tracebacks on the terminal (also {console.ENV_VERBOSE}=1).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    by_name: Dict[str, Tuple[object, argparse.ArgumentParser]] = {}
    for module in _command_modules():
        beam = bool(getattr(module, "BEAM_FLAGS", False))
        # No abbreviations where other flags go to Beam: '--region' (Dataflow) must not become ours.
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP, allow_abbrev=not beam)
        module.add_arguments(sub)
        # Also accepted after the command; SUPPRESS keeps a value given before it.
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="Show library logs, warnings and tracebacks on the terminal.")
        sub.set_defaults(_run=module.run)
        by_name[module.NAME] = (module, sub)
    if include_subparsers:
        return parser, by_name
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``uniter`` argument parser with every subcommand."""
    return _build()


def _unknown_flags_message(command: str, sub: argparse.ArgumentParser, extras: List[str], beam: bool,
                           beam_options: Sequence[str] = ()) -> str:
    flags = [arg for arg in extras if arg.startswith("-")]
    known = [option for action in sub._actions for option in action.option_strings]  # pylint: disable=protected-access
    known += [option for option in beam_options if option not in ("-h", "--help")]
    hints = []
    for flag in flags:
        close = difflib.get_close_matches(flag.split("=", 1)[0], known, n=1, cutoff=0.75)
        if close:
            hints.append(close[0] if len(flags) == 1 else f"{close[0]} (for {flag.split('=', 1)[0]})")
    who = f"neither uniter {command} nor Apache Beam's pipeline options know them" if beam else None
    message = f"unrecognized arguments: {' '.join(extras)}"
    if who:
        message += f" ({who})"
    if hints:
        message += f"; did you mean {' or '.join(hints)}?"
    return message


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    elif isinstance(error, console.UserError):
        text = str(error)
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


# Exceptions whose message describes a problem with the user's input (a file, a value), reported as a
# user error. ValueError is what this library raises for bad configs and data; OSError for paths.
USER_ERRORS = (console.UserError, ValueError, OSError)


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, USER_ERRORS):
        return True
    tensorflow = sys.modules.get("tensorflow")
    # A path TensorFlow cannot find (checkpoint, records) is the user's to fix, like FileNotFoundError.
    return tensorflow is not None and isinstance(error, tensorflow.errors.NotFoundError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one ``uniter`` command and returns its exit status.

    Args:
        argv: the arguments after ``uniter``; default ``sys.argv[1:]``. When given (tests, other
            programs calling in), file descriptor 2 is left alone and everything is restored on return;
            when omitted (the ``uniter`` program) fd 2 goes to the log file until the process ends, so
            that TensorFlow's C++ lines and its interpreter-exit noise stay out of the terminal.

    Returns:
        0 on success, 1 when the command failed (e.g. a parity mismatch, an unexpected error), 2 for a
        user error (bad flag, missing file, bad value).
    """
    owns_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    console.set_library_env(console.verbose_from_env() or "--verbose" in argv, owns_process)
    parser, by_name = _build(include_subparsers=True)
    args, extras = parser.parse_known_args(argv)
    if not getattr(args, "_run", None):
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        parser.print_help()
        return 2
    module, sub = by_name[args.command]
    beam = bool(getattr(module, "BEAM_FLAGS", False))
    if extras and not beam:
        sub.error(_unknown_flags_message(args.command, sub, extras, beam=False))

    if owns_process:
        # Before any command starts TensorFlow (it reads TF_XLA_FLAGS once): XLA-compiled training steps
        # and serving functions then compile once per shape and machine, not once per process.
        from uniter_tf.training.performance import enable_xla_persistent_cache  # pylint: disable=import-outside-toplevel

        enable_xla_persistent_cache()
    verbose = bool(getattr(args, "verbose", False)) or console.verbose_from_env()
    session = console.quiet_libraries(None, verbose, name=args.command, redirect_fd=owns_process)
    prog = f"uniter {args.command}"
    try:
        if beam:
            from uniter_tf.commands import _beam_flags  # pylint: disable=import-outside-toplevel

            args.beam_args = _beam_flags.check_beam_flags(list(getattr(args, "beam_args", [])) + extras)
        status = int(args._run(args) or 0)  # pylint: disable=protected-access
    except _beam_flags_error() as error:
        session.log_exception(error)
        message = _unknown_flags_message(args.command, sub, error.flags, beam=True, beam_options=error.beam_options)
        session.say(f"{prog}: error: {message} (see '{prog} --help')")
        status = 2
    except Exception as error:  # pylint: disable=broad-except
        session.log_exception(error)
        if not _is_user_error(error):
            where = f"; the traceback is in {session.log_path}" if session.log_path else ""
            session.say(f"{prog}: failed: {type(error).__name__}: {_one_line(error)}{where}")
            status = 1
        else:
            session.say(f"{prog}: error: {_one_line(error)}")
            status = 2
    except KeyboardInterrupt:
        session.say(f"{prog}: interrupted")
        status = 130
    except SystemExit as exit_request:
        # A command that calls sys.exit(message) means a user error too.
        if isinstance(exit_request.code, str):
            session.say(" ".join(exit_request.code.split()))
            status = 2
        else:
            status = int(exit_request.code or 0)
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        if owns_process:
            session.detach_terminal()  # shutdown noise (AtomicFunction.__del__, Beam threads) -> the log
        else:
            session.restore()
    return status


def _beam_flags_error():
    from uniter_tf.commands._beam_flags import UnknownBeamFlags  # pylint: disable=import-outside-toplevel

    return UnknownBeamFlags


if __name__ == "__main__":
    sys.exit(main())

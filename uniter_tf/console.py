"""A clean terminal for ``uniter`` commands: our own lines on screen, library chatter in a log file.

TensorFlow, XLA, absl, gRPC, Beam and google-api-core write a lot to stderr: CUDA/cuDNN/cuBLAS/TensorRT
factory lines from C++ at import, ``FutureWarning``\\ s, Beam's INFO logs, ``Exception ignored in
AtomicFunction.__del__`` at interpreter exit. None of it helps a person running a command, all of it
helps one debugging a failure. :func:`quiet_libraries` therefore sends it to a log file and keeps the
terminal for the command's own output:

* ``sys.stdout`` is left alone: results and progress lines go there as before.
* Python warnings (``FutureWarning`` and friends) and "Exception ignored in ..." reports of objects
  finalised late go to the log file.
* ``logging``: every record at INFO and above goes to the log file; records of our own packages
  (``uniter_tf``, ``serving``, ``pipeline``, ``components``) are also shown on the terminal.
* With ``redirect_fd=True`` (the ``uniter`` process itself) file descriptor 2 goes to the log file, so
  C++ logs of TensorFlow / XLA / gRPC and the stderr of child processes (Beam workers) land there too;
  ``sys.stderr`` is re-opened on the real terminal, so ``print(..., file=sys.stderr)`` still shows.
  :meth:`Console.detach_terminal` (at the very end of a program) sends ``sys.stderr`` to the log as
  well, for what the interpreter prints while it shuts down.

``UNITER_VERBOSE=1`` (or ``uniter --verbose``) turns all of this off: libraries log to the terminal as
they normally do and errors come with their traceback.

Where logs go: ``$UNITER_LOG_DIR`` if set, else ``$XDG_CACHE_HOME/uniter/logs`` (``~/.cache/uniter/logs``),
one file per run named ``<command>-<YYYYmmdd-HHMMSS>-<pid>.log``; the newest :data:`KEEP_LOG_FILES` are
kept. A caller can also pass a directory or a ``.log`` file of its own (the demo writes to
``demo_output/logs/``).

Example::

    from uniter_tf import console

    with console.quiet_libraries("out/logs", verbose=console.verbose_from_env()) as session:
        import tensorflow as tf  # its import-time lines go to out/logs/uniter-....log
        ...
        session.say("done")      # on the terminal
"""

from __future__ import annotations

import datetime
import glob
import io
import logging
import os
import sys
import tempfile
import traceback
from typing import Optional, Sequence, TextIO

ENV_VERBOSE = "UNITER_VERBOSE"
ENV_LOG_DIR = "UNITER_LOG_DIR"
# Logger namespaces whose records are the command's own lines and stay on the terminal.
OWN_LOGGERS: Sequence[str] = ("uniter_tf", "serving", "pipeline", "components", "__main__")
KEEP_LOG_FILES = 50
_TRUE = ("1", "true", "yes", "on")


class UserError(Exception):
    """A problem with what the user asked for (a missing file, a bad flag or config value).

    The ``uniter`` entry point prints its message as one line, ``uniter COMMAND: error: MESSAGE``, and
    exits with status 2, without a traceback (``--verbose`` shows it).
    """


def verbose_from_env(environ: Optional[dict] = None) -> bool:
    """Whether ``UNITER_VERBOSE`` asks for library logs on the terminal (``1``, ``true``, ``yes``, ``on``)."""
    environ = os.environ if environ is None else environ
    return str(environ.get(ENV_VERBOSE, "")).strip().lower() in _TRUE


def default_log_dir(environ: Optional[dict] = None) -> str:
    """The directory of the log files: ``$UNITER_LOG_DIR``, else ``$XDG_CACHE_HOME/uniter/logs``."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_LOG_DIR):
        return os.path.abspath(os.path.expanduser(environ[ENV_LOG_DIR]))
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "uniter", "logs")


def new_log_path(name: str = "uniter", log_dir_or_file: Optional[str] = None) -> str:
    """A fresh log file path for a run called ``name``.

    Args:
        name: a short name of the run (the command), used in the file name.
        log_dir_or_file: a directory to put the file in, or a path ending in ``.log`` to use as it is;
            default :func:`default_log_dir`.

    Returns:
        An absolute path; its directory exists.
    """
    target = log_dir_or_file or default_log_dir()
    target = os.path.abspath(os.path.expanduser(str(target)))
    if target.endswith(".log"):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return target
    os.makedirs(target, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(char if char.isalnum() or char in "-_" else "_" for char in name) or "uniter"
    return os.path.join(target, f"{safe}-{stamp}-{os.getpid()}.log")


def _prune(log_dir: str, keep: int = KEEP_LOG_FILES) -> None:
    # Only files named as new_log_path names them; best effort (another run may delete them first).
    paths = sorted(glob.glob(os.path.join(log_dir, "*-[0-9]*-[0-9]*-[0-9]*.log")), key=_mtime)
    for path in paths[:-keep] if keep > 0 else paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def set_library_env(verbose: bool = False, redirect_fd: bool = True) -> None:
    """Sets the environment variables libraries read at import (call before importing TensorFlow).

    Values the user already set are kept. When the C++ logs go to a log file (``redirect_fd``) TF's
    warnings are kept there; otherwise only its errors are printed.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if redirect_fd else "2")
    # gRPC's C core logs its own errors to fd 2; client-side retries are ours to report.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


class _OwnRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return any(record.name == name or record.name.startswith(name + ".") for name in OWN_LOGGERS)


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class Console:
    """A quiet-terminal session made by :func:`quiet_libraries`; a context manager that restores on exit.

    Attributes:
        verbose: libraries log to the terminal as usual (nothing is redirected).
        log_path: the log file, or ``None`` when verbose.
        terminal: a text stream to the real stderr, for the command's own lines.
    """

    def __init__(self, verbose: bool, log_path: Optional[str], terminal: TextIO):
        self.verbose = verbose
        self.log_path = log_path
        self.terminal = terminal
        self._log_stream: Optional[TextIO] = None
        self._saved_stderr: Optional[TextIO] = None
        self._saved_fd: Optional[int] = None
        self._saved_unraisablehook = None
        self._captured_warnings = False
        self._handlers = []
        self._saved_root_level: Optional[int] = None
        self._restored = False

    def say(self, line: str) -> None:
        """Prints one line on the terminal (the stderr side)."""
        self.terminal.write(line.rstrip("\n") + "\n")
        self.terminal.flush()

    def log(self, text: str) -> None:
        """Appends text to the log file (to the terminal when verbose)."""
        stream = self._log_stream or self.terminal
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()

    def log_exception(self, error: BaseException) -> None:
        """Writes ``error``'s traceback to the log file, or to the terminal when verbose."""
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.log(text)

    def _unraisable(self, unraisable) -> None:
        # "Exception ignored in: <function AtomicFunction.__del__ ...>" and the like: library cleanup
        # noise, not the user's business; the log keeps it.
        try:
            message = unraisable.err_msg or "Exception ignored in"
            lines = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
            self.log(f"{message}: {unraisable.object!r}\n{''.join(lines)}")
        except Exception:  # pylint: disable=broad-except
            pass

    def detach_terminal(self) -> None:
        """Sends ``sys.stderr`` to the log file too; for the end of a program, after its last line.

        What the interpreter prints while it shuts down (finalisers of TensorFlow functions, Beam
        threads) then goes to the log instead of ending the terminal output with a traceback.
        """
        if self._log_stream is None:
            return
        try:
            self.terminal.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = self._log_stream

    def restore(self) -> None:
        """Puts stderr, file descriptor 2, warnings and logging back as they were. Idempotent."""
        if self._restored:
            return
        self._restored = True
        root = logging.getLogger()
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        if self._saved_root_level is not None:
            root.setLevel(self._saved_root_level)
        if self._captured_warnings:
            logging.captureWarnings(False)
        if self._saved_unraisablehook is not None:
            sys.unraisablehook = self._saved_unraisablehook
        if self._saved_stderr is not None:
            sys.stderr = self._saved_stderr
        if self._saved_fd is not None:
            self.terminal.flush()
            os.dup2(self._saved_fd, 2)
            self.terminal.close()  # closes _saved_fd
            self.terminal = sys.stderr
            self._saved_fd = None
        if self._log_stream is not None:
            self._log_stream.close()
            self._log_stream = None

    def __enter__(self) -> "Console":
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()


def quiet_libraries(log_dir_or_file: Optional[str] = None, verbose: bool = False, *, name: str = "uniter",
                    redirect_fd: bool = True, show_own_logs: bool = True) -> Console:
    """Sends library logs and warnings to a log file and keeps the terminal for our own lines.

    Call it before importing TensorFlow, so that ``TF_CPP_MIN_LOG_LEVEL`` applies and the C++ lines
    TF prints at import land in the file.

    Args:
        log_dir_or_file: a directory for a new log file, or a ``.log`` file to append to; default
            ``$UNITER_LOG_DIR``, else ``~/.cache/uniter/logs``.
        verbose: redirect nothing (``--verbose`` / ``UNITER_VERBOSE=1``): libraries print as usual. Our
            own loggers get an INFO handler on stderr when the root logger has none.
        name: the run's name, used in the log file name (e.g. the command).
        redirect_fd: also point file descriptor 2 at the log file, for C++ logs and child processes.
            Only for a process that owns its stderr (the ``uniter`` program, a script's ``main``), not
            for library callers such as tests.
        show_own_logs: show INFO+ records of :data:`OWN_LOGGERS` on the terminal.

    Returns:
        A :class:`Console`; ``restore()`` (or leaving its ``with`` block) undoes everything.
    """
    set_library_env(verbose, redirect_fd)
    root = logging.getLogger()
    if verbose:
        console = Console(True, None, sys.stderr)
        if show_own_logs and not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
            console._handlers.append((root, handler))
            console._saved_root_level = root.level
            root.setLevel(logging.INFO)
        return console

    try:
        log_path = new_log_path(name, log_dir_or_file)
        log_stream = open(log_path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # pylint: disable=consider-using-with
    except OSError:
        # A read-only home (a sandbox, a container): the temp directory still beats flooding the terminal.
        log_dir_or_file = os.path.join(tempfile.gettempdir(), "uniter-logs")
        log_path = new_log_path(name, log_dir_or_file)
        log_stream = open(log_path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # pylint: disable=consider-using-with
    if not (log_dir_or_file and str(log_dir_or_file).endswith(".log")):
        _prune(os.path.dirname(log_path))  # after creating ours: it is the newest and stays
    log_stream.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {name}: "
                     f"{' '.join(sys.argv)}\n")
    terminal: TextIO = sys.stderr
    console = Console(False, log_path, terminal)
    console._log_stream = log_stream
    if redirect_fd:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        saved_fd = os.dup(2)  # not inheritable: child processes get the log file as their stderr
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        terminal = io.TextIOWrapper(io.FileIO(saved_fd, "w", closefd=True), encoding=encoding,
                                    errors="backslashreplace", line_buffering=True, write_through=True)
        os.dup2(log_stream.fileno(), 2)
        console.terminal = terminal
        console._saved_fd = saved_fd
        console._saved_stderr = sys.stderr
        # The old sys.stderr writes to fd 2, now the log; our own prints to stderr still belong on screen.
        sys.stderr = terminal
    logging.captureWarnings(True)
    console._captured_warnings = True
    console._saved_unraisablehook = sys.unraisablehook
    sys.unraisablehook = console._unraisable

    file_handler = logging.StreamHandler(log_stream)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    root.addHandler(file_handler)
    console._handlers.append((root, file_handler))
    if show_own_logs:
        # On the root logger with a filter, not on our loggers, so that propagation is left as it is.
        terminal_handler = logging.StreamHandler(terminal)
        terminal_handler.addFilter(_OwnRecords())
        terminal_handler.setFormatter(_TerminalFormatter())
        terminal_handler.setLevel(logging.INFO)
        root.addHandler(terminal_handler)
        console._handlers.append((root, terminal_handler))
    console._saved_root_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return console


def tail(path: Optional[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when it cannot be read): for failure messages."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


__all__ = ["ENV_LOG_DIR", "ENV_VERBOSE", "KEEP_LOG_FILES", "OWN_LOGGERS", "Console", "UserError",
           "default_log_dir", "new_log_path", "quiet_libraries", "set_library_env", "tail", "verbose_from_env"]

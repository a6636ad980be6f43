"""The `maas-batch` command: a thin layer over the library. `main` reads the flags (grammar.py), hands
them to the command's module (run, validate, inspect, retry, simulate) and turns whatever BatchError
ends it into the error's own message and exit code, in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from batch.cli.grammar import build_parser
from batch.exitcodes import EXIT_IOERR, EXIT_OK, EXIT_TEMPFAIL

# Imported once a command is chosen, not at the top: `maas-batch --help` does without logging, the error
# tree (dataclasses) and batch.config.


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    stdout = sys.stdout
    if stdout is not None:  # None: started with stdout closed (`>&-`), where print() writes nothing
        sys.stdout = _Stdout(stdout)
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        return _flushed(code, stdout)
    except KeyboardInterrupt:
        # Outside a run's dispatch (validating, opening DIR): nothing was sent, nothing half written.
        print("maas-batch: interrupted", file=sys.stderr)
        return EXIT_TEMPFAIL
    except BrokenPipeError:
        # stdout closed early (`maas-batch validate --show 100 | head`): not an error. Point stdout at
        # /dev/null so that Python's final flush does not complain again.
        to_devnull(stdout)
        return EXIT_OK
    except StdoutError as exc:
        # stdout on a full disk (`maas-batch report DIR >> log` from cron): a message and 74, not a
        # traceback and 1; /dev/null takes what is left, so that Python's last flush does not fail again
        to_devnull(stdout)
        print(f"maas-batch: cannot write to standard output: {exc.reason}", file=sys.stderr)
        return EXIT_IOERR
    finally:
        sys.stdout = stdout
        signal.signal(signal.SIGTERM, previous)


def _flushed(code: int, stdout: Any) -> int:
    """`code`, once what the command printed has reached stdout's file, where a failure is seen: a reader
    gone (`| head`) leaves the code as it is; a full disk makes a command that succeeded end with 74."""
    if stdout is None:
        return code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        to_devnull(stdout)
    except StdoutError as exc:
        to_devnull(stdout)
        print(f"maas-batch: cannot write to standard output: {exc.reason}", file=sys.stderr)
        return code or EXIT_IOERR
    return code


class StdoutError(Exception):
    """A write to stdout failed (not a closed pipe: BrokenPipeError is left as it is). Not an OSError, so
    that a handler of some file's OSError on the way (a port that cannot be listened on, an export's file)
    does not take it for its own; `main` answers it with 74, and a run catches it by name to keep its own
    exit code when its summary cannot be printed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stdout:
    """sys.stdout while a command runs: its writes' failures are told apart from other files' ones."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> Any:  # what the stream returns (a program's may return None)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(_reason(exc)) from exc

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(_reason(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def to_devnull(stream: Any) -> None:
    """Point `stream`'s file at /dev/null (a stream with no file of its own, a program's, is left alone)."""
    import contextlib

    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def _reason(exc: OSError) -> str:
    from batch.output.files import reason

    return reason(exc)


def command() -> NoReturn:
    """The `maas-batch` command itself (its console script, and `python -m batch`): `main`, then an exit
    without the shutdown freeing every module's objects one by one. `gc.freeze()` moves what is alive into
    the collector's permanent generation, which the collections of Python's shutdown do not walk: about
    0.1 s of CPU less at the end of every command that has imported aiohttp (BENCHMARKS.md). The atexit
    handlers (logging's flush) still run, and every file the command wrote is closed by then. Not in
    `main`: a program that calls `main` goes on, and its objects must stay collectable."""
    code = main()
    gc.freeze()
    sys.exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_run_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from batch.errors import BatchError

    try:
        configure_logging(args)
        return _command(args, argv, extra)
    except BatchError as exc:
        for line in exc.lines("maas-batch"):
            print(line, file=sys.stderr)
        return exc.exit_code


def _command(args: argparse.Namespace, argv: list[str], run_flags: list[str]) -> int:
    """The chosen command. Each module is imported when its command is chosen: `maas-batch --help`, and a
    second run refused on a locked DIR, do without the HTTP stack and the image library."""
    from batch.cli.options import options_from
    from batch.values import StoreUrl

    if args.command == "run":
        from batch.cli.run import run

        return run(args, options_from(args), argv)
    if args.command == "validate":
        from batch.cli.validate import validate

        return validate(args, options_from(args))
    if args.command == "retry-failed":
        from batch.cli.retry import retry_failed

        return retry_failed(args, _main)
    if args.command in ("submit", "worker"):
        from batch.cli import cluster

        return cluster.submit(args, run_flags) if args.command == "submit" else cluster.worker(args)
    if args.command == "simulate":
        from batch.cli.simulate import simulate

        return simulate(args)
    from batch.cli import inspect

    reader = {
        "status": inspect.show_status,
        "report": inspect.show_report,
        "export": inspect.export,
        "gallery": inspect.gallery,
    }[args.command]
    if isinstance(args.out, StoreUrl):
        return inspect.on_store(reader, args)
    return reader(args)


def _log_file_class() -> type:
    import logging

    class LogFile(logging.FileHandler):
        """--log-file: a write that fails (a full disk) is said once on stderr, and the file is written no
        more in this command; the stdlib's handler would print a traceback for every line."""

        failed = False

        def handleError(self, record: logging.LogRecord) -> None:
            problem = sys.exc_info()[1]
            if not isinstance(problem, OSError):  # not the file's failure: as the stdlib says it
                super().handleError(record)
                return
            if self.failed:
                return
            self.failed = True
            said = getattr(problem, "strerror", None) or problem
            with contextlib.suppress(Exception):
                print(
                    f"maas-batch: cannot write the log file {self.baseFilename}: {said}; "
                    "it is not written again by this command",
                    file=sys.stderr,
                )

        def emit(self, record: logging.LogRecord) -> None:
            if not self.failed:
                super().emit(record)

        def flush(self) -> None:
            try:
                super().flush()
            except OSError:  # what the failed line left in the buffer: said already
                self.handleError(logging.makeLogRecord({}))

        def close(self) -> None:
            with contextlib.suppress(OSError):  # closing flushes the same buffer again
                super().close()

    return LogFile


def configure_logging(args: argparse.Namespace) -> None:
    """Log lines to stderr (and to --log-file): the library only gets loggers, the command sets them up."""
    import logging

    from batch.errors import UsageError

    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(level)
    handlers: list[logging.Handler] = [stderr]
    log_file = getattr(args, "log_file", None)
    out = getattr(args, "out", None)
    if log_file is not None and isinstance(out, Path):  # not into DIR's own files (results.jsonl...)
        from batch.cli.inspect import not_into_dir

        not_into_dir(out, Path(log_file), "--log-file")
    if log_file is not None:
        try:
            # its folder too: the README's cron line logs to runs/tonight.log before any run made runs/
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            # the file keeps the INFO lines (the run's start, its status lines) even with --quiet
            # backslashreplace: a line that holds a surrogate (a file name that is not UTF-8) is written
            to_file = _log_file_class()(log_file, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise UsageError(f"cannot open the log file {log_file}: {exc.strerror or exc}") from exc
        to_file.setLevel(min(level, logging.INFO))
        handlers.append(to_file)
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger("batch")
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(min(handler.level for handler in handlers))
    root.propagate = False
    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        root.warning("--quiet and --verbose were both given: --verbose wins")

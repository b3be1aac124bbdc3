"""`ditkit` command line: one subcommand per module, each with register(subparsers) and run(args) -> int.

User errors (ValueError, FileNotFoundError, ditkit's own errors) and system errors (a full disk, a
read-only file system) print one line and exit 2, never a traceback; anything else is a bug in ditkit: one
line saying so, exit 1. Set DITKIT_DEBUG=1 to see the traceback anyway. A closed stdout pipe (`| head`) is
not an error: output stops, the command finishes its work.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys

# Subcommand modules under ditkit.cli, in the order `ditkit --help` lists them.
COMMANDS = [
    "train",
    "sample",
    "encode",
    "info",
    "convert",
    "inspect",
    "evaluate",
    "distill",
    "demo",
    "lr_find",
]


def build_parser() -> argparse.ArgumentParser:
    from ditkit import __version__

    parser = argparse.ArgumentParser(
        prog="ditkit", description="Train, sample, convert and evaluate Diffusion Transformers."
    )
    parser.add_argument("--version", action="version", version=f"ditkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"ditkit.cli.{name}").register(sub)
    return parser


# Where internal errors (bugs) are to be reported; shown in the one-line bug message.
BUG_REPORT = "the ditkit issue tracker"
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class _PipeSafeStdout:
    """stdout that survives a closed pipe (`ditkit inspect X | head`): once the reader is gone, output is
    dropped and the command finishes its work (files are still written), with no BrokenPipeError."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.broken = False

    def _broke(self) -> None:
        self.broken = True
        try:  # so the interpreter's final flush does not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broke()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _os_message(err: OSError) -> str:
    """'PATH: REASON' for an error the operating system raised ([Errno 28] ... becomes words)."""
    from ditkit.io.native import output_error

    if err.filename is not None:
        if isinstance(err, FileNotFoundError):
            return f"{err.filename}: no such file or folder"
        return _first_line(output_error(err, err.filename, "failed"))
    return (err.strerror or _first_line(err)).strip()


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"ditkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("DITKIT_DEBUG"):
            raise
        system = isinstance(err, OSError) and err.errno is not None and err.filename is not None
        message = _os_message(err) if system else _first_line(err)
        print(f"ditkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only file system, a vanished file: the system's, not a bug
        if os.environ.get("DITKIT_DEBUG"):
            raise
        print(f"ditkit {args.command}: error: {_os_message(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        if os.environ.get("DITKIT_DEBUG"):
            raise
        print(f"ditkit {args.command}: error: out of memory; use a smaller batch or model", file=sys.stderr)
        return 1
    except Exception as err:
        if os.environ.get("DITKIT_DEBUG"):
            raise
        print(
            f"ditkit {args.command}: internal error (a bug in ditkit, not in your input): "
            f"{type(err).__name__}: {_first_line(err)[:200]}; please report it to {BUG_REPORT} with the "
            "command you ran (DITKIT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    original = sys.stdout
    safe = _PipeSafeStdout(original)
    sys.stdout = safe
    try:
        return _run(args)
    finally:
        if sys.stdout is safe:
            sys.stdout = original
        if safe.broken:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter closes it at exit


if __name__ == "__main__":
    sys.exit(main())

"""`ditkit` command line: one subcommand per module, each with register(subparsers) and run(args) -> int.

User errors (ValueError, FileNotFoundError, ditkit's own errors) print one line and exit 2, never a
traceback; set DITKIT_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules under ditkit.cli, in the order `ditkit --help` lists them.
COMMANDS = ["train", "sample", "encode", "info", "convert", "inspect"]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"ditkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        if os.environ.get("DITKIT_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"ditkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``ctmtl`` command line. Thin: it parses arguments and calls functions that tests call directly.

Each sub-command lives in ``ctmtl/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``. A :class:`ctmtl.errors.CtmtlError` is printed as one line per problem and the
exit code is 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctmtl import __version__
from ctmtl.errors import CtmtlError

#: sub-command modules under ctmtl.commands, in help order
COMMANDS: tuple[str, ...] = ("synth", "manifest", "train", "demo", "predict", "export_label")  # each helper adds its module name here


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctmtl", description="Multi-task chest CT on MONAI.")
    parser.add_argument("--version", action="version", version=f"ctmtl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"ctmtl.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CtmtlError as err:
        if args.debug:
            raise
        for line in err.problems:
            print(f"ctmtl {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctmtl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

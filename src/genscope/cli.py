"""genscope command line: thin - parse, call the library, print, store.

Commands live in ``genscope/commands/<area>.py``; each module adds its sub-parsers (``add_parsers``) and
registers its functions with ``@command(name)``. Any bad input ends with one line on stderr and exit
code 2 (``UserError`` and argparse errors alike).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from genscope.errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
# Command modules, in the order their commands appear in --help; a module not in this checkout is skipped.
COMMAND_MODULES = ("suite", "profile", "characterize", "runs", "analysis", "sequence", "temporal", "optimize")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage first
        raise UserError(f"{self.prog}: {message}")


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="genscope", description="Where the time, FLOPs and memory go in text-to-image "
                           "and text-to-video generation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"genscope.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"genscope.commands.{name}":
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"genscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""genscope command line: thin - parse, call the library, print, store.

Commands live in ``genscope/commands/<area>.py``; each module adds its sub-parsers (``add_parsers``) and
registers its functions with ``@command(name)``. Any bad input ends with one line on stderr and exit
code 2 (``UserError`` and argparse errors alike).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import sys
import threading
from collections.abc import Callable

from genscope.errors import UserError
from genscope.validate import check_argv, check_path_options

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
# Command modules, in the order their commands appear in --help. Each is imported eagerly: a module that fails
# to import is an error with its traceback, never a silently missing command.
COMMAND_MODULES = ("suite", "profile", "characterize", "runs", "analysis", "sequence", "temporal", "optimize",
                   "analyze", "train", "dit")


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
        importlib.import_module(f"genscope.commands.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        check_argv(sys.argv[1:] if argv is None else argv)  # undecodable bytes: one line, before anything runs
        args = build_parser().parse_args(argv)
        check_path_options(args)
        from genscope.commands.common import preflight

        preflight(args)  # store and output folder checked before any computing
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"genscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# The cyclic collector's first threshold for a command-line process (Python's default: 700 allocations).
# Importing torch, diffusers and transformers creates about 600k objects; with the default the collector
# runs ~900 times meanwhile, with this one ~40 (measured on the 2-core development VM: that import took
# 4.9 s with the default thresholds and 4.0 s with these, median of 3 interleaved runs).
CLI_GC_THRESHOLD = (20_000, 20, 20)


def run() -> None:
    """The ``genscope`` console script: :func:`main` in a process that runs one command and exits.

    Two process-wide settings that :func:`main` itself (called in-process by tests and notebooks) leaves
    alone: the collector's thresholds (:data:`CLI_GC_THRESHOLD`), and how the process ends. Once the command
    is done, the exit handlers run (``atexit``: logging's flush, Ray's shutdown, torch's) and the streams are
    flushed, then the process leaves with ``os._exit`` instead of tearing down every module: the
    interpreter's shutdown walks the object graph of torch, diffusers and transformers several times (2.2 s
    after a paper-scale ``characterize`` on the 2-core development VM, one run; ``gc.freeze()`` avoided most of it but
    made triton's nanobind extension, which torch's FLOP counter imports where triton is installed, print
    every frozen object as "leaked"). A command that left a non-daemon thread running exits the usual way,
    which waits for it. The store's connections are closed by then (each operation opens and closes its own).
    """
    gc.set_threshold(*CLI_GC_THRESHOLD)
    code = main()
    if all(t.daemon or t is threading.main_thread() for t in threading.enumerate()):
        atexit._run_exitfuncs()  # what the interpreter's exit would run first
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to write
                pass
        os._exit(int(code or 0))
    sys.exit(code)


if __name__ == "__main__":
    # `python -m genscope.cli`: run the imported module, whose COMMANDS the command modules register into
    from genscope.cli import run as _run

    _run()

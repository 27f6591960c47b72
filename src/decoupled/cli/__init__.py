"""The `decoupled` command.

Each subcommand lives in the module that does its work; that module defines
``add_arguments(parser)`` and ``run(args) -> int``. This file only wires them together,
imports a subcommand's module (and its heavy dependencies) only when that subcommand runs,
and is the one place where errors become exit codes (:mod:`decoupled.cli.args`): a mistake
in the arguments is one line on stderr and exit code 2, a failure in the user's own code
exit code 3, and a closed pipe (``decoupled doctor --json | head``) is quiet.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .args import EXIT_SETUP, EXIT_USAGE, SetupError, UsageError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("decoupled.lab.compare", "Adam+L2 vs AdamW vs lr-independent AdamW over an lr x wd grid"),
    "explain": ("decoupled.lab.explain", "what each convention really did to each parameter"),
    "doctor": ("decoupled.doctor", "check a training setup for weight-decay mistakes"),
    "convert-wd": ("decoupled.conversions", "translate a weight decay between conventions"),
    "bench": ("decoupled.bench.run", "time one optimizer step against named peers"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and not err.name.startswith("decoupled"):
            raise UsageError(
                f"needs the package {err.name!r}, which is not installed; install the extras with "
                f"pip install 'decoupled[all]'"
            ) from err
        raise


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decoupled",
        description="AdamW done right: experiments, checks and benchmarks for decoupled weight decay.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"decoupled {command}" if command in COMMANDS else "decoupled"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        code = int(_load(args.command).run(args) or 0)
        sys.stdout.flush()
        return code
    except UsageError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SetupError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (| head) is gone: point stdout at /dev/null so the exit flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

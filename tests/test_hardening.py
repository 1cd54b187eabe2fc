"""Hardening: outputs keep the umask, one-line errors with exit 2, stale temporaries cleaned, out-of-range
options refused up front. (The bundle manifest's sidecar and field checks: test_manifest.py.)"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeflow.cli.main import main
from edgeflow.core import io as eio
from edgeflow.core.errors import OutputError
from export_helpers import SR, save_tiny, test_mel

REPO = Path(__file__).resolve().parents[1]


def _cli(argv, capsys):
    """(exit code, stderr) of ``edgeflow ARGV``, argparse exits included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_line_error(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "error:" in err, err
    for w in words:
        assert w in err, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny waveflow model.pt and its bundle (exported by the CLI), shared by the module."""
    root = tmp_path_factory.mktemp("hard")
    pt = save_tiny(root / "wf.pt", "waveflow")
    assert main(["export", str(pt), "-o", str(root / "bundle")]) == 0
    np.save(root / "mel.npy", test_mel(9))
    return pt, root / "bundle", root / "mel.npy"


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# --- 1. outputs keep the umask ------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_outputs_keep_umask(tmp_path, umask, mask):
    from edgeflow.audio.io import save_wav
    from edgeflow.models.checkpoint import save_model
    from export_helpers import tiny_model

    umask(mask)
    eio.atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    with eio.atomic_dir(tmp_path / "d") as d:
        (d / "inner.txt").write_text("x")
    save_wav(tmp_path / "x.wav", np.zeros(100, np.float32), SR)
    save_model(tmp_path / "model.pt", tiny_model("waveflow"))
    for f in ("a/x.json", "d/inner.txt", "x.wav", "model.pt"):
        assert _mode(tmp_path / f) == 0o666 & ~mask, f
    assert eio.current_umask() == mask
    eio.make_executable(tmp_path / "x.wav")                 # build_engine.sh in TensorRT bundles
    assert _mode(tmp_path / "x.wav") == 0o777 & ~mask
    for d in ("a", "d"):
        assert _mode(tmp_path / d) == 0o777 & ~mask, d


def test_bundle_and_synth_keep_umask(tiny, tmp_path, umask, capsys):
    pt, bundle, mel = tiny
    umask(0o002)
    out = tmp_path / "b2"
    assert main(["export", str(pt), "-o", str(out)]) == 0
    assert main(["synth", str(out), "--mel", str(mel), "-o", str(tmp_path / "o.wav")]) == 0
    assert _mode(out) == 0o775 and _mode(tmp_path / "o.wav") == 0o664
    assert {_mode(p) for p in out.iterdir()} == {0o664}
    assert _mode(bundle) == 0o755 and {_mode(p) for p in bundle.iterdir()} == {0o644}   # exported under 022


# --- 2. one line and exit 2 instead of tracebacks -----------------------------------------------------

def test_train_bad_options_one_line(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    (corpus / "metadata.csv").write_text("a|hello\n")
    (tmp_path / "file").write_text("x")
    base = ["train", "waveflow-demo", "--data", corpus, "--no-progress"]
    cases = [(["--threads", "-1", "--out", tmp_path / "r1"], "--threads"),
             (["--device", "bogus", "--out", tmp_path / "r2"], "bogus"),
             (["--set", "batch_size=abc", "--out", tmp_path / "r3"], "batch_size"),
             (["--set", "lr=-1", "--out", tmp_path / "r4"], "lr"),
             (["--out", tmp_path / "file"], "is a file"),
             (["--out", tmp_path / "file" / "run"], "is a file")]
    for extra, word in cases:
        _one_line_error(*_cli(base + extra, capsys), word)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "file"]


def test_synth_into_a_file_path_one_line(tiny, tmp_path, capsys):
    pt, bundle, mel = tiny
    (tmp_path / "file").write_text("x")
    for src in (pt, bundle):
        _one_line_error(*_cli(["synth", src, "--mel", mel, "-o", tmp_path / "file" / "x.wav"], capsys), "file")
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder that behaves as read-only to a non-root user (tests run as root): creating anything in it
    fails with EACCES, ``os.access`` says it is not writable."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access

    def inside(p):
        return Path(os.fsdecode(p)).parent == ro

    def fake_open(p, flags, *a, **k):
        if inside(p) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))
        return real_open(p, flags, *a, **k)

    def fake_mkdir(p, *a, **k):
        if inside(p):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))
        return real_mkdir(p, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == ro else real_access(p, m, *a, **k))
    return ro


def test_read_only_folder_one_line(tiny, read_only, capsys):
    pt, bundle, mel = tiny
    _one_line_error(*_cli(["synth", bundle, "--mel", mel, "-o", read_only / "x.wav"], capsys), "not writable")
    _one_line_error(*_cli(["export", pt, "-o", read_only / "b"], capsys), "not writable")
    _one_line_error(*_cli(["say", pt, "--text", "hi", "-o", read_only / "x.wav"], capsys), "not writable")  # before any work
    with pytest.raises(OutputError, match="Permission denied") as info:      # the library itself, past the CLI
        eio.atomic_write_text(read_only / "x.txt", "x")
    assert isinstance(info.value, OSError) and info.value.errno == errno.EACCES
    with pytest.raises(OutputError, match="Permission denied"):
        with eio.atomic_dir(read_only / "d"):
            pass
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("argv", [["import", "piper", "{d}"], ["import", "hifigan", "{d}"], ["import", "waveglow", "{d}"],
                                  ["export", "{d}"], ["say", "{d}.onnx", "--text", "hi"], ["say", "{pt}", "--text-file", "{d}"],
                                  ["synth", "{pt}", "--mel", "{d}"]])
def test_a_folder_given_as_an_input_file_is_named(tiny, tmp_path, capsys, argv):
    """Every command that reads a file says so in one line when handed a folder (not "not found")."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in.onnx").mkdir()
    args = [a.format(d=tmp_path / "in", pt=tiny[0]) for a in argv] + ["-o", str(tmp_path / "out.wav")]
    if argv[0] == "say" and argv[1] == "{d}.onnx":
        _one_line_error(*_cli(args, capsys), "not a bundle")      # a folder model is read as a bundle
    else:
        _one_line_error(*_cli(args, capsys), "is a folder, not a file")
    assert not (tmp_path / "out.wav").exists()


def test_os_error_at_top_level_is_one_line(monkeypatch, capsys):
    import edgeflow.cli.models as models_cli

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where")

    monkeypatch.setattr(models_cli, "run", denied)
    _one_line_error(*_cli(["models"], capsys), "Permission denied", "/some/where")


def test_bench_scripts_bad_input_one_line(capsys):
    """bench/ scripts' entry (run_script): an EdgeflowError is one line and its exit code; a status passes through."""
    from edgeflow.cli.args import run_script
    from edgeflow.core.errors import BundleError

    def bad() -> int:
        raise BundleError("voice not found: /x\n(expected a bundle)")

    with pytest.raises(SystemExit) as exc:
        run_script(bad)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == "edgeflow: error: voice not found: /x (expected a bundle)\n"
    with pytest.raises(SystemExit) as exc:
        run_script(lambda: 0)
    assert exc.value.code == 0


# --- 5. stale temporaries of killed runs are cleaned ----------------------------------------------------

KILLED = """
import os, signal, sys
from edgeflow.core.io import atomic_dir, atomic_path
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "model.onnx").write_bytes(b"x" * 1000)
    with atomic_path(sys.argv[2]) as t:
        t.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_run_temporaries_cleaned_next_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "bundle"), str(tmp_path / "x.wav")],
                          env=env, timeout=120)
    assert proc.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".bundle.", ".x.wav.")) and n.endswith(".tmp") for n in left)
    with eio.atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "f").write_text("ok")
    eio.atomic_write_text(tmp_path / "x.wav", "ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "x.wav"]


def test_only_own_dead_or_legacy_temporaries_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = {f".out.{dead}-0123abcd.tmp": True, f".out.{dead}-0123abcd.old": True,     # a killed run's
             f".out.{os.getppid()}-0123abcd.tmp": False,                                 # a live process's
             ".out.k2j4_9zq.tmp": True, ".out.old": True,                                 # older edgeflow, old
             f".other.{dead}-0123abcd.tmp": False, ".out.notes.tmp": False, "out.tmp": False}
    for name in names:
        (tmp_path / name).mkdir()
    past = time.time() - 3600
    for name in (".out.k2j4_9zq.tmp", ".out.old"):
        os.utime(tmp_path / name, (past, past))
    (tmp_path / ".out.zzzzzzzz.tmp").mkdir()          # legacy name but newer than this process: kept
    names[".out.zzzzzzzz.tmp"] = False
    with eio.atomic_dir(tmp_path / "out"):
        pass
    assert {n for n, gone in names.items() if not gone} | {"out"} == {p.name for p in tmp_path.iterdir()}


def test_overwrite_onto_a_file_leaves_nothing(tmp_path):
    (tmp_path / "b").write_text("old file")
    with eio.atomic_dir(tmp_path / "b", overwrite=True) as tmp:
        (tmp / "model.onnx").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (tmp_path / "b" / "model.onnx").is_file()
    with eio.atomic_dir(tmp_path / "b", overwrite=True) as tmp:     # and onto a folder
        (tmp / "other").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and [p.name for p in (tmp_path / "b").iterdir()] == ["other"]
    with pytest.raises(OutputError, match="exists"):
        with eio.atomic_dir(tmp_path / "b"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# --- 6. out-of-range options refused before any work ------------------------------------------------------

OUT = "OUTDIR"
RANGE_CASES = [
    (["bench", "x.pt", "--n-eval", "-1", "-o", OUT], "--n-eval"),
    (["bench", "x.pt", "--threads", "0", "-o", OUT], "--threads"),
    (["train", "waveflow-demo", "--data", "d", "--out", OUT, "--steps", "-5"], "--steps"),
    (["train", "waveflow-demo", "--data", "d", "--out", OUT, "--threads", "-1"], "--threads"),
    (["finetune", "x.pt", "--data", "d", "--out", OUT, "--steps", "0"], "--steps"),
    (["finetune", "x.pt", "--data", "d", "--out", OUT, "--minutes", "nan"], "--minutes"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--sigma", "1e30"], "--sigma"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--sigma", "1e39"], "--sigma"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--sigma", "nan"], "--sigma"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--sigma", "-0.5"], "--sigma"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--seed", "-1"], "--seed"),
    (["synth", "x.pt", "--mel", "m.npy", "-o", OUT, "--threads", "-2"], "--threads"),
    (["optimize", "x.pt", "--n-eval", "0", "-o", OUT], "--n-eval"),
    (["optimize", "x.pt", "--threads", "-1", "-o", OUT], "--threads"),
    (["optimize", "x.pt", "--seed", "abc", "-o", OUT], "--seed"),
    (["calibrate", "--data", "d", "--model", "x.pt", "-o", OUT, "--n", "0"], "--n"),
    (["calibrate", "--data", "d", "--model", "x.pt", "-o", OUT, "--max-seconds", "-1"], "--max-seconds"),
    (["corpus", "build", "--out", OUT, "--minutes", "-1"], "--minutes"),
    (["corpus", "build", "--out", OUT, "--minutes", "1", "--sample-rate", "0"], "--sample-rate"),
    (["say", "v.onnx", "--text", "hi", "-o", OUT, "--sentence-silence", "-1"], "--sentence-silence"),
    (["say", "v.onnx", "--text", "hi", "-o", OUT, "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("argv,option", RANGE_CASES, ids=[f"{a[0]} {o} {a[a.index(o) + 1]}" for a, o in RANGE_CASES])
def test_out_of_range_refused_up_front(tmp_path, capsys, argv, option):
    out = tmp_path / "out"
    argv = [str(out) if a == OUT else a for a in argv]
    _one_line_error(*_cli(argv, capsys), f"argument {option}")
    assert not out.exists()


def test_in_range_values_parse():
    from edgeflow.cli.args import MAX_SIGMA
    from edgeflow.cli.main import build_parser
    from edgeflow.runtime.bundle import MAX_SIGMA as BUNDLE_MAX_SIGMA

    args = build_parser().parse_args(["synth", "x", "--mel", "m", "-o", "o.wav", "--sigma", "0", "--seed", "0",
                                      "--threads", "1"])
    assert (args.sigma, args.seed, args.threads) == (0.0, 0, 1)
    assert build_parser().parse_args(["synth", "x", "--mel", "m", "-o", "o", "--sigma", "10"]).sigma == MAX_SIGMA
    assert MAX_SIGMA == BUNDLE_MAX_SIGMA

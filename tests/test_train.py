"""Training: the NLL falls, a SIGKILLed run resumes exactly, and 2-process DDP (torchrun, gloo) works.

Every test builds its own tiny corpus of synthetic audio in tmp_path and trains a tiny WaveFlow.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.core.errors import CheckpointError
from edgeflow.data.ljspeech import ensure_split
from edgeflow.models.checkpoint import load_model
from edgeflow.train.recipe import load_recipe
from edgeflow.train.trainer import LOG_FIELDS, Trainer

REPO = Path(__file__).resolve().parents[1]
SR = 22050
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

TINY_RECIPE = {
    "family": "waveflow",
    "name": "tiny-test",
    "model": {"n_flows": 2, "n_layers": 2, "height": 8, "channels": 8},
    "train": {"batch_size": 2, "segment_length": 2048, "lr": 1e-3, "lr_decay_every": 4, "lr_decay": 0.9,
              "seed": 0, "valid_every": 0, "ckpt_every": 50, "log_every": 1, "valid_clips": 2,
              "valid_segment": 2048},
}



def make_corpus(root: Path, n: int = 12, seconds: float = 0.4) -> Path:
    """An LJSpeech-layout corpus of ``n`` clips of two sines (speaker-dependent pitch) plus noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    lines = []
    for i in range(n):
        audio = (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.1 * np.sin(2 * np.pi * (600 + 70 * i) * t)
                 + 0.02 * rng.standard_normal(t.size))
        save_wav(root / "wavs" / f"U{i:03d}.wav", audio.astype(np.float32), SR)
        lines.append(f"U{i:03d}|Sentence {i}.|sentence {i}|spk{i % 2}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    split = ensure_split(root)
    assert split["train"] and split["valid"]
    return root


def write_recipe(path: Path, **train) -> Path:
    data = json.loads(json.dumps(TINY_RECIPE))
    data["train"].update(train)
    path.write_text(json.dumps(data))
    return path


def read_log(path: Path) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == LOG_FIELDS
    return rows


def _deterministic(row: dict) -> tuple:
    """The columns that must match bit-for-bit between runs (not timings)."""
    return row["step"], row["loss"], row["grad_norm"], row["lr"]


def train_cli(recipe: Path, data: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "edgeflow", "train", str(recipe), "--data", str(data), "--out", str(out),
           "--threads", "1", "--no-progress", "--device", "cpu", *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.stderr", "w")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=ENV, cwd=REPO)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


def test_nll_falls(tmp_path, corpus):
    recipe = load_recipe(write_recipe(tmp_path / "tiny.json", valid_every=25))
    trainer = Trainer(recipe, corpus, tmp_path / "run", device="cpu", progress=False)
    summary = trainer.train(steps=50)
    assert summary["steps"] == 50 and np.isfinite(summary["final_loss"])
    rows = read_log(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 51))
    losses = np.array([float(r["loss"]) for r in rows])
    first, last = losses[:5].mean(), losses[-5:].mean()
    assert np.isfinite(losses).all()
    assert last < first - 0.1, (first, last)
    valid = [float(r["valid_nll"]) for r in rows if r["valid_nll"]]
    assert len(valid) == 2 and valid[1] < valid[0]
    assert (tmp_path / "run" / "best.pt").is_file()
    model, info = load_model(tmp_path / "run" / "model.pt", family="waveflow")
    assert info["meta"]["step"] == 50 and info["meta"]["recipe"]["name"] == "tiny-test"
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["train"]["valid_every"] == 25


def _state_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def _wait(proc, timeout: float = 300):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_exact_resume_after_sigkill(tmp_path, corpus):
    recipe = write_recipe(tmp_path / "tiny.json", ckpt_every=2)
    a_steps = 30
    # Run A, uninterrupted, runs alongside run B (the batch and update of step k depend neither on the total
    # number of steps nor on how often checkpoints are written).
    proc_a = train_cli(recipe, corpus, tmp_path / "a", "--steps", str(a_steps), "--set", "ckpt_every=1000",
                       wait=False)
    # Run B: killed with SIGKILL once a checkpoint at step >= 4 exists, then resumed.
    run_b = tmp_path / "b"
    proc = train_cli(recipe, corpus, run_b, "--steps", "100000", wait=False)
    try:
        deadline = time.time() + 300
        while _state_step(run_b / "train_state.pt") < 4:
            assert proc.poll() is None, (tmp_path / "b.stderr").read_text()[-2000:]
            assert time.time() < deadline, "no checkpoint at step >= 4 within 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resume_at = _state_step(run_b / "train_state.pt")
    assert 4 <= resume_at and resume_at % 2 == 0
    end = resume_at + 5
    assert end <= a_steps, f"run B got to step {resume_at} before the kill; too fast for this test"
    res = train_cli(recipe, corpus, run_b, "--steps", str(end), "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _wait(proc_a) == 0, (tmp_path / "a.stderr").read_text()[-2000:]
    rows_a = read_log(tmp_path / "a" / "log.csv")
    rows_b = read_log(run_b / "log.csv")
    assert [int(r["step"]) for r in rows_a] == list(range(1, a_steps + 1))
    # one row per step: rows the killed process logged past its last checkpoint were dropped on resume
    assert [int(r["step"]) for r in rows_b] == list(range(1, end + 1))
    resumed = rows_b[-5:]   # appended by the resumed process
    assert [int(r["step"]) for r in resumed] == list(range(resume_at + 1, end + 1))
    assert [_deterministic(r) for r in resumed] == [_deterministic(r) for r in rows_a[resume_at:end]]
    # everything the killed process logged matches too
    by_step_a = {r["step"]: _deterministic(r) for r in rows_a}
    for r in rows_b[:-5]:
        assert _deterministic(r) == by_step_a[r["step"]]
    # the learning-rate schedule moved on across the resume point (lr decays every 4 steps)
    assert len({r["lr"] for r in rows_a[:end]}) >= 2
    assert _state_step(run_b / "train_state.pt") == end
    _, info = load_model(run_b / "model.pt")
    assert info["meta"]["step"] == end


@pytest.mark.parametrize("content, match", [(b"garbage" * 100, "unreadable train state"),
                                            (None, "not an edgeflow train state")])
def test_resume_from_bad_state_is_a_user_error(tmp_path, corpus, content, match):
    out = tmp_path / "run"
    out.mkdir()
    if content is None:
        torch.save({"weights": torch.zeros(2)}, out / "train_state.pt")
    else:
        (out / "train_state.pt").write_bytes(content)
    trainer = Trainer(load_recipe(write_recipe(tmp_path / "tiny.json")), corpus, out, progress=False)
    with pytest.raises(CheckpointError, match=match) as info:
        trainer.train(steps=2, resume=True)
    assert "\n" not in str(info.value) and "train_state.pt" in str(info.value)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_two_processes(tmp_path, corpus):
    recipe = write_recipe(tmp_path / "tiny.json")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgeflow", "train", str(recipe), "--data", str(corpus), "--out", str(out), "--steps", "3",
           "--device", "cpu", "--threads", "1", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summaries = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 3      # printed by rank 0 only
    rows = read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    model, info = load_model(out / "model.pt")
    assert info["meta"]["step"] == 3
    assert _state_step(out / "train_state.pt") == 3

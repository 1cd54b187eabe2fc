"""The one training loop (edgeflow.train.loop) with a pluggable objective, and the one implementation of
each shared helper: NLL, SNR, onnxruntime session options, weight-norm check, error-reason truncation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop

REPO = Path(__file__).resolve().parents[1]


class Quadratic:
    """Objective: mean (w x - y)^2 of a batch (x, y); a NaN batch gives a NaN loss."""

    def loss(self, model, batch):
        x, y = batch
        err = model(x) - y
        return (err ** 2).mean(), {"max_err": float(err.detach().abs().max())}


class Hooks(LoopHooks):
    def __init__(self, nan_at=(), valid=None):
        self.nan_at, self.valid_values, self.rows, self.saved = set(nan_at), list(valid or []), [], []

    def batch(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        return (x * math.nan, y) if step in self.nan_at else (x, y)

    def validate(self):
        return self.valid_values.pop(0) if self.valid_values else None

    def on_step(self, step, loss, logs, grad_norm, valid):
        self.rows.append((step, loss, logs, grad_norm, valid))

    def save(self, step):
        self.saved.append(step)


def _loop(hooks, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    settings = LoopSettings(**{"steps": 20, "lr": 0.05, "grad_clip": 10.0, **kw})
    return model, TrainLoop(model, Quadratic(), hooks, settings, progress=False)


def test_loop_minimizes_any_objective_and_checkpoints():
    hooks = Hooks()
    model, loop = _loop(hooks, lr=0.3, ckpt_every=5, ckpt_at_end=True)
    out = loop.run()
    assert out["steps"] == 20 and out["stopped"] == "steps done"
    assert [r[0] for r in hooks.rows] == list(range(1, 21)) and hooks.saved == [5, 10, 15, 20]
    assert hooks.rows[-1][1] < 0.2 * hooks.rows[0][1] and "max_err" in hooks.rows[0][2]
    assert out["first_step_seconds"] > 0 and out["estimated_seconds"] is not None


def test_loop_resumes_bit_for_bit():
    _, full = _loop(Hooks())
    full.run()
    model_a, part = _loop(Hooks(), steps=7)
    part.run()
    state = part.state_dict()
    weights = {k: v.clone() for k, v in model_a.state_dict().items()}
    model_b, resumed = _loop(Hooks())
    model_b.load_state_dict(weights)
    resumed.load_state_dict(state)
    assert resumed.step == 7
    resumed.run()
    assert torch.equal(model_b.weight, full.model.weight)


def test_loop_lr_schedule_nonfinite_skip_and_early_stop():
    hooks = Hooks(nan_at={2})
    model, loop = _loop(hooks, steps=4, skip_nonfinite=True, lr_decay_every=2, lr_decay=0.5)
    before = model.weight.detach().clone()
    loop.run()
    assert math.isnan(hooks.rows[2][1]) and math.isnan(hooks.rows[2][3])     # step 3 (batch 2) skipped
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, before)
    assert [loop.lr_at(k) for k in (0, 1, 2, 4)] == [0.05, 0.05, 0.025, 0.0125]
    hooks = Hooks(valid=[1.0, 0.5, 0.6, 0.7, 0.4])
    _, loop = _loop(hooks, valid_every=2, patience=2)
    out = loop.run()
    assert out["stopped"].startswith("early stop") and loop.step == 8 and loop.best == 0.5 and loop.best_step == 4
    assert [r[4] for r in hooks.rows] == [None, 1.0, None, 0.5, None, 0.6, None, 0.7]


def test_loop_checkpoints_the_last_step_of_an_early_stop():
    hooks = Hooks(valid=[1.0, 0.5, 0.6, 0.7, 0.4])
    _, loop = _loop(hooks, valid_every=2, patience=2, ckpt_every=5, ckpt_at_end=True)
    assert loop.run()["stopped"].startswith("early stop") and hooks.saved == [5, 8]
    hooks = Hooks()
    _, loop = _loop(hooks, max_minutes=1e-9, ckpt_at_end=True)
    assert loop.run()["stopped"].startswith("time cap") and hooks.saved == [1]
    hooks = Hooks()
    _, loop = _loop(hooks, max_minutes=1e-9)                       # without ckpt_at_end: nothing extra
    loop.run()
    assert hooks.saved == []


def test_trainer_nll_is_the_models():
    """The trainer's objective computes the model's own NLL formula (models.base), also through a wrapper."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from export_helpers import tiny_model

    from edgeflow.audio.mel_torch import LogMel
    from edgeflow.train.trainer import LikelihoodObjective

    model = tiny_model("waveflow")
    audio = 0.1 * torch.randn(2, 8 * model.hop_length, generator=torch.Generator().manual_seed(0))
    mel = LogMel(model.config.mel)
    with torch.no_grad():
        loss, _ = LikelihoodObjective(mel, 0.9).loss(model, audio)
        own = model.nll_per_dim(audio, mel(audio), sigma=0.9)
        z, logdet = model(audio, mel(audio))
    assert float(loss) == pytest.approx(float(own), rel=1e-6)
    by_hand = (0.5 * (z ** 2).sum(1) / 0.81 + z.shape[1] * (math.log(0.9) + 0.5 * math.log(2 * math.pi))
               - logdet).mean() / z.shape[1]
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)


def test_one_snr_with_one_cap():
    from edgeflow.audio.snr import SNR_CAP_DB, snr_db
    from edgeflow.quant.int8 import compare
    from edgeflow.validate import metrics

    rng = np.random.default_rng(0)
    x = rng.standard_normal(4096).astype(np.float32)
    noisy = x + 0.1 * rng.standard_normal(4096).astype(np.float32)
    assert snr_db(x, x) == SNR_CAP_DB == metrics.snr(x, x) and snr_db(x, x, cap_db=None) == math.inf
    assert snr_db(x, noisy) == pytest.approx(20.0, abs=0.3) == metrics.snr(x, noisy)
    assert snr_db(np.zeros(4), np.ones(4)) == -math.inf and snr_db(x, x * np.nan) == -math.inf
    from edgeflow.audio.mel import MelConfig

    assert compare([x], [x], MelConfig())["snr_db"] == SNR_CAP_DB
    with pytest.raises(ValueError, match="shapes differ"):
        snr_db(x, x[:-1])


def test_one_session_options_one_weight_norm_check_one_reason():
    from edgeflow.compress import layers
    from edgeflow.core.errors import REASON_CHARS, short_reason
    from edgeflow.core.ort import LARGE_GRAPH_NODES, session_options
    from edgeflow.models import checkpoint
    from edgeflow.runtime import synthesizer

    opts = session_options(threads=2, nodes=LARGE_GRAPH_NODES + 1, basic=True)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_mem_reuse) == (2, 1, False)
    assert synthesizer.session_options is session_options
    assert layers.has_weight_norm is checkpoint.has_weight_norm
    made_elsewhere = [f"{p.relative_to(REPO)}" for p in (REPO / "edgeflow").rglob("*.py")
                      if p.name != "ort.py" and "SessionOptions()" in p.read_text()]
    assert not made_elsewhere, f"onnxruntime session options made outside edgeflow/core/ort.py: {made_elsewhere}"
    assert short_reason(ValueError("\n  first line\nsecond")) == "first line"
    assert short_reason(KeyError()) == "KeyError" and len(short_reason("x" * 999)) == REASON_CHARS
    truncations = []
    for path in (REPO / "edgeflow").rglob("*.py"):
        if path.name != "errors.py":
            truncations += [f"{path}: {m}" for m in re.findall(r"splitlines\(\)\[0\]\[:\d+\]|str\(exc\)\[:\d+\]",
                                                                path.read_text())]
    assert not truncations


def test_dead_code_is_gone():
    from edgeflow.flows import coupling
    from edgeflow.models.waveflow import UpsampleNet

    assert not hasattr(coupling, "SQRT_HALF") and not hasattr(UpsampleNet, "unfuse")
    assert "not built yet" not in (REPO / "edgeflow" / "cli" / "main.py").read_text()
    assert not any('"model_name"' in p.read_text() for p in (REPO / "edgeflow").rglob("*.py"))


def test_docs_date_their_figures():
    """Cards, README and bench results name dates, commits or versions, not the order the work was done in."""
    docs = [REPO / "README.md", *REPO.glob("models/*/README.md"), *REPO.glob("bench/results/*.md"),
            *REPO.glob("edgeflow/targets/*.json"), *REPO.glob("edgeflow/recipes/*.json")]
    bad = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in docs
           for m in re.finditer(r"(?i)\bsessions?[ -]\d|\bthis session\b|_s\d\.json", p.read_text())]
    assert not bad


def test_progress_total_follows_the_time_cap():
    """Under a time cap far short of ``steps`` the bar's total (hence its ETA) is where the cap will stop the
    run, not ``steps``; so is the estimate logged after the first step."""
    import time as _time

    class Slow(Hooks):
        def batch(self, step):
            _time.sleep(0.02)
            return super().batch(step)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    loop = TrainLoop(model, Quadratic(), Slow(), LoopSettings(steps=100000, lr=0.05, grad_clip=10.0,
                                                              max_minutes=0.01), progress=True)
    totals = []
    real = loop._bar_total

    def spy(bar, *args):
        real(bar, *args)
        totals.append(bar.total)

    loop._bar_total = spy
    out = loop.run()
    assert out["stopped"].startswith("time cap")
    assert out["estimated_seconds"] <= 0.6                # the first step's estimate: the cap's time, too
    assert totals and totals[-1] < 1000                   # about 0.6 s / 0.02 s steps, not 100000
    assert abs(totals[-1] - out["steps"]) <= max(3, out["steps"] // 3)


def test_interleaved_best_keeps_each_runs_fastest_round_and_warms_up(monkeypatch):
    """The one interleaved timer the passes share (edgeflow.validate.cost.interleaved_best), on a fake clock that
    only the runs advance (no wall-clock timing in a test)."""
    from edgeflow.validate import cost

    clock, sleeps = [0.0], []
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])

    def sleep(seconds):                                       # the settle pause passes on the clock too
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(cost.time, "sleep", sleep)
    calls, costs = [], {"a": [9.0, 3.0, 1.0, 2.0], "b": [9.0, 5.0, 4.0, 6.0]}

    def run(name):
        def f():
            calls.append(name)
            clock[0] += costs[name].pop(0)
        return f

    best = cost.interleaved_best({"a": run("a"), "b": run("b")}, rounds=3, warmup=True)
    assert calls == ["a", "b"] + ["a", "b"] * 3              # interleaved round by round, after one warm-up each
    assert best == {"a": 1.0, "b": 4.0}                      # each run's fastest timed round; the 9 s warm-ups not counted
    assert sleeps == [cost.SETTLE_SECONDS] * 6                # a settle pause before each timed call, not timed
    costs["x"] = [7.0, 5.0]
    assert cost.interleaved_best({"x": run("x")}, rounds=2) == {"x": 5.0}     # no warm-up: every call is timed


def test_parameter_average_follows_the_updates_and_swaps_in_and_out():
    model, loop = _loop(Hooks(), steps=5, ema=0.5)
    expect = model.weight.detach().clone()
    for _ in range(5):
        loop.train_step()
        expect = 0.5 * expect + 0.5 * model.weight.detach()          # the average of the updated weights
    trained = model.weight.detach().clone()
    assert loop.ema_updates == 5 and torch.allclose(loop.ema["weight"], expect)
    assert not torch.allclose(expect, trained)
    with loop.averaged() as m:
        assert m is model and torch.allclose(model.weight, expect)
    assert torch.equal(model.weight, trained)                          # the trained weights are back
    loop.start_average()
    assert torch.equal(loop.ema["weight"], trained) and loop.ema_updates == 0
    _, plain = _loop(Hooks(), steps=2)
    with plain.averaged():
        pass
    assert plain.ema is None and "ema" not in plain.state_dict()


def test_parameter_average_resumes_bit_for_bit():
    _, full = _loop(Hooks(), ema=0.9)
    full.run()
    model_a, part = _loop(Hooks(), steps=7, ema=0.9)
    part.run()
    state, weights = part.state_dict(), {k: v.clone() for k, v in model_a.state_dict().items()}
    model_b, resumed = _loop(Hooks(), ema=0.9)
    model_b.load_state_dict(weights)
    resumed.load_state_dict(state)
    resumed.run()
    assert resumed.ema_updates == full.ema_updates == 20
    assert torch.equal(resumed.ema["weight"], full.ema["weight"])
    _, late = _loop(Hooks(), ema=0.9)                 # a state saved without an average starts one
    model_c = late.model
    _, plain = _loop(Hooks(), steps=7)
    plain.run()
    model_c.load_state_dict(plain.model.state_dict())
    late.load_state_dict(plain.state_dict())
    assert torch.equal(late.ema["weight"], plain.model.weight) and late.ema_updates == 0

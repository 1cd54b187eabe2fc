"""Replace a VITS voice's stochastic duration predictor (a spline flow sampled at temperature ``noise_w``) by
the deterministic :class:`edgeflow.models.vits.duration.DurationPredictor`, distilled from it.

Target (:func:`sdp_targets`): for every distillation sentence the teacher's SDP is sampled ``samples`` times
at the voice's ``noise_w`` (draw 0 is the seeded noise synthesis uses, the others seeded from it) and the
target log duration is ``log(mean_j exp(logw_j))``: the log of the expected duration, so a sentence keeps its
expected length (the mean of the log durations would speak faster, since E[exp(x)] > exp(E[x])); ``"mean_log"``
is the other choice. A deterministic student cannot reproduce the samples' spread, so regressing on single
samples would only add gradient noise around the same optimum. The student reads the teacher's text-encoder
states (the text encoder is unchanged); loss: masked MSE of log durations over padded sentence batches.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from edgeflow.compress.vits_prior_data import Utterance, padded_hidden
from edgeflow.core.errors import ConfigError
from edgeflow.models.vits.model import Vits
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop

Tensor = torch.Tensor
TARGETS = ("log_mean_duration", "mean_log")


@dataclasses.dataclass
class DurationDistillSettings:
    """Options.

    Attributes:
        filter_channels: the deterministic predictor's width. samples, target: SDP draws per sentence and
            how they become the target (:data:`TARGETS`). steps, lr, batch, max_minutes, valid_every,
            grad_clip, seed: training (batches of whole sentences).
    """

    filter_channels: int = 256
    samples: int = 8
    target: str = "log_mean_duration"
    steps: int = 1500
    lr: float = 1e-3
    batch: int = 16
    max_minutes: float = 5.0
    valid_every: int = 50
    grad_clip: float = 5.0
    seed: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ConfigError(f"duration target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.samples < 1 or self.filter_channels < 1:
            raise ConfigError("samples and filter_channels must be >= 1")


@torch.no_grad()
def sdp_samples(teacher: Vits, utt: Utterance, samples: int) -> Tensor:
    """The teacher SDP's log durations [samples, N] at its noise_w: draw 0 with the utterance's own noise."""
    n = utt.ids.shape[0]
    noise = [utt.noise_w_z] + [torch.from_numpy(np.random.default_rng([utt.seed, 3, j]).standard_normal(
        (2, n), dtype=np.float32)) for j in range(1, samples)]
    z = torch.stack(noise) * teacher.config.noise_w
    h = utt.hidden[None].expand(samples, -1, -1)
    return teacher.dp.sample_logw(h, torch.ones(samples, 1, n), z)[:, 0]


def sdp_targets(teacher: Vits, utts: Sequence[Utterance], s: DurationDistillSettings,
                progress: Optional[Callable[[int, int], None]] = None) -> List[Utterance]:
    """Copies of ``utts`` whose ``logw`` is the distillation target (see the module docstring);
    ``progress(done, total)`` after each."""
    if not teacher.config.use_sdp:
        raise ConfigError("the teacher has no stochastic duration predictor to distil")
    out = []
    for u in utts:
        lw = sdp_samples(teacher, u, s.samples)
        tgt = torch.log(torch.exp(lw).mean(0)) if s.target == "log_mean_duration" else lw.mean(0)
        out.append(dataclasses.replace(u, logw=tgt))
        if progress is not None:
            progress(len(out), len(utts))
    return out


def to_deterministic(model: Vits, filter_channels: int = 256, seed: int = 0) -> Vits:
    """A new Vits with a freshly initialised (seeded) deterministic duration predictor, the rest copied."""
    torch.manual_seed(seed)
    new = Vits(model.config.replace(use_sdp=False, dp_filter_channels=int(filter_channels)))
    sd = new.state_dict()
    new.load_state_dict({k: v for k, v in model.state_dict().items()
                         if not k.startswith("dp.") and k in sd and sd[k].shape == v.shape}, strict=False)
    return new.eval()


class _DurObjective:
    def loss(self, dp, batch):
        h, _, logw, mask = batch
        err = (dp(h, mask) - logw) * mask
        return (err ** 2).sum() / mask.sum(), {}


class _DurHooks(LoopHooks):
    def __init__(self, dp, train, held, s):
        self.dp, self.train, self.held, self.s = dp, train, held, s
        self.best_state = copy.deepcopy(dp.state_dict())

    def batch(self, step):
        rng = np.random.default_rng([self.s.seed, 13, step])
        return padded_hidden([self.train[int(i)] for i in rng.integers(0, len(self.train), self.s.batch)])

    def validate(self):
        return duration_error(self.dp, self.held)["mse"]

    def on_valid(self, step, value, improved):
        if improved:
            self.best_state = copy.deepcopy(self.dp.state_dict())


@torch.no_grad()
def duration_error(dp, utts: Sequence[Utterance]) -> Dict[str, float]:
    """The deterministic predictor's log-duration error against ``utts``' logw over all phoneme ids:
    mean squared and mean absolute."""
    dp.eval()
    se = ae = n = 0.0
    for i in range(0, len(utts), 16):
        h, _, logw, mask = padded_hidden(list(utts[i:i + 16]))
        err = (dp(h, mask) - logw) * mask
        se, ae, n = se + float((err ** 2).sum()), ae + float(err.abs().sum()), n + float(mask.sum())
    return {"mse": se / max(n, 1.0), "mae": ae / max(n, 1.0)}


def distill_duration(student: Vits, train: Sequence[Utterance], held: Sequence[Utterance],
                     s: DurationDistillSettings, log=print, progress: bool = True) -> Dict[str, Any]:
    """Train ``student.dp`` (deterministic; in place, best validated weights kept) on target utterances."""
    torch.manual_seed(s.seed)
    dp = student.dp
    hooks = _DurHooks(dp, list(train), list(held), s)
    loop = TrainLoop(dp, _DurObjective(), hooks, LoopSettings(
        steps=s.steps, lr=s.lr, grad_clip=s.grad_clip, valid_every=s.valid_every, max_minutes=s.max_minutes,
        desc="distil durations"), progress=progress, log=log)
    loop.context = f"{len(train)} sentences, {s.batch} per step; "
    t0 = time.time()
    dp.eval()                       # no dropout: deterministic, and the held-out choice regularises
    summary = loop.run(valid_first=True)
    dp.load_state_dict(hooks.best_state)
    dp.eval()
    return {"steps": summary["steps"], "stopped": summary["stopped"], "seconds": round(time.time() - t0, 1),
            "best_step": loop.best_step, "held_out": duration_error(dp, held)}


@torch.no_grad()
def compare_to_sdp(student: Vits, teacher: Vits, utts: Sequence[Utterance]) -> Dict[str, float]:
    """Mean abs log-duration error of the student's durations vs the teacher SDP's seeded sample at noise_w
    (the durations synthesis would use), and the total length ratio (student frames / teacher frames)."""
    ae = n = 0.0
    fs = ft = 0.0
    c = teacher.config
    for u in utts:
        mask = torch.ones(1, 1, u.ids.shape[0])
        got = student.dp(u.hidden[None], mask)[0, 0]
        ref = teacher.dp.sample_logw(u.hidden[None], mask, u.noise_w_z[None] * c.noise_w)[0, 0]
        ae, n = ae + float((got - ref).abs().sum()), n + u.ids.shape[0]
        fs += float(torch.ceil(torch.exp(got) * c.length_scale).sum())
        ft += float(torch.ceil(torch.exp(ref) * c.length_scale).sum())
    return {"mae_log_duration_vs_sdp_sample": ae / max(n, 1.0), "frames_ratio": fs / max(ft, 1.0)}

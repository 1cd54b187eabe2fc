"""Passes that make a VITS voice's flows cheaper, each distilled against the unoptimized teacher with the
teacher's own noise and durations (:mod:`edgeflow.compress.vits_flows`, :mod:`edgeflow.compress.vits_duration`):

* ``tts_reduce_flows``: keep ``n_flows`` (or ``fraction``) of the prior flow's couplings and/or prune its WN
  stacks to ``flow_channels``, then distil the student flow (teacher z_p -> teacher z);
* ``tts_duration``: replace the stochastic duration predictor (spline flow) by the deterministic one,
  distilled from the SDP's samples at the voice's noise_w.

Both run before ``tts_export`` in a ``recipes_tts`` recipe and replace ``artifact.model``; the distillation
text is the ``distillation`` part of :mod:`edgeflow.data.tts_text` plus generated sentences (never the
evaluation sentences).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Optional

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.tts_compress import torch_threads


def _log(message: str) -> None:
    print(f"    {message}", flush=True)


def _vits_refusal(family) -> Optional[str]:
    return None if getattr(family, "name", None) == "vits" else f"the {family.name} family is not a VITS voice"


def _check(artifact: Artifact, name: str):
    from edgeflow.models.vits.model import Vits

    if not isinstance(artifact.model, Vits):
        raise ConfigError(f"{name}: the model is not a VITS voice (got {type(artifact.model).__name__})")
    teacher = artifact.reference if isinstance(artifact.reference, Vits) else artifact.model
    return artifact.model, teacher


def _flops(model) -> Dict[str, float]:
    from edgeflow.models.vits.family import flops_breakdown

    parts = flops_breakdown(model.config)
    return {k: round(v / 1e9, 4) for k, v in dict(parts, total=sum(parts.values())).items()}


def _utterances(teacher, cfg, ctx: PassContext, prior: bool):
    from edgeflow.compress.vits_prior_data import distillation_texts, phoneme_ids, split, teacher_utterances

    ids = phoneme_ids(teacher, distillation_texts(cfg.sentences, cfg.seed))
    _log(f"running the teacher on {len(ids)} distillation sentences ...")
    with _bar(ctx, len(ids), "teacher") as tick:
        utts = teacher_utterances(teacher, ids, seed=cfg.seed + 100000, prior=prior, progress=tick)
    return split(utts, cfg.held_out, cfg.seed)


@contextlib.contextmanager
def _bar(ctx: PassContext, total: int, desc: str):
    """A ``progress(done, total)`` callback drawing a bar with an ETA (None without progress)."""
    if not ctx.progress:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"    {desc}", unit="sentence", dynamic_ncols=True)
    try:
        yield lambda done, _total: bar.update(done - bar.n)
    finally:
        bar.close()


@dataclasses.dataclass
class TtsReduceFlowsConfig(PassConfig):
    """Options of ``tts_reduce_flows``.

    Attributes:
        n_flows: prior-flow couplings to keep (0: all, or as ``fraction`` says).
        fraction: keep this fraction of the couplings instead (rounded, at least 1; 0: unused).
        keep: which couplings: "spread" (evenly, ends included; default), "first", "last", or a list of
            indices. On en_US-joe-medium, 4 -> 2, 150 distillation steps: held-out MSE of z 0.406 (spread
            [0, 3]), 0.417 (first), 0.457 (last), from 2.79 / 2.02 / 2.27 before distillation (2026-12-02).
        flow_channels: prune the flow's WN stacks to this width (0: unchanged).
        sentences: generated sentences added to the distillation ones. held_out: fraction kept for validation.
        steps, lr, batch, window, margin, max_minutes, valid_every, seed: distillation (0 steps: none).
        threads: torch threads while the pass runs the teacher and trains (0: unchanged). The work is many
            small ops: on this project's 2-core machine, shared, 2 threads ran the teacher 15x slower than 1
            (2026-12-02), so 1 is the default.
    """

    n_flows: int = 0
    fraction: float = 0.0
    keep: Any = "spread"
    flow_channels: int = 0
    sentences: int = 150
    held_out: float = 0.1
    steps: int = 600
    lr: float = 3e-4
    batch: int = 8
    window: int = 64
    margin: int = 16
    max_minutes: float = 10.0
    valid_every: int = 25
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.n_flows < 0 or self.flow_channels < 0 or self.steps < 0 or self.sentences < 0:
            raise ValueError("n_flows, flow_channels, steps and sentences must be >= 0")
        if not 0 <= self.fraction < 1 or (self.fraction and self.n_flows):
            raise ValueError("fraction must be in [0, 1) and not given together with n_flows")
        if not (self.n_flows or self.fraction or self.flow_channels):
            raise ValueError("nothing to reduce: set n_flows, fraction and/or flow_channels")
        if isinstance(self.keep, str) and self.keep not in ("first", "last", "spread"):
            raise ValueError(f"keep must be first, last, spread or a list of indices, got {self.keep!r}")
        if not 0 < self.held_out < 1 or min(self.batch, self.window) < 1 or self.margin < 0:
            raise ValueError("held_out must be in (0, 1); batch and window >= 1; margin >= 0")

    def refusal(self, family) -> Optional[str]:
        return _vits_refusal(family)


def _reduce_flows(artifact: Artifact, cfg: TtsReduceFlowsConfig, ctx: PassContext):
    from edgeflow.compress.vits_flows import (FlowDistillSettings, chosen_couplings, distill_flow,
                                              keep_couplings, prune_flow)

    model, teacher = _check(artifact, "tts_reduce_flows")
    n = model.config.n_flows
    k = cfg.n_flows or (max(1, int(round(cfg.fraction * n))) if cfg.fraction else n)
    if k >= n and not cfg.flow_channels:              # a recipe's 4 -> 2 on a voice that already has <= 2
        _log(f"    the prior flow has {n} coupling(s), not more than {k}: nothing to reduce")
        return {"couplings": {"before": n, "after": n}, "note": f"nothing to reduce ({n} <= {k} couplings)"}
    idx = chosen_couplings(n, min(k, n), cfg.keep)
    student = keep_couplings(model, idx)
    details: Dict[str, Any] = {"couplings": {"before": n, "after": k, "kept": idx}}
    if cfg.flow_channels:
        student, info = prune_flow(student, cfg.flow_channels)
        details["flow_channels"] = {"before": info["from"], "after": info["to"], "score": info["score"]}
    train, held = _utterances(teacher, cfg, ctx, prior=True)
    s = FlowDistillSettings(steps=cfg.steps, lr=cfg.lr, batch=cfg.batch, window=cfg.window, margin=cfg.margin,
                            max_minutes=cfg.max_minutes, valid_every=cfg.valid_every, seed=cfg.seed)
    summary = distill_flow(student, train, held, s, log=_log, progress=ctx.progress)
    details["distillation"] = dict(summary, sentences=len(train) + len(held),
                                   loss="masked MSE of z (teacher z_p, noise and durations)")
    details["gflops_per_audio_second"] = {"before": _flops(model), "after": _flops(student)}
    artifact.model = student
    return details


def _reduce_flows_pass(artifact: Artifact, cfg: TtsReduceFlowsConfig, ctx: PassContext):
    with torch_threads(cfg.threads):
        return _reduce_flows(artifact, cfg, ctx)


register_pass("tts_reduce_flows", TtsReduceFlowsConfig, _reduce_flows_pass)


@dataclasses.dataclass
class TtsDurationConfig(PassConfig):
    """Options of ``tts_duration`` (replace the stochastic duration predictor by a distilled deterministic one).

    Attributes:
        filter_channels: the deterministic predictor's width.
        samples: SDP draws per sentence; target: "log_mean_duration" (log of the mean duration) or "mean_log".
        sentences, held_out, steps, lr, batch, max_minutes, valid_every, seed: data and distillation.
        threads: torch threads while the pass runs (0: unchanged; see ``tts_reduce_flows``).
    """

    filter_channels: int = 256
    samples: int = 8
    target: str = "log_mean_duration"
    sentences: int = 300
    held_out: float = 0.1
    steps: int = 1500
    lr: float = 1e-3
    batch: int = 16
    max_minutes: float = 5.0
    valid_every: int = 50
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        from edgeflow.compress.vits_duration import TARGETS

        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if min(self.filter_channels, self.samples, self.batch) < 1 or self.steps < 0 or self.sentences < 0:
            raise ValueError("filter_channels, samples and batch must be >= 1; steps, sentences >= 0")
        if not 0 < self.held_out < 1 or self.threads < 0:
            raise ValueError("held_out must be in (0, 1) and threads >= 0")

    def refusal(self, family) -> Optional[str]:
        return _vits_refusal(family)


def _duration(artifact: Artifact, cfg: TtsDurationConfig, ctx: PassContext):
    from edgeflow.compress.vits_duration import (DurationDistillSettings, compare_to_sdp, distill_duration,
                                                 sdp_targets, to_deterministic)

    model, teacher = _check(artifact, "tts_duration")
    if not model.config.use_sdp or not teacher.config.use_sdp:
        raise ConfigError("tts_duration: the model already has a deterministic duration predictor")
    s = DurationDistillSettings(filter_channels=cfg.filter_channels, samples=cfg.samples, target=cfg.target,
                                steps=cfg.steps, lr=cfg.lr, batch=cfg.batch, max_minutes=cfg.max_minutes,
                                valid_every=cfg.valid_every, seed=cfg.seed)
    train, held = _utterances(teacher, cfg, ctx, prior=False)
    _log(f"sampling the stochastic duration predictor {cfg.samples} times per sentence ...")
    with _bar(ctx, len(train) + len(held), "SDP samples") as tick:
        both = sdp_targets(teacher, list(train) + list(held), s, progress=tick)
    train_t, held_t = both[:len(train)], both[len(train):]
    student = to_deterministic(model, cfg.filter_channels, cfg.seed)
    summary = distill_duration(student, train_t, held_t, s, log=_log, progress=ctx.progress)
    details: Dict[str, Any] = {
        "duration_model": {"before": f"stochastic ({model.config.sdp_flows} spline flows)",
                           "after": f"deterministic ({cfg.filter_channels} channels)"},
        "distillation": dict(summary, sentences=len(train) + len(held), target=cfg.target, samples=cfg.samples),
        "held_out_vs_sdp": compare_to_sdp(student, teacher, held),
        "gflops_per_audio_second": {"before": _flops(model), "after": _flops(student)}}
    artifact.model = student
    return details


def _duration_pass(artifact: Artifact, cfg: TtsDurationConfig, ctx: PassContext):
    with torch_threads(cfg.threads):
        return _duration(artifact, cfg, ctx)


register_pass("tts_duration", TtsDurationConfig, _duration_pass)

"""Pass ``generator_prune``: structured channel pruning of a HiFi-GAN vocoder's generator, then distillation
against the teacher's own audio on training mels.

Applies to a family that declares the generator's channel groups (``Family.channel_groups(config)``, the
``hifigan`` family); others are refused before the first pass runs. Steps:

1. training mels: ``window_frames``-frame windows drawn (seeded) from the distillation data the pipeline
   resolves (``data`` option, else ``--data CORPUS``'s train split, the corpus the model was trained on, or the
   calibration set's mels: :func:`edgeflow.compress.data.resolve_source`), plus fixed validation windows (the
   corpus's valid split; for a calibration set, its first mels, which the training draws may also visit);
2. targets: the **teacher's** audio for each window (the unoptimized model by default), never the recording, so
   the student learns the vocoder it replaces, including on speakers the corpus does not sound like;
3. :func:`edgeflow.compress.generator.prune_generator` removes ``ratio`` of every channel group (importance from
   ``score_windows`` training windows; with ``refit`` the kept convs are then refitted by least squares to the
   unpruned ones on those windows), :func:`edgeflow.compress.generator_distill.distill_generator` trains the
   pruned generator (``finetune``: GeneratorDistillSettings options, among them an adversarial term against a
   discriminator trained beside it, ``adv_weight`` / ``fm_weight``), and the model keeps the best (or the last,
   ``keep``) student.

Run it before ``freeze`` / ``export`` (the polyphase export form has no channel groups to cut).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from edgeflow.compress.data import NoTrainingData
from edgeflow.compress.generator_distill import GeneratorDistillSettings
from edgeflow.compress.generator_refit import REFIT_MODES
from edgeflow.compress.prune import check_ratio
from edgeflow.core.errors import ConfigError
from edgeflow.models.family import Family
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.distill import check_pair, size_facts, skipped, teacher_of


def generator_refusal(family) -> Optional[str]:
    """Why ``family`` has no generator channels to prune, or None."""
    if family.task != "vocoder":
        return f"it prunes a vocoder's generator; a {family.name} voice's decoder is pruned by tts_prune"
    if type(family).channel_groups is Family.channel_groups:
        return (f"it prunes a HiFi-GAN generator's channel groups and the {family.name} family declares none "
                f"(Family.channel_groups)")
    return None


@dataclasses.dataclass
class GeneratorPruneConfig(PassConfig):
    """Options.

    Attributes:
        ratio: fraction of every channel group removed, in [0, 1) (0: distillation only).
        widths: {group: channels kept, or a fraction in (0, 1] of the group's width} overriding ``ratio`` for
            those groups: a name of ``channel_groups``, ``stage-1`` (the last stage) or ``inner@stage{i}`` (see
            :func:`edgeflow.compress.generator.plan_widths`).
        teacher: "reference" (the unoptimized model), "current" (the model before this pass) or a model.pt.
        data: distillation data (corpus, calibration set or wav folder); "": the run's (see the module doc).
        windows, valid_windows: training and validation windows (the teacher's audio is computed once for each).
        window_frames: mel frames per window.
        score_windows: training windows for the channel importance and the refit (0: weight-only score).
        refit: least-squares refit of the pruned generator's convs on the score windows before distilling
            (:func:`edgeflow.compress.generator_refit.refit_readers`; the universal V1 with its last stage halved
            and its stage 1-2 inner widths halved: log-mel L1 to the unpruned model 2.38 -> 0.52 before any
            distillation step, 8 recordings, 2026-12-04, independent mode).
        refit_mode: "sequential" (each conv fitted on the pruned generator's own features, in forward order)
            or "independent" (on the unpruned generator's).
        seed: the window draws.
        finetune: GeneratorDistillSettings options (steps, max_minutes, batch, lr, ...).
    """

    ratio: float = 0.5
    widths: Dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: str = "reference"
    data: str = ""
    windows: int = 128
    valid_windows: int = 8
    window_frames: int = 32
    score_windows: int = 16
    refit: bool = True
    refit_mode: str = "sequential"
    seed: int = 0
    finetune: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_ratio(self.ratio)
        if not isinstance(self.widths, dict) or not isinstance(self.finetune, dict):
            raise ValueError("widths and finetune must be mappings")
        if self.windows < 1 or self.valid_windows < 1 or self.window_frames < 8 or self.score_windows < 0:
            raise ValueError("windows >= 1, valid_windows >= 1, window_frames >= 8 and score_windows >= 0 "
                             "are required")
        if self.refit and self.score_windows < 1:
            raise ValueError("refit needs score_windows >= 1 (the windows it is fitted on)")
        if self.refit_mode not in REFIT_MODES:
            raise ValueError(f"refit_mode must be one of {', '.join(REFIT_MODES)}")
        GeneratorDistillSettings.from_dict(self.finetune)

    def inputs(self):
        return {"training_data": self.data}

    def refusal(self, family) -> Optional[str]:
        return generator_refusal(family)


def _windows(artifact: Artifact, ctx: PassContext, cfg: GeneratorPruneConfig, mel_cfg):
    """(train mels [N, n_mels, F], valid mels [M, n_mels, F], source, kind) from the resolved distillation data
    (kind: "corpus", "calibration" or "wavs")."""
    import torch

    from edgeflow.compress.data import load_source, resolve_source

    kind, path = resolve_source(cfg.data, ctx.data_dir, artifact.info.get("train_data"), ctx.calib_dir)
    data = load_source(kind, path, mel_cfg, cfg.window_frames * mel_cfg.hop_length, cfg.seed, cfg.valid_windows)
    train = torch.cat([data.batch(k, 1)[1] for k in range(cfg.windows)])
    valid = torch.cat([mel for _, mel in data.valid_batches(cfg.valid_windows)])[:cfg.valid_windows]
    return train.float(), valid.float(), data.source, kind


def teacher_audio(generator, mels, progress: bool, batch: int = 8):
    """The teacher generator's audio [N, 1, F * hop] for mel windows [N, n_mels, F] (no gradients)."""
    import torch

    from edgeflow.validate.progress import Progress

    prog = Progress("teacher audio", len(mels), print if progress else None, "windows")
    outs = []
    with torch.no_grad():
        for a in range(0, len(mels), batch):
            outs.append(generator(mels[a:a + batch]).float())
            prog.advance(len(outs[-1]))
    return torch.cat(outs)


def _generator_prune(artifact: Artifact, cfg: GeneratorPruneConfig, ctx: PassContext):
    import torch

    from edgeflow.audio.mel_torch import LogMel
    from edgeflow.compress.generator import prune_generator, stage_summary
    from edgeflow.compress.generator_distill import GeneratorWindows, distill_generator
    from edgeflow.models.base import build_model

    model = artifact.model
    if model is None or not hasattr(model, "generator"):
        raise ConfigError("generator_prune: the artifact has no torch HiFi-GAN model (run it before export)")
    teacher = teacher_of(artifact, cfg.teacher)
    check_pair(teacher, model)
    try:
        train_mels, valid_mels, source, kind = _windows(artifact, ctx, cfg, model.config.mel)
    except NoTrainingData as exc:
        return skipped("generator_prune", exc)
    teacher.eval()
    train = GeneratorWindows(train_mels, teacher_audio(teacher.generator, train_mels, ctx.progress))
    valid = GeneratorWindows(valid_mels, teacher_audio(teacher.generator, valid_mels, ctx.progress))
    with torch.no_grad():
        scored = [train_mels[a:a + 8] for a in range(0, min(cfg.score_windows, len(train_mels)), 8)]
        gen, info = prune_generator(model.generator, cfg.ratio, dict(cfg.widths) or None, scored or None,
                                    refit=cfg.refit, refit_mode=cfg.refit_mode)
    settings = GeneratorDistillSettings.from_dict(cfg.finetune)
    summary = distill_generator(gen, train, valid, LogMel(model.config.mel), settings, progress=ctx.progress,
                                desc="generator_prune distill")
    with torch.random.fork_rng():
        student = build_model(model.family, model.config.replace(generator=gen.config))
    student.generator = gen.eval()
    student.eval()
    artifact.model = student
    caution = _caution(kind, cfg, settings)
    if caution and ctx.progress:
        print(f"    caution: {caution['caution']}")
    return {"ratio": cfg.ratio, "groups": stage_summary(info), "score": info["score"],
            "refit": info["refit_mode"] or False,
            "data": f"{source}: {len(train)} windows of {cfg.window_frames} frames, {len(valid)} for validation; "
                    f"targets: the teacher's audio", "before": size_facts(model), "after": size_facts(student),
            "training": summary, **caution}


#: Said when the pruned generator is refitted on a calibration set's mels alone (2026-12-04, universal V1, the cpu
#: fast recipe's layout: DNSMOS P.808 -0.37 on held-out recordings, against -0.15 refitted on real recordings).
CALIBRATION_CAUTION = ("the refit saw only the calibration set's mels; on the universal HiFi-GAN that cost 0.37 "
                       "DNSMOS P.808 where real recordings cost 0.15: pass --data CORPUS of recorded speech")


def _caution(kind: str, cfg: GeneratorPruneConfig, settings: GeneratorDistillSettings) -> Dict[str, str]:
    """{"caution": ...} when a refit without distillation ran on a calibration set, else {}."""
    if kind == "calibration" and cfg.refit and settings.steps == 0:
        return {"caution": CALIBRATION_CAUTION}
    return {}


register_pass("generator_prune", GeneratorPruneConfig, _generator_prune)

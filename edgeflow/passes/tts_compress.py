"""Pass ``tts_prune``: structured channel pruning of a VITS voice's HiFi-GAN decoder, then distillation of the
pruned decoder against the teacher's own audio (same durations and noise).

Runs on the torch model, so it goes BEFORE ``tts_export`` in a recipe. Steps:

1. distillation pairs (:func:`edgeflow.compress.vits_decoder_data.decoder_windows`): ``sentences`` training
   sentences (never the evaluation ones) x ``seeds_per_sentence`` noise seeds; the teacher (the artifact's
   reference, the unoptimized voice) gives durations and audio, the current model its latent z; the last
   ``valid_fraction`` of the sentences are held out for validation;
2. pruning (:func:`edgeflow.compress.generator.prune_generator`): ``ratio`` of every channel group removed
   (``widths`` overrides named groups, e.g. {"stage2": 16}), channels ranked on ``calib_windows`` training
   windows, the kept convs refitted by least squares on them (``refit``);
3. distillation (:func:`edgeflow.compress.generator_distill.distill_generator`): log-mel L1 + MR-STFT (plus an
   adversarial term with ``adv_weight`` > 0), AdamW, ``steps`` / ``max_minutes``, the best held-out weights kept
   (or the last, ``keep``). Its state is kept in the run's work folder (:func:`distill_state`): rerunning a
   stopped ``edgeflow optimize`` resumes the distillation where it was, and a rerun with a larger ``max_minutes``
   or ``steps`` trains on from where the last run ended.

The artifact's model becomes a new Vits with the smaller decoder (its config carries the widths); the details
report the parameters, the cost model's decoder and total GFLOP per second of audio before / after, the loss
curve summary and the validation distances (``valid_unpruned``: the unpruned decoder on the same held-out
windows, the floor; ``distill.valid_before``: right after pruning; ``distill.valid_best``).

Measured on joe-medium (2026-12-02, 2-core CPU shared with other jobs, load 15-19): 10 minutes bought only 40-180
steps, leaving the held-out distance at 1.7-2.1 (floor 0.075) and DNSMOS P.808 0.5-0.8 below the teacher, so the
quality gate rolls the pass back; the pruned voices themselves run 1.75x (ratio 0.25) and 2.29x (0.5) faster than
the stock voice with the INT8 decoder. The pass needs a longer distillation budget than a shared CPU gives.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


@dataclasses.dataclass
class TtsPruneConfig(PassConfig):
    """Options of ``tts_prune``.

    Attributes:
        ratio: fraction of the channels of every decoder channel group removed, in [0, 1).
        widths: {group: width kept, or a fraction in (0, 1] of its width} for named groups (``pre``, ``stage0``
            ...; see :func:`edgeflow.models.hifigan.channel_groups`; also ``stage-1`` and ``inner@stage{i}``,
            :func:`edgeflow.compress.generator.plan_widths`), overriding ``ratio`` for them.
        steps, max_minutes, lr, batch: distillation (AdamW) steps, time cap, learning rate, windows per step.
        window_frames: frames per training window (x hop samples of audio) the loss sees.
        margin_frames: context frames each side of a window (the decoder sees them, the loss does not).
        sentences, seeds_per_sentence: distillation text and noise draws per sentence.
        valid_fraction: sentences held out for validation.
        calib_windows: training windows the channel ranking (and the refit) runs on, drawn (seeded) from the
            whole training set.
        refit: least-squares refit of the pruned decoder's convs before distilling
            (:func:`edgeflow.compress.generator_refit.refit_readers`; joe-medium at ratio 0.5: validation
            distance 5.69 -> 4.17 before any step, independent mode).
        refit_mode: "sequential" (each conv fitted on the pruned decoder's own features, in forward order) or
            "independent" (on the unpruned decoder's).
        mel_weight, stft_weight, wave_weight: loss weights (log-mel L1, multi-resolution STFT, sample L1
            against the teacher's waveform: the same noise and durations make it phase-exact).
        valid_every: steps between validations.
        threads: torch threads during the pass (0: as is).
        adv_weight, fm_weight, adv_start, disc_channels, keep: the adversarial term of the distillation (a
            spectrogram discriminator trained beside the decoder; 0: none) and which weights are kept ("best" by
            the spectral validation distance, or "last"); see
            :class:`edgeflow.compress.generator_distill.GeneratorDistillSettings`.
    """

    ratio: float = 0.25
    widths: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 600
    max_minutes: float = 10.0
    lr: float = 2e-4
    batch: int = 8
    window_frames: int = 32
    margin_frames: int = 4
    sentences: int = 40
    seeds_per_sentence: int = 2
    valid_fraction: float = 0.1
    calib_windows: int = 64
    refit: bool = True
    refit_mode: str = "sequential"
    mel_weight: float = 1.0
    stft_weight: float = 1.0
    wave_weight: float = 0.0
    valid_every: int = 50
    threads: int = 0
    adv_weight: float = 0.0
    fm_weight: float = 0.0
    adv_start: int = 0
    disc_channels: int = 32
    keep: str = "best"

    def __post_init__(self):
        from edgeflow.compress.prune import check_ratio

        try:
            check_ratio(self.ratio)
        except ConfigError as exc:
            raise ValueError(str(exc).replace("prune:", "tts_prune:")) from None
        if not isinstance(self.widths, dict):
            raise ValueError("widths must be a mapping {channel group: width}")
        if self.margin_frames < 0:
            raise ValueError("margin_frames must be >= 0")
        if min(self.window_frames, self.sentences, self.seeds_per_sentence, self.calib_windows) < 1:
            raise ValueError("window_frames, sentences, seeds_per_sentence and calib_windows must be >= 1")
        if not 0.0 < self.valid_fraction < 1.0 or self.sentences < 2:
            raise ValueError("valid_fraction must be in (0, 1) and sentences >= 2 (one is held out)")
        from edgeflow.compress.generator_refit import REFIT_MODES

        if self.refit_mode not in REFIT_MODES:
            raise ValueError(f"refit_mode must be one of {', '.join(REFIT_MODES)}")
        self.settings()                                     # the distillation options are checked here

    def settings(self):
        """The :class:`GeneratorDistillSettings` of these options."""
        from edgeflow.compress.generator_distill import GeneratorDistillSettings

        return GeneratorDistillSettings(steps=self.steps, max_minutes=self.max_minutes, lr=self.lr, batch=self.batch,
                                        mel_weight=self.mel_weight, stft_weight=self.stft_weight,
                                        wave_weight=self.wave_weight, valid_every=self.valid_every,
                                        threads=self.threads,
                                        adv_weight=self.adv_weight, fm_weight=self.fm_weight,
                                        adv_start=self.adv_start, disc_channels=self.disc_channels, keep=self.keep)

    def refusal(self, family: Any) -> Optional[str]:
        if getattr(family, "name", None) != "vits":
            return f"tts_prune prunes a VITS voice's decoder; the {getattr(family, 'name', '?')} family is not VITS"
        return None


def voice_logmel(cfg):
    """The log-mel front end of a VitsConfig ``cfg`` (the distillation's mel term)."""
    from edgeflow.audio.mel import MelConfig
    from edgeflow.audio.mel_torch import LogMel

    return LogMel(MelConfig(sample_rate=cfg.sample_rate, n_fft=cfg.filter_length, hop_length=cfg.hop_length,
                            win_length=cfg.win_length, n_mels=cfg.mel_channels, fmin=cfg.mel_fmin,
                            fmax=cfg.mel_fmax or cfg.sample_rate / 2))


def decoder_cost(model) -> Dict[str, float]:
    """A Vits model's decoder and total GFLOP per second of audio (cost model) and its inference parameters."""
    from edgeflow.models.family import get_family

    parts = get_family(model).flops_breakdown(model.config)
    return {"decoder_gflop_per_s": round(parts["decoder"] / 1e9, 3),
            "total_gflop_per_s": round(sum(parts.values()) / 1e9, 3), "params": model.inference_parameters()}


def calibration_batches(cond: torch.Tensor, n: int, seed: int = 0, batch: int = 16) -> List[torch.Tensor]:
    """``n`` windows spread over the whole training set (a seeded draw, kept in order), in batches.

    Args:
        cond: latent windows [K, C, F].
        n: windows wanted (all K if fewer).

    Returns:
        tensors [<= batch, C, F], ceil(min(n, K) / batch) of them.
    """
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(cond.shape[0], generator=g)[:min(n, cond.shape[0])].sort().values
    return [cond[pick[a:a + batch]] for a in range(0, len(pick), batch)]


def with_decoder(model, dec):
    """A copy of the Vits ``model`` whose decoder is ``dec`` (config updated)."""
    new = copy.deepcopy(model)
    new.dec = dec
    new.config = model.config.replace(decoder=dec.config.to_dict())
    return new


def distillation_windows(model, teacher, cfg: TtsPruneConfig, ctx: PassContext, log):
    """(train, valid) decoder windows of ``cfg``'s distillation sentences: the teacher's durations and audio,
    ``model``'s latent z (:func:`edgeflow.compress.vits_decoder_data.decoder_windows`)."""
    from edgeflow.compress.vits_decoder_data import decoder_windows, distillation_texts

    return decoder_windows(teacher, model, distillation_texts(cfg.sentences, ctx.seed), cfg.seeds_per_sentence,
                           cfg.window_frames, seed=ctx.seed, valid_fraction=cfg.valid_fraction,
                           margin=cfg.margin_frames, log=log)


#: Options that do not change what a distillation step computes: a run resumes across changes of them.
RESUMABLE_OPTIONS = ("steps", "max_minutes", "threads", "keep", "valid_every")


def distill_state(ctx: PassContext, pass_name: str, cfg: PassConfig, student: torch.nn.Module):
    """(state file, key) of a pass's distillation in the run's work folder
    (:func:`edgeflow.compress.generator_distill.distill_generator`): the key hashes the pass options (those in
    :data:`RESUMABLE_OPTIONS` aside, so a rerun with a longer ``max_minutes`` trains on), the seed and the
    student's starting weights, so a state of other settings or of another model is not resumed."""
    import hashlib
    import json

    h = hashlib.sha256()
    opts = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_OPTIONS}
    h.update(json.dumps([pass_name, opts, ctx.seed], sort_keys=True, default=str).encode())
    for name, t in sorted(student.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return Path(ctx.work_dir) / f"{pass_name}-distill-state.pt", h.hexdigest()


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's CPU threads set to ``n`` inside the block (0: left as is), restored after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def vits_and_teacher(artifact: Artifact, pass_name: str):
    """(the artifact's Vits model, its teacher: the reference when that is a Vits, else the model itself)."""
    from edgeflow.models.vits.model import Vits

    model = artifact.model
    if not isinstance(model, Vits):
        raise ConfigError(f"{pass_name}: needs a VITS model, got "
                          f"{type(model).__name__ if model is not None else 'none'}")
    return model, artifact.reference if isinstance(artifact.reference, Vits) else model


def _apply(artifact: Artifact, cfg: TtsPruneConfig, ctx: PassContext):
    from edgeflow.compress.generator import prune_generator, stage_summary
    from edgeflow.compress.generator_distill import distill_generator, window_distance

    model, teacher = vits_and_teacher(artifact, "tts_prune")
    log = print if ctx.progress else None
    t0, settings = time.time(), cfg.settings()
    with torch_threads(cfg.threads):
        train, valid = distillation_windows(model, teacher, cfg, ctx, log)
        t_data = time.time() - t0
        logmel = voice_logmel(model.config)
        calib = calibration_batches(train.cond, cfg.calib_windows, ctx.seed)
        dec, info = prune_generator(model.dec, cfg.ratio, dict(cfg.widths) or None, calib,
                                    refit=cfg.refit, refit_mode=cfg.refit_mode)
        if log is not None:
            log("tts_prune: " + (", ".join(stage_summary(info)) or "nothing pruned") +
                f"; decoder parameters {info['params'][0]:,} -> {info['params'][1]:,}")
        floor = window_distance(model.dec, valid, logmel, settings)
        path, key = distill_state(ctx, "tts_prune", cfg, dec)
        summary = distill_generator(dec, train, valid, logmel, settings, progress=ctx.progress, log=log,
                                    desc="tts_prune distill", state_path=path, state_key=key)
    new = with_decoder(model, dec)
    before, after = decoder_cost(model), decoder_cost(new)
    artifact.model = new
    return {"ratio": cfg.ratio, "groups": {k: v for k, v in info["groups"].items() if v[0] != v[1]},
            "decoder_widths": [model.dec.config.widths(), info["widths"]],
            "params": [before["params"], after["params"]],
            "decoder_gflop_per_s": [before["decoder_gflop_per_s"], after["decoder_gflop_per_s"]],
            "total_gflop_per_s": [before["total_gflop_per_s"], after["total_gflop_per_s"]],
            "windows": {"train": len(train), "valid": len(valid), "frames": cfg.window_frames,
                        "margin": cfg.margin_frames,
                        "seconds": round(t_data, 1)},
            "valid_unpruned": round(floor, 5), "distill": summary, "seconds": round(time.time() - t0, 1)}


register_pass("tts_prune", TtsPruneConfig, _apply)

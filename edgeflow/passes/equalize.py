"""Pass ``equalize``: cross-layer equalization of a HiFi-GAN generator's channels (a vocoder's, or a VITS voice's
decoder) so that per-tensor INT8 scales fit every channel; exact in float
(:mod:`edgeflow.compress.generator_equalize`).

Run it on the torch model, before ``export`` / ``tts_export`` and the INT8 pass. Calibration inputs: for a
vocoder, ``windows`` mel windows of the distillation data the pipeline resolves (the ``data`` option, else
``--data CORPUS``'s train split, the training corpus, or the calibration set:
:func:`edgeflow.compress.data.resolve_source`); for a VITS voice, the decoder's latent windows of ``sentences``
distillation sentences (the teacher's own durations and noise, as ``tts_prune`` draws them). The pass checks that
the equalized model computes the same audio (to 1e-3 of its peak, typically 1e-5) and leaves the audio metrics as
they were; the INT8 pass after it is what the gate scores.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, List, Optional, Tuple

from edgeflow.compress.data import NoTrainingData
from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.distill import skipped


@dataclasses.dataclass
class EqualizeConfig(PassConfig):
    """Options.

    Attributes:
        alpha: migration strength in [0, 1] (1: every channel's peak equal; 0: nothing changes).
        inner: also equalize type-1 resblocks' inner channels.
        windows: calibration windows (vocoder: mel windows; voice: latent windows).
        window_frames: frames per window.
        data: a vocoder's calibration data (corpus, calibration set or wav folder); "": the run's.
        sentences: a voice's distillation sentences the latent windows come from.
    """

    alpha: float = 0.5
    inner: bool = True
    windows: int = 64
    window_frames: int = 32
    data: str = ""
    sentences: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"equalize: alpha must be in [0, 1], got {self.alpha}")
        if self.windows < 1 or self.window_frames < 4 or self.sentences < 1:
            raise ConfigError("equalize: windows and sentences must be >= 1, window_frames >= 4")

    def refusal(self, family) -> Optional[str]:
        from edgeflow.models.family import Family

        if type(family).channel_groups is Family.channel_groups:
            return (f"it equalizes a HiFi-GAN generator's channels (a vocoder's or a voice's decoder) and the "
                    f"{family.name} family declares none (Family.channel_groups)")
        return None


def _vocoder_windows(artifact: Artifact, cfg: EqualizeConfig, ctx: PassContext, mel_cfg) -> Tuple[List[Any], str]:
    """Mel windows [<= 16, n_mels, F] in batches, from the resolved data."""
    import torch

    from edgeflow.compress.data import load_source, resolve_source

    kind, path = resolve_source(cfg.data, ctx.data_dir, artifact.info.get("train_data"), ctx.calib_dir)
    data = load_source(kind, path, mel_cfg, cfg.window_frames * mel_cfg.hop_length, ctx.seed, 1)
    mels = torch.cat([data.batch(k, 1)[1] for k in range(cfg.windows)]).float()
    return [mels[a:a + 16] for a in range(0, len(mels), 16)], f"{data.source}: {len(mels)} mel windows"


def _voice_windows(model, cfg: EqualizeConfig, ctx: PassContext) -> Tuple[List[Any], str]:
    """Latent windows of the voice's decoder, in batches."""
    from edgeflow.compress.vits_decoder_data import decoder_windows, distillation_texts
    from edgeflow.passes.tts_compress import calibration_batches

    train, _ = decoder_windows(model, model, distillation_texts(cfg.sentences + 1, ctx.seed), 1,
                               cfg.window_frames, seed=ctx.seed, valid_fraction=0.0, margin=4,
                               log=print if ctx.progress else None)
    batches = calibration_batches(train.cond, cfg.windows, ctx.seed)
    return batches, f"{cfg.sentences} distillation sentences: {sum(len(b) for b in batches)} latent windows"


def _equalize(artifact: Artifact, cfg: EqualizeConfig, ctx: PassContext):
    import torch

    from edgeflow.compress.generator_equalize import equalize_generator

    model = artifact.model
    if model is None or not (hasattr(model, "generator") or hasattr(model, "dec")):
        raise ConfigError("equalize: the artifact has no torch HiFi-GAN generator or VITS decoder (run it before "
                          "export)")
    voice = not hasattr(model, "generator")
    try:
        with torch.no_grad():
            inputs, source = (_voice_windows(model, cfg, ctx) if voice else
                              _vocoder_windows(artifact, cfg, ctx, model.config.mel))
    except NoTrainingData as exc:
        return skipped("equalize", exc)
    new = copy.deepcopy(model).eval()               # the reference / teacher may be the same object
    info = equalize_generator(new.dec if voice else new.generator, inputs, cfg.alpha, cfg.inner)
    artifact.model = new
    if ctx.progress:
        print("    equalize: channel peak spread (largest / smallest) " + ", ".join(
            f"{k} {a:g} -> {b:g}" for k, (a, b) in info["stages"].items()) +
            f"; output unchanged to {info['max_rel_error']:.1g}")
    return {**info, "inputs": source}


register_pass("equalize", EqualizeConfig, _equalize, changes_output=False)

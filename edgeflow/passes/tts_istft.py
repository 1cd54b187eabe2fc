"""Pass ``tts_istft``: a VITS voice's waveform-rate decoder stages replaced by an inverse-STFT head, distilled.

The decoder's last HiFi-GAN stage runs at the audio rate (joe-medium: 32 channels at 22.05 kHz, 37% of the
decoder's FLOPs) and is what INT8 cannot take, so the ``balanced`` and ``fast`` recipes keep it float and it
is about half of their decoder's time (bench/results/tts_optimize.md). This pass cuts the decoder ``stages``
stages early and ends it in an iSTFTNet head (:mod:`edgeflow.compress.generator_istft`): the kept stages keep
their weights, the head is learned by distillation against the teacher's own audio with the same durations
and noise, exactly as ``tts_prune`` distills (its data, losses, options and report; pruning is that pass's
job, so ``ratio`` and ``widths`` must stay unset here). What remains of the decoder is convolutions INT8 can
take (``tts_quantize`` with ``float_last_stages: 0``); the head's conv and inverse-DFT matmul stay float.

Runs on the torch model, before ``tts_export``. Details: the rates and head, parameters and the cost model's
GFLOP per second of audio before / after, the windows, the teacher decoder's own distance on the held-out
windows (the floor) and the distillation summary.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from edgeflow.passes.base import Artifact, PassContext, register_pass
from edgeflow.passes.tts_compress import (TtsPruneConfig, decoder_cost, distill_state, distillation_windows,
                                          torch_threads, vits_and_teacher, voice_logmel, with_decoder)


@dataclasses.dataclass
class TtsIstftConfig(TtsPruneConfig):
    """Options of ``tts_istft``: ``tts_prune``'s distillation options (see
    :class:`edgeflow.passes.tts_compress.TtsPruneConfig`) with longer defaults, plus:

    Attributes:
        stages: decoder upsampling stages replaced by the head, counted from the output (joe-medium has 3).
        n_fft_ratio: the head's FFT size over its hop (the hop is the product of the replaced stages' rates).
    """

    ratio: float = 0.0
    stages: int = 1
    n_fft_ratio: int = 4
    steps: int = 4000
    max_minutes: float = 40.0
    lr: float = 5e-4
    sentences: int = 120
    valid_every: int = 250

    def __post_init__(self):
        super().__post_init__()
        if self.ratio or self.widths:
            raise ValueError("tts_istft does not prune: put a tts_prune pass before it for that")
        if int(self.stages) < 1 or int(self.n_fft_ratio) < 2:
            raise ValueError("stages must be >= 1 and n_fft_ratio >= 2")

    def refusal(self, family: Any) -> Optional[str]:
        if getattr(family, "name", None) != "vits":
            return (f"tts_istft replaces a VITS voice's decoder stages; the {getattr(family, 'name', '?')} family "
                    "is not VITS")
        return None


def _apply(artifact: Artifact, cfg: TtsIstftConfig, ctx: PassContext):
    from edgeflow.compress.generator_distill import distill_generator, window_distance
    from edgeflow.compress.generator_istft import istft_generator

    model, teacher = vits_and_teacher(artifact, "tts_istft")
    dec, info = istft_generator(model.dec, cfg.stages, cfg.n_fft_ratio)     # checks the stages first
    log = print if ctx.progress else None
    t0, settings = time.time(), cfg.settings()
    with torch_threads(cfg.threads):
        train, valid = distillation_windows(model, teacher, cfg, ctx, log)
        t_data = time.time() - t0
        logmel = voice_logmel(model.config)
        floor = window_distance(model.dec, valid, logmel, settings)
        if log is not None:
            log(f"tts_istft: upsampling {info['upsample_rates'][0]} -> {info['upsample_rates'][1]} + inverse STFT "
                f"(hop {info['istft']['hop']}, n_fft {info['istft']['n_fft']})")
        path, key = distill_state(ctx, "tts_istft", cfg, dec)
        summary = distill_generator(dec, train, valid, logmel, settings, progress=ctx.progress, log=log,
                                    desc="tts_istft distill", state_path=path, state_key=key)
    new = with_decoder(model, dec)
    before, after = decoder_cost(model), decoder_cost(new)
    artifact.model = new
    return {"stages": cfg.stages, "upsample_rates": info["upsample_rates"], "istft": info["istft"],
            "params": [before["params"], after["params"]],
            "decoder_gflop_per_s": [before["decoder_gflop_per_s"], after["decoder_gflop_per_s"]],
            "total_gflop_per_s": [before["total_gflop_per_s"], after["total_gflop_per_s"]],
            "windows": {"train": len(train), "valid": len(valid), "frames": cfg.window_frames,
                        "margin": cfg.margin_frames, "seconds": round(t_data, 1)},
            "valid_teacher_decoder": round(floor, 5), "distill": summary, "seconds": round(time.time() - t0, 1)}


register_pass("tts_istft", TtsIstftConfig, _apply)

"""``fm_reflow``: distillation of a flow-matching (``fmtts``) voice's vector field to few ODE steps (reflow).

Step-cutting (``fm_nfe``) runs the trained field with fewer Euler steps; its paths are curved, so the error grows
as steps are cut. This pass fine-tunes the field on the teacher's own couplings instead
(:mod:`edgeflow.compress.fm_reflow`): for ``seeds`` noise draws of each of ``calib_sentences`` calibration
sentences the bundle solves the ODE at the reference setting (midpoint, 32 steps, no sway) and keeps (x0, the mel
reached); the field then learns the straight paths between them, which few Euler steps follow well. Text only:
no recordings are needed. The field graph alone is re-exported (parity-checked against PyTorch) into a copy of
the bundle whose default sampling becomes Euler with ``nfe`` steps and no sway; the manifest gets a
``field_reflow`` section.

Guidance: the reference solve runs at the bundle's default classifier-free guidance scale, so a guided voice's
guided paths are what the student learns (guidance distillation: the guided field's map from noise to mel in
``nfe`` plain steps). Only the conditional half of a guided call is kept as the pair's condition, and the
reflowed bundle's default guidance becomes 0; the student is not trained unconditionally, so asking it for
guidance at run time is outside what it learned (the manifest's ``sampling.guidance_trained`` says false).

Gate, on the next ``sentences`` calibration sentences (seed ``seed + k``), mel MCD (dB) to the unmodified
bundle's reference solve: the reflowed bundle at its new default must be within ``max_mcd`` AND closer than
step-cutting alone (the unmodified field at the same ``nfe`` Euler steps, the better of sway 0 and -1), so the
distillation is kept only where it measurably beats step-cutting. Otherwise the bundle and model stay as they
were and the details say why (all three distances are recorded either way).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List

import numpy as np

from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass

REFERENCE = {"solver": "midpoint", "nfe": 32, "sway": 0.0}
STEP_CUT_SWAYS = (0.0, -1.0)


@dataclasses.dataclass
class FmReflowConfig(PassConfig):
    """Attributes:
        nfe: Euler steps of the reflowed bundle's default sampling.
        calib_sentences, seeds: calibration sentences and noise draws per sentence solved for the pairs.
        sentences: the next calibration sentences, scored for the gate.
        window, per_pair, margin: frames per training window, windows cut per pair, edge frames outside the loss.
        steps, max_minutes, lr, batch, valid_every, threads: the fine-tuning (stops at steps or minutes).
        max_mcd: largest mean mel MCD (dB) to the reference solve.
    """

    nfe: int = 1
    calib_sentences: int = 12
    seeds: int = 6
    sentences: int = 3
    window: int = 64
    per_pair: int = 6
    margin: int = 8
    steps: int = 3000
    max_minutes: float = 5.0
    lr: float = 2e-4
    batch: int = 16
    valid_every: int = 100
    threads: int = 0
    max_mcd: float = 2.5

    def __post_init__(self):
        if not 1 <= self.nfe <= 16 or self.seeds < 1 or self.per_pair < 1 or self.margin < 0:
            raise ValueError("fm_reflow: nfe 1..16, seeds and per_pair >= 1, margin >= 0")
        if self.calib_sentences < 1 or self.sentences < 1 or self.calib_sentences + self.sentences > 20:
            raise ValueError("fm_reflow: calib_sentences, sentences >= 1 and together at most 20")
        if self.window < 4 or self.window % 4 or self.window <= 2 * self.margin:
            raise ValueError("fm_reflow: window a positive multiple of 4 and more than twice the margin")
        if not (self.max_mcd > 0 and self.lr > 0 and self.batch >= 1 and self.steps >= 0 and self.max_minutes >= 0
                and self.valid_every >= 0 and self.threads >= 0):
            raise ValueError("fm_reflow: max_mcd, lr > 0; batch >= 1; steps, max_minutes, valid_every, threads >= 0")

    def refusal(self, family: Any):
        if getattr(family, "name", family) != "fmtts":
            return "fm_reflow distills the vector field of a flow-matching (fmtts) voice"
        return None


def record_pairs(voice: Any, ids: List[List[int]], seeds: List[List[int]]) -> List[Dict[str, np.ndarray]]:
    """{x0, x1, cond, mask} ([1, C, F]; x1 the normalized mel the reference solve reached, zero past the
    sentence) for sentence k and each seed of ``seeds[k]``."""
    from edgeflow.passes.fm_quantize import recording

    pairs = []
    with recording(voice, keep=1) as rec:                 # the first call of a solve holds x0, cond and mask
        for x, draws in zip(ids, seeds):
            for seed in draws:
                rec.feeds.clear()
                mel = voice.mel_ids(x, seed=seed, **REFERENCE)
                first = {k: v[:1] for k, v in rec.feeds[0].items()}   # a guided call: [cond, uncond] batch
                x1 = np.zeros_like(first["x"])
                x1[0, :, :mel.shape[1]] = (mel - np.float32(voice.mel_mean)) / np.float32(voice.mel_std)
                pairs.append({"x0": first["x"], "x1": x1, "cond": first["cond"], "mask": first["mask"]})
    return pairs


def _reflow(model: Any, voice: Any, calib: List[List[int]], cfg: FmReflowConfig, ctx: PassContext):
    """(reflowed model, section)."""
    from edgeflow.compress.fm_field_distill import FieldDistillSettings
    from edgeflow.compress.fm_reflow import pair_windows, reflow_field

    seeds = [[ctx.seed + 1000 * (j + 1) + k for j in range(cfg.seeds)] for k in range(len(calib))]
    data = pair_windows(record_pairs(voice, calib, seeds), cfg.window, cfg.per_pair, cfg.margin, ctx.seed)
    train, valid = data.split(max(1, len(data) // 10))
    student = copy.deepcopy(model.decoder).cpu().float()
    sigma = float(model.config.sigma_min)
    settings = FieldDistillSettings(steps=cfg.steps, max_minutes=cfg.max_minutes, lr=cfg.lr, batch=cfg.batch,
                                    valid_every=cfg.valid_every, seed=ctx.seed, threads=cfg.threads)
    summary = reflow_field(student, train, valid, sigma, settings, progress=ctx.progress,
                           log=print if ctx.progress else None, desc="fm_reflow")
    new = copy.deepcopy(model).cpu().float().eval()
    new.decoder = student
    new.config.nfe, new.config.solver, new.config.sway, new.config.guidance = cfg.nfe, "euler", 0.0, 0.0
    section = {"pairs": len(calib) * cfg.seeds, "windows": len(train), "valid_windows": len(valid),
               "reference": dict(REFERENCE, guidance=float(voice.sampling["guidance"])),
               "train": summary,                               # train.valid_before: the unmodified field's
               "method": "reflow (Liu et al. 2022): the field fine-tuned on straight paths between the "
                         "reference solve's noise and mel"}
    return new, section


def _gate(before: Any, after: Any, held: List[List[int]], nfe: int, seed: int) -> Dict[str, Any]:
    """Mean mel MCD to ``before``'s reference solve: ``after`` at its default, and step-cutting ``before``."""
    from edgeflow.passes.fm_nfe import mel_mcd

    refs = [before.mel_ids(x, seed=seed + k, **REFERENCE) for k, x in enumerate(held)]
    mean = lambda v, **o: float(np.mean([mel_mcd(r, v.mel_ids(x, seed=seed + k, **o))  # noqa: E731
                                          for k, (r, x) in enumerate(zip(refs, held))]))
    cut = {f"sway {s:g}": mean(before, solver="euler", nfe=nfe, sway=s) for s in STEP_CUT_SWAYS}
    return {"mcd": mean(after), "step_cut_mcd": cut, "step_cut_best": min(cut.values())}


def _fm_reflow(artifact: Artifact, cfg: FmReflowConfig, ctx: PassContext) -> Dict[str, Any]:
    from edgeflow.passes.fm_prune import field_bundle, field_setup
    from edgeflow.passes.fm_quantize import settle
    from edgeflow.runtime import Voice

    setup = field_setup(artifact, cfg, "fm_reflow")
    if isinstance(setup, dict):
        return setup
    src, manifest, voice, calib, held = setup
    new, section = _reflow(artifact.model, voice, calib, cfg, ctx)
    sampling = dict(manifest["sampling"], nfe=cfg.nfe, solver="euler", sway=0.0, guidance=0.0,
                    guidance_trained=False)          # the student learned the conditional field only
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-fm_reflow"
    field_bundle(src, out, manifest, new, "field_reflow", section, ctx.seed, sampling=sampling)
    section.update(_gate(voice, Voice.load(out, threads=1), held, cfg.nfe, ctx.seed), nfe=cfg.nfe,
                   max_mcd=cfg.max_mcd, sentences=len(held))
    why = (f"mel MCD {section['mcd']:.3f} dB > {cfg.max_mcd} dB" if section["mcd"] > cfg.max_mcd else
           f"not closer than step-cutting ({section['mcd']:.3f} vs {section['step_cut_best']:.3f} dB)"
           if section["mcd"] >= section["step_cut_best"] else None)
    if not why:
        artifact.info["sampling"] = {"nfe": cfg.nfe, "solver": "euler", "sway": 0.0, "guidance": 0.0}
    return settle(artifact, out, section, why, "fm_reflow", "field kept as it was", ctx.progress, new)


register_pass("fm_reflow", FmReflowConfig, _fm_reflow)

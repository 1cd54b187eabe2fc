"""``fm_prune``: structured pruning + distillation of the vector field of a flow-matching (``fmtts``) voice.

The field graph runs NFE times per sentence. This pass narrows every residual block of the U-Net between its
two convolutions (:mod:`edgeflow.compress.fm_field`: each block keeps its ``width`` most important channels,
the model config's ``dec_inner``), then distills the narrowed field against the unpruned one on the voice's
own solver paths (:mod:`edgeflow.compress.fm_field_distill`: velocity MSE at points between consecutive states
of ``record_nfe``-step Euler solves of ``calib_sentences`` calibration sentences, the teacher queried on the fly).
Text only: no recordings are needed. The field graph alone is re-exported (parity-checked against PyTorch) into
a copy of the bundle, whose manifest gets the new config and a ``field_pruning`` section.

Gate (as ``fm_quantize``'s): the mel of the pruned bundle against the unpruned one on the next ``sentences``
calibration sentences, same seeds, the bundle's default sampling (mean mel MCD, dB) must be <= ``max_mcd`` and
(``require_speedup``) the acoustic model faster; otherwise the bundle and the model stay as they were and the
details say why. Runs on the torch model the pipeline holds (``edgeflow optimize FMTTS.pt --vocoder V``).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict

from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


@dataclasses.dataclass
class FmPruneConfig(PassConfig):
    """Attributes:
        ratio: fraction of every block's inner channels removed (the kept width rounded to a multiple of 8).
        width: the kept width itself (0: from ratio).
        calib_sentences: calibration sentences whose solves are the distillation data.
        sentences: the next calibration sentences, scored for the gate.
        record_nfe: Euler steps of the recorded solves (states per sentence).
        window, per_feed: frames per training window (a multiple of 4) and windows cut per recorded state.
        steps, max_minutes, lr, batch, valid_every: the distillation (stops at steps or minutes; steps 0: prune
            only).
        max_mcd: largest mean mel MCD (dB) of the pruned bundle to the unpruned one.
        rounds: timing rounds (interleaved, fastest kept).
        require_speedup: keep the pruned field only when the acoustic model is faster with it.
        threads: torch threads of the distillation (0: torch's default).
    """

    ratio: float = 0.5
    width: int = 0
    calib_sentences: int = 12
    sentences: int = 3
    record_nfe: int = 16
    window: int = 64
    per_feed: int = 2
    steps: int = 3000
    max_minutes: float = 5.0
    lr: float = 5e-4
    batch: int = 16
    valid_every: int = 100
    max_mcd: float = 1.0
    rounds: int = 3
    require_speedup: bool = True
    threads: int = 0

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0 or self.width < 0:
            raise ValueError("fm_prune: ratio must be in (0, 1) and width >= 0")
        if self.calib_sentences < 1 or self.sentences < 1 or self.calib_sentences + self.sentences > 20:
            raise ValueError("fm_prune: calib_sentences, sentences >= 1 and together at most 20")
        if self.window < 4 or self.window % 4 or self.per_feed < 1 or self.record_nfe < 2:
            raise ValueError("fm_prune: window a positive multiple of 4, per_feed >= 1, record_nfe >= 2")
        if not (self.max_mcd > 0 and self.rounds >= 1 and self.lr > 0 and self.batch >= 1 and self.steps >= 0
                and self.max_minutes >= 0 and self.valid_every >= 0 and self.threads >= 0):
            raise ValueError("fm_prune: max_mcd, lr > 0; rounds, batch >= 1; steps, max_minutes, valid_every, "
                             "threads >= 0")

    def refusal(self, family: Any):
        if getattr(family, "name", family) != "fmtts":
            return "fm_prune prunes the vector field of a flow-matching (fmtts) voice"
        return None

    def kept_width(self, inner: int) -> int:
        """Channels kept of ``inner``: ``width``, else (1 - ratio) x inner rounded to a multiple of 8 (>= 8)."""
        if self.width:
            return self.width
        return min(inner, max(8, int(round(inner * (1.0 - self.ratio) / 8.0)) * 8))


def _distill(model: Any, voice: Any, calib, cfg: FmPruneConfig, ctx: PassContext):
    """(pruned model, section) of ``model``: windows recorded from ``voice``, prune, distill."""
    from edgeflow.compress.fm_field import prune_field, res_blocks, windows_from_feeds
    from edgeflow.compress.fm_field_distill import FieldDistillSettings, distill_field
    from edgeflow.passes.fm_quantize import record_feeds

    feeds = record_feeds(voice, calib, ctx.seed, nfe=cfg.record_nfe, solver="euler")
    data = windows_from_feeds(feeds, cfg.window, cfg.per_feed, ctx.seed)
    train, valid = data.split(max(1, len(data) // 10))
    teacher = copy.deepcopy(model.decoder).cpu().float().eval()
    inner = min(b.conv2.in_channels for _, b in res_blocks(teacher))
    student, info = prune_field(teacher, cfg.kept_width(inner), train)
    settings = FieldDistillSettings(steps=cfg.steps, max_minutes=cfg.max_minutes, lr=cfg.lr, batch=cfg.batch,
                                    valid_every=cfg.valid_every, seed=ctx.seed, threads=cfg.threads)
    summary = distill_field(student, teacher, train, valid, settings, progress=ctx.progress,
                            log=print if ctx.progress else None, desc="fm_prune distill")
    pruned = copy.deepcopy(model).cpu().float().eval()
    pruned.decoder = student
    pruned.config.dec_inner = int(info["width"])
    section = dict(info, windows=len(train), valid_windows=len(valid), record_nfe=cfg.record_nfe,
                   calib_sentences=len(calib), valid_mse_pruned=summary["valid_before"], distill=summary,
                   method="inner widths of the U-Net's residual blocks by |activation| x ||conv2 column||, then "
                          "velocity-MSE distillation against the unpruned field on its own Euler paths")
    return pruned, section


def field_setup(artifact: Artifact, cfg: Any, name: str):
    """(src, manifest, voice, calibration ids, held-out ids) of a pass that retrains the field of the artifact's
    fmtts bundle (``cfg``: calib_sentences, sentences), or a refusal dict when the bundle's field is unrolled or
    already quantized."""
    from edgeflow.passes.fm_nfe import calibration_ids
    from edgeflow.passes.fm_quantize import fmtts_bundle
    from edgeflow.runtime import Voice

    src, manifest = fmtts_bundle(artifact, name, model=True)
    if "unrolled" in manifest["graphs"] or manifest.get("field_quantization"):
        return {"applied": False, "reason": f"the bundle has an unrolled or quantized field (run {name} first)"}
    voice = Voice.load(src, threads=1)
    ids = calibration_ids(voice, cfg.calib_sentences + cfg.sentences)
    return src, manifest, voice, ids[:cfg.calib_sentences], ids[cfg.calib_sentences:] or ids[-1:]


def field_bundle(src: Path, out: Path, manifest: Dict[str, Any], model: Any, key: str, section: Dict[str, Any],
                 seed: int, **updates: Any) -> None:
    """Copy bundle ``src`` to ``out`` with ``model``'s field graph (exported and parity-checked: the check goes to
    ``section["export"]``), its config, ``section`` under manifest field ``key`` and ``updates``."""
    from edgeflow.core.bundle_format import copy_bundle
    from edgeflow.export.fmtts import export_field

    with tempfile.TemporaryDirectory(prefix="edgeflow-field-") as tmp:
        field = Path(tmp) / manifest["graphs"]["decoder"]
        section["export"] = {k: v for k, v in export_field(model, field, seed).items() if k != "cases"}
        copy_bundle(src, out, {"decoder": field}, dict(updates, config=model.config.to_dict(), **{key: section}),
                    overwrite=True)


def _fm_prune(artifact: Artifact, cfg: FmPruneConfig, ctx: PassContext) -> Dict[str, Any]:
    from edgeflow.passes.fm_quantize import compare, gate_reason, settle
    from edgeflow.runtime import Voice

    decoder = getattr(getattr(artifact.model, "config", None), "decoder", "unet")
    if decoder != "unet":
        return {"applied": False, "reason": "fm_prune narrows the residual blocks of a U-Net field; this model's "
                                            f"field is a {decoder!r} (not pruned)"}
    setup = field_setup(artifact, cfg, "fm_prune")
    if isinstance(setup, dict):
        return setup
    src, manifest, voice, calib, held = setup
    pruned, section = _distill(artifact.model, voice, calib, cfg, ctx)
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-fm_prune"
    field_bundle(src, out, manifest, pruned, "field_pruning", section, ctx.seed)
    scores = compare(voice, Voice.load(out, threads=1), held, cfg.rounds, ctx.seed, ("full", "pruned"))
    section.update(scores, max_mcd=cfg.max_mcd, sentences=len(held))
    why = gate_reason(scores, cfg.max_mcd, cfg.require_speedup)
    return settle(artifact, out, section, why, "fm_prune", "field kept unpruned", ctx.progress, pruned)


register_pass("fm_prune", FmPruneConfig, _fm_prune)

"""``fm_vocoder``: INT8 for the vocoder inside a flow-matching (``fmtts``) voice bundle, as in its own family's recipe.

The bundle's vocoder (a HiFi-GAN graph, ``vocoder.onnx``) is most of a fast voice's time once the field runs one or
two steps. It is quantized with the vocoder pass's own machinery (:func:`edgeflow.quant.int8.coupling_aware_int8`:
int8 convs, the HiFi-GAN residual stream, the sensitivity search; options ``quantize``, by default the int8
``quantize`` step of the target's own ``hifigan`` ``balanced`` recipe), calibrated on the mels the voice itself makes for the first ``calib_sentences``
calibration sentences (the vocoder's real input), cut into ``window``-frame windows.

With ``prune`` (a widths dict, or "recipe": the ``generator_prune`` widths of the target's hifigan ``fast`` recipe)
the vocoder is first narrowed and refitted on those same mel windows (:mod:`edgeflow.passes.fm_vocoder_prune`; it
needs the HiFi-GAN model.pt as ``--vocoder``, and is skipped, with the reason in the details, for a vocoder
bundle), and the pruned graph is what gets quantized.

Gate: the audio of the voice with the INT8 vocoder against the same voice with the float one, same mels (the
next ``sentences`` calibration sentences at the bundle's default sampling, seeds ``seed + k``): mean mel-cepstral
distance <= ``max_mcd`` dB, and (``require_speedup``) vocoding faster (interleaved, fastest of ``rounds``);
otherwise, or when no INT8 configuration meets the search's budget, the vocoder stays float and the details say why.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass

#: Quantize options when neither the pass nor the target's hifigan ``balanced`` recipe gives int8 ones.
FALLBACK_QUANTIZE = {"precision": "int8", "method": "percentile", "activation_type": "uint8", "group_by": "flow_kind",
                     "residual": True, "max_mel_l1": 0.15}
#: Summary fields of the quantize details copied into the bundle manifest.
SUMMARY = ("method", "activation_type", "group_by", "residual_tensors", "quantized_nodes", "float_nodes", "groups",
           "quality_vs_float", "seconds")


@dataclasses.dataclass
class FmVocoderConfig(PassConfig):
    """Attributes:
        quantize: options of :class:`edgeflow.passes.quantize.QuantizeConfig` (precision int8 only); None: the
            int8 ``quantize`` step of the target's hifigan ``balanced`` recipe (else :data:`FALLBACK_QUANTIZE`).
        calib_sentences: calibration sentences whose mels calibrate the ranges.
        window: mel frames per calibration window (shorter sentences are used whole).
        sentences: the next calibration sentences, scored for the gate.
        max_mcd: largest mean mel-cepstral distance (dB) of the INT8-vocoded audio to the float-vocoded audio.
        rounds: timing rounds (float and INT8 vocoder interleaved; the fastest kept).
        require_speedup: keep the INT8 vocoder only when it vocodes faster.
        prune: None (no pruning), a dict of generator widths (:func:`edgeflow.compress.generator.plan_widths`
            selectors) or "recipe" (the target's hifigan ``fast`` ``generator_prune`` widths): prune and refit
            the vocoder on the voice's mel windows before quantizing it.
        equalize: None, or the alpha of a cross-layer equalization of the vocoder's channels on the voice's mel
            windows before quantizing it (:mod:`edgeflow.compress.generator_equalize`; exact in float). Needs the
            HiFi-GAN model.pt, like ``prune``.
    """

    quantize: Optional[Dict[str, Any]] = None
    calib_sentences: int = 8
    window: int = 64
    sentences: int = 3
    max_mcd: float = 1.0
    rounds: int = 3
    require_speedup: bool = True
    prune: Any = None
    equalize: Optional[float] = None

    def __post_init__(self):
        from edgeflow.passes.quantize import QuantizeConfig

        if not self.max_mcd > 0 or min(self.calib_sentences, self.sentences, self.rounds, self.window) < 1:
            raise ValueError("fm_vocoder: max_mcd > 0, calib_sentences, sentences, rounds and window >= 1")
        if self.prune not in (None, "recipe") and not isinstance(self.prune, dict):
            raise ValueError(f"fm_vocoder: prune must be a widths dict, \"recipe\" or null, got {self.prune!r}")
        if self.equalize is not None and not 0.0 <= self.equalize <= 1.0:
            raise ValueError(f"fm_vocoder: equalize must be null or an alpha in [0, 1], got {self.equalize!r}")
        if self.quantize is None:
            return
        if self.quantize.get("precision", "int8") != "int8":
            raise ValueError("fm_vocoder: quantize.precision must be int8")
        try:
            QuantizeConfig(**self.quantize)
        except TypeError as exc:
            raise ValueError(f"fm_vocoder: quantize: {exc}") from None


def quantize_options(cfg: FmVocoderConfig, target: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The quantize options: the pass's own, else the int8 ``quantize`` step of ``target``'s hifigan
    ``balanced`` recipe (the vocoder optimized as in its own family's recipe), else :data:`FALLBACK_QUANTIZE`."""
    from edgeflow.passes.fm_vocoder_prune import hifigan_step

    if cfg.quantize is not None:
        return dict(cfg.quantize)
    step = hifigan_step(target, "balanced",
                        lambda p: p.get("pass") == "quantize" and p.get("precision", "int8") == "int8")
    return {k: v for k, v in step.items() if k != "pass"} if step else dict(FALLBACK_QUANTIZE)


def mel_windows(voice: Any, ids: List[List[int]], window: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """Vocoder feeds ``{"mel": [1, n_mels, frames]}``: the voice's mels of ``ids`` (seed ``seed + k``) cut into
    ``window``-frame windows (a shorter sentence whole)."""
    out = []
    for k, x in enumerate(ids):
        mel = voice.mel_ids(x, seed=seed + k)
        starts = range(0, mel.shape[1] - window + 1, window) if mel.shape[1] >= window else [0]
        out += [{"mel": np.ascontiguousarray(mel[None, :, a:a + window])} for a in starts]
    return out


def compare_vocoders(before: Any, after: Any, ids: List[List[int]], rounds: int, seed: int = 0) -> Dict[str, Any]:
    """Mean / worst mel-cepstral distance of ``after``'s vocoder to ``before``'s on ``before``'s mels of ``ids``,
    and both vocoders' wall time on them (interleaved, fastest of ``rounds``) with the speedup."""
    from edgeflow.validate.cost import interleaved_best
    from edgeflow.validate.tts import mel_cepstral_distance

    mels = [before.mel_ids(x, seed=seed + k) for k, x in enumerate(ids)]
    sr = before.sample_rate
    mcds = [mel_cepstral_distance(before.vocode(m), after.vocode(m), sr) for m in mels]
    best = interleaved_best({n: (lambda v=v: [v.vocode(m) for m in mels])
                             for n, v in (("float", before), ("int8", after))}, rounds)
    return {"mcd": float(np.mean(mcds)), "mcd_max": float(np.max(mcds)),
            "seconds_float": round(best["float"], 4), "seconds_int8": round(best["int8"], 4),
            "speedup": round(best["float"] / max(best["int8"], 1e-9), 3)}


def _fm_vocoder(artifact: Artifact, cfg: FmVocoderConfig, ctx: PassContext) -> Dict[str, Any]:
    from edgeflow.audio.mel import MelConfig
    from edgeflow.core.bundle_format import copy_bundle
    from edgeflow.core.io import sha256_file
    from edgeflow.passes.fm_nfe import calibration_ids
    from edgeflow.passes.fm_quantize import fmtts_bundle, gate_reason, settle
    from edgeflow.passes.quantize import QuantizeConfig
    from edgeflow.quant.int8 import QuantizationError, coupling_aware_int8
    from edgeflow.runtime import Voice

    src, manifest = fmtts_bundle(artifact, "fm_vocoder")
    voc = dict(manifest.get("vocoder") or {})
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-fm_vocoder"
    if voc.get("precision", "float32") != "float32":
        return settle(artifact, out, {}, f"the vocoder is already {voc['precision']}", "fm_vocoder", "vocoder kept",
                      ctx.progress)
    if voc.get("family", "hifigan") != "hifigan":
        return settle(artifact, out, {}, f"the vocoder is a {voc['family']} model; fm_vocoder optimizes HiFi-GAN "
                      "generators", "fm_vocoder", "vocoder kept", ctx.progress)
    voice = Voice.load(src, threads=1)
    ids = calibration_ids(voice, cfg.calib_sentences + cfg.sentences)
    calib, held = ids[:cfg.calib_sentences], ids[cfg.calib_sentences:] or ids[-1:]
    feeds = mel_windows(voice, calib, cfg.window, ctx.seed)
    log = print if ctx.progress else (lambda *_: None)
    name = manifest["graphs"]["vocoder"]
    with tempfile.TemporaryDirectory(prefix="edgeflow-fmv-") as tmp:
        graph, pruned = _maybe_prune(artifact, cfg, ctx, feeds, Path(tmp), src / name, log)
        try:
            details = coupling_aware_int8(graph, Path(tmp) / name, feeds, MelConfig.from_dict(manifest["mel"]),
                                          QuantizeConfig(**quantize_options(cfg, ctx.target)), Path(tmp) / "work",
                                          threads=1, log=log)
        except QuantizationError as exc:
            return settle(artifact, out, {}, str(exc), "fm_vocoder", "vocoder kept float", ctx.progress)
        section = {k: details[k] for k in SUMMARY if k in details}
        section.update(prune=pruned, calibration_windows=len(feeds), calib_sentences=len(calib),
                       kept_float=[g["group"] for g in details["kept_float"]["sensitivity"]])
        voc.update(precision="int8", sha256=sha256_file(Path(tmp) / name))
        if pruned.get("widths"):
            voc.update(pruned=pruned["groups"])
        copy_bundle(src, out, {"vocoder": Path(tmp) / name}, {"vocoder": voc, "vocoder_quantization": section},
                    overwrite=True)
    scores = compare_vocoders(voice, Voice.load(out, threads=1), held, cfg.rounds, ctx.seed)
    section.update(scores, max_mcd=cfg.max_mcd, sentences=len(held))
    why = gate_reason(scores, cfg.max_mcd, cfg.require_speedup, "audio MCD")
    return settle(artifact, out, section, why, "fm_vocoder", "vocoder kept float", ctx.progress)


def _maybe_prune(artifact: Artifact, cfg: FmVocoderConfig, ctx: PassContext, feeds, tmp: Path, graph: Path, log):
    """(the float graph to quantize, the prune section): the bundle's own vocoder graph when neither ``cfg.prune``
    nor ``cfg.equalize`` is set or they cannot apply (the reason recorded), else the graph rebuilt from the
    HiFi-GAN model.pt, pruned and refitted and/or equalized (:mod:`fm_vocoder_prune`)."""
    from edgeflow.passes.fm_vocoder_prune import pruned_graph, prune_widths, vocoder_model

    widths = prune_widths(cfg.prune, ctx.target)
    if widths is None and cfg.equalize is None:
        return graph, {}
    model = vocoder_model(artifact.info)
    if isinstance(model, str):
        log(f"    prune / equalize skipped: {model}")
        return graph, {"skipped": model}
    what = (f"pruning the vocoder to {widths}" if widths else "") + \
        (" and " if widths and cfg.equalize is not None else "") + \
        (f"equalizing its channels (alpha {cfg.equalize})" if cfg.equalize is not None else "")
    log(f"    {what}, on {len(feeds)} windows of the voice's mels ...")
    section = pruned_graph(model, widths, feeds, tmp / "pruned", cfg.equalize)
    if widths:
        log(f"    pruned: {', '.join(section['groups'])}; parameters {section['params'][0]} -> {section['params'][1]}")
    return tmp / "pruned" / "model.onnx", section


register_pass("fm_vocoder", FmVocoderConfig, _fm_vocoder)

"""``fm_quantize``: INT8 for the vector-field network of a flow-matching (``fmtts``) voice bundle.

The field graph (``field.onnx``: the U-Net or the DiT, one function evaluation per call) runs NFE times per
sentence, so it is the acoustic model's cost. Its convolutions and its matrix products with weights (the DiT's
linear layers; not attention's products of two activations) are quantized with onnxruntime's
``quantize_static`` (QDQ, int8 weights per output channel, uint8 activations with MinMax ranges); the output
layer (the velocity itself), the time embedding and the DiT's adaLN modulations, the norms and the activations
stay float. Calibration inputs are the field's own inputs
(x_t, t, cond, mask) recorded while the bundle solves the first ``calib_sentences`` calibration sentences at
its default sampling, cut into windows of ``window`` frames (the field is frame-local up to its receptive field;
the calibrators need one shape).

Gate: the mel of the INT8 bundle against the float bundle's on the next ``sentences`` calibration sentences,
same seeds, the bundle's default sampling (:func:`edgeflow.passes.fm_nfe.mel_mcd`, mean over sentences) must be
<= ``max_mcd``, and (``require_speedup``) the acoustic model must be faster (``FmVoice.mel_ids`` wall time,
interleaved, best of ``rounds``); otherwise the bundle is left float and the details say why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass

#: Field-graph nodes kept float: the output layer (the velocity), the time embedding's MLP / projections and the
#: DiT's adaLN modulations (both per call, not per frame).
KEEP_FLOAT = (r"^/decoder/out/", r"/t_mlp/", r"/time/", r"/ada(_out)?/")


@dataclasses.dataclass
class FmQuantizeConfig(PassConfig):
    """Attributes:
        max_mcd: largest mean mel MCD (dB) of the INT8 bundle to the float one (same seeds and sampling).
        calib_sentences: calibration sentences whose field inputs calibrate the ranges.
        sentences: the next calibration sentences, scored for the gate.
        window: frames per calibration window (a multiple of 4: the U-Net downsamples twice).
        rounds: timing rounds (float and INT8 interleaved; the fastest kept).
        require_speedup: keep the INT8 field only when the acoustic model is faster with it (False: whenever the
            mel budget holds, e.g. for the smaller file).
    """

    max_mcd: float = 1.0
    calib_sentences: int = 4
    sentences: int = 3
    window: int = 64
    rounds: int = 3
    require_speedup: bool = True

    def __post_init__(self):
        if not self.max_mcd > 0 or self.calib_sentences < 1 or self.sentences < 1 or self.rounds < 1:
            raise ValueError("fm_quantize: max_mcd > 0, calib_sentences, sentences and rounds >= 1")
        if self.window < 4 or self.window % 4:
            raise ValueError("fm_quantize: window must be a positive multiple of 4")


class _Recorder:
    """Wraps an onnxruntime session and keeps copies of its feeds (the field's inputs during a solve): all of them,
    or the first ``keep``."""

    def __init__(self, session: Any, keep: Optional[int] = None):
        self.session, self.keep, self.feeds = session, keep, []

    def run(self, names, feeds):
        if self.keep is None or len(self.feeds) < self.keep:
            self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


@contextlib.contextmanager
def recording(voice: Any, keep: Optional[int] = None) -> Iterator[_Recorder]:
    """Within the block ``voice``'s field session is wrapped in a recorder of its feeds (see :class:`_Recorder`);
    the session is put back after it, whatever happens."""
    rec = _Recorder(voice.field, keep)
    voice.field = rec
    try:
        yield rec
    finally:
        voice.field = rec.session


def record_feeds(voice: Any, ids: List[List[int]], seed: int = 0, **sampling: Any) -> List[Dict[str, np.ndarray]]:
    """Every input of the field graph while ``voice`` solves ``ids`` (seed ``seed + k``; ``sampling``: nfe,
    solver, sway ... overriding the bundle's defaults), whole sentences, in call order."""
    with recording(voice) as rec:
        for k, x in enumerate(ids):
            voice.mel_ids(x, seed=seed + k, **sampling)
    return rec.feeds


def field_windows(voice: Any, ids: List[List[int]], window: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """The field's inputs while ``voice`` solves ``ids`` (seed ``seed + k``), cut into ``window``-frame windows
    (one per call and sentence: the middle one; sentences shorter than a window are skipped)."""
    out = []
    for f in record_feeds(voice, ids, seed):
        frames = f["x"].shape[2]
        if frames < window:
            continue
        a = (frames - window) // 2
        out.append({k: v if k == "t" else np.ascontiguousarray(v[:, :, a:a + window]) for k, v in f.items()})
    return out


def quantize_field(src: Path, dst: Path, feeds: List[Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """``src`` field graph -> INT8 QDQ ``dst`` (see the module docstring). Returns what was quantized."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeflow.quant.vits_int8 import FeedReader, fix_ir, quiet_ort

    model = onnx.load(str(src), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    convs += [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    quant = [n for n in convs if not any(re.search(p, n) for p in KEEP_FLOAT)]
    if not quant:
        raise ConfigError("fm_quantize: the field graph has no convolution or weighted product to quantize")
    with quiet_ort():
        quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "MatMul"],
                        nodes_to_quantize=quant, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    fix_ir(dst)
    return {"quantized": len(quant), "float": sorted(set(convs) - set(quant)), "weights": "int8 per channel",
            "activations": "uint8 (MinMax)", "calibration_windows": len(feeds)}


def compare(before: Any, after: Any, ids: List[List[int]], rounds: int, seed: int = 0,
            names: Tuple[str, str] = ("float", "int8")) -> Dict[str, Any]:
    """Mean / worst mel MCD of voice ``after`` to voice ``before`` on ``ids`` (seed ``seed + k``, default
    sampling) and both acoustic models' wall time (interleaved, fastest of ``rounds``; keys
    ``seconds_<name>`` for the two ``names``) and the speedup."""
    from edgeflow.passes.fm_nfe import mel_mcd
    from edgeflow.validate.cost import interleaved_best

    ref = [before.mel_ids(x, seed=seed + k) for k, x in enumerate(ids)]
    mcds = [mel_mcd(r, after.mel_ids(x, seed=seed + k)) for k, (r, x) in enumerate(zip(ref, ids))]
    best = interleaved_best({n: (lambda v=v: [v.mel_ids(x, seed=seed + k) for k, x in enumerate(ids)])
                             for n, v in zip(names, (before, after))}, rounds)
    return {"mcd": float(np.mean(mcds)), "mcd_max": float(np.max(mcds)),
            **{f"seconds_{n}": round(best[n], 4) for n in names},
            "speedup": round(best[names[0]] / max(best[names[1]], 1e-9), 3)}


def gate_reason(scores: Dict[str, Any], max_mcd: float, require_speedup: bool, what: str = "mel MCD") -> Optional[str]:
    """Why a gated fmtts pass is refused (``scores`` from :func:`compare`: mcd above ``max_mcd``, or no speedup
    when one is required), or None."""
    if scores["mcd"] > max_mcd:
        return f"{what} {scores['mcd']:.3f} dB > {max_mcd} dB"
    if require_speedup and scores["speedup"] <= 1.0:
        return f"not faster ({scores['speedup']:.2f}x)"
    return None


def fmtts_bundle(artifact: Artifact, name: str, model: bool = False) -> Tuple[Path, Dict[str, Any]]:
    """(bundle dir, manifest) of the artifact's fmtts voice bundle, for pass ``name``; ``model``: the pass also
    needs the torch model (an :class:`edgeflow.models.fmtts.model.FmTts`).

    Raises:
        ConfigError: no bundle (or model) yet, or a bundle of another family.
    """
    from edgeflow.models.fmtts.model import FmTts

    if artifact.bundle_dir is None or (model and not isinstance(artifact.model, FmTts)):
        if not model:
            raise ConfigError(f"{name}: no bundle yet (the fmtts bundle is exported first)")
        raise ConfigError(f"{name}: needs the fmtts model and its exported bundle (edgeflow optimize FMTTS.pt "
                          "--vocoder V)")
    src = Path(artifact.bundle_dir)
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("family") != "fmtts":
        raise ConfigError(f"{name}: {src} is a {manifest.get('family')} bundle, not an fmtts voice")
    return src, manifest


def settle(artifact: Artifact, out: Path, section: Dict[str, Any], why: str | None, name: str, kept: str,
           progress: bool, model: Any = None) -> Dict[str, Any]:
    """The end of a gated fmtts pass: ``why`` (the gate's refusal) removes bundle ``out`` and reports ``kept``;
    otherwise ``out`` (and ``model``, when given) become the artifact's. Returns the pass details."""
    if why:
        shutil.rmtree(out, ignore_errors=True)
        if progress:
            print(f"    {name}: {kept} ({why})")
        return dict(section, applied=False, reason=why)
    artifact.bundle_dir = out
    if model is not None:
        artifact.model = model
    return dict(section, applied=True, bundle=out.name)


def _fm_quantize(artifact: Artifact, cfg: FmQuantizeConfig, ctx: PassContext) -> Dict[str, Any]:
    from edgeflow.core.bundle_format import copy_bundle
    from edgeflow.passes.fm_nfe import calibration_ids
    from edgeflow.runtime import Voice

    src, manifest = fmtts_bundle(artifact, "fm_quantize")
    voice = Voice.load(src, threads=1)
    ids = calibration_ids(voice, cfg.calib_sentences + cfg.sentences)
    calib, held = ids[:cfg.calib_sentences], ids[cfg.calib_sentences:] or ids[-1:]
    feeds = field_windows(voice, calib, cfg.window, ctx.seed)
    if not feeds:
        raise ConfigError(f"fm_quantize: no calibration sentence is {cfg.window} frames long (lower window)")
    with tempfile.TemporaryDirectory(prefix="edgeflow-fmq-") as tmp:
        field = Path(tmp) / manifest["graphs"]["decoder"]
        section = quantize_field(src / manifest["graphs"]["decoder"], field, feeds)
        out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-fm_quantize"
        copy_bundle(src, out, {"decoder": field}, {"field_quantization": section}, overwrite=True)
    scores = compare(voice, Voice.load(out, threads=1), held, cfg.rounds, ctx.seed)
    section.update(scores, max_mcd=cfg.max_mcd, sentences=len(held))
    why = gate_reason(scores, cfg.max_mcd, cfg.require_speedup)
    return settle(artifact, out, section, why, "fm_quantize", "field kept float", ctx.progress)


register_pass("fm_quantize", FmQuantizeConfig, _fm_quantize)

"""The ``tts_head`` pass: a VITS voice's earlier decoder upsampling stages in the native engine, INT8 with
block-scaled activations, chained ahead of the ``tts_wave`` pass's waveform-rate stage.

After ``tts_wave`` (with ``upsampler``), the decoder graph onnxruntime still runs (``decoder_head.onnx``) is
conv_pre and the upsampling stages before the last: INT8 convs in a QDQ graph, with one activation scale per
tensor, Transposes and QuantizeLinear / DequantizeLinear pairs around them, and a thread pool that gains little from
a second thread on these short tensors. This pass runs each of those stages (its upsampler in the merged phase form
and its resblocks; no conv_post) in the waveform stage's kernel (:mod:`edgeflow.runtime.native.wave_stage`): one u8
activation scale per 128 output columns of each conv's input, s8 weights per channel (the graph's own INT8 weights,
dequantized and quantized again: the same values), the residual stream float. onnxruntime keeps conv_pre only.

Writes a NEW bundle directory: ``decoder_head.onnx`` cut at the first upsampler's LeakyRelu input, the stages'
arrays added to ``wave_stage.npz`` under ``head.{k}.`` (:mod:`edgeflow.runtime.native.wave_chain`), and the
manifest's ``native.wave_stage.head``: the stages' shapes and the calibration SNR of the native stages' output
against the onnxruntime head graph's (INT8 too, with other rounding: the figure says how far apart the two INT8
heads are, not how far from float). Both engines are timed again (``engine="auto"``). The audio changes, so the
pipeline scores the bundle's native engine against the budget.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassContext, register_pass
from edgeflow.passes.kernels import kernels_handler, snr_db
from edgeflow.passes.tts_kernels import NativePassConfig, retime
from edgeflow.passes.tts_wave import HEAD_DECODER, WAVE_FILE, stage_inputs

#: Calibration SNR (dB, against the onnxruntime head graph) below which the stages were not read as the graph
#: computes them (joe-medium, 2026-12-05: about 24 dB between the two INT8 heads).
MIN_SNR_DB = 12.0
NO_STAGE = "the decoder graph onnxruntime runs has no upsampling stage left"


@dataclasses.dataclass
class TtsHeadConfig(NativePassConfig):
    """Options of the tts_head pass: :class:`NativePassConfig`'s (threads, time_seconds, sentences: the calibration
    sentences of the SNR)."""


def add_tts_head(bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[TtsHeadConfig] = None, seed: int = 0,
                 overwrite: bool = False) -> Dict[str, Any]:
    """Copy the VITS bundle ``bundle_dir`` (with ``tts_wave``'s stage and its upsampler) to ``out_dir`` with the
    earlier upsampling stages native too. Returns the manifest written.

    Raises:
        ConfigError: no such stage, or native head stages already. BundleError: the calibration SNR is below
            :data:`MIN_SNR_DB`, or out_dir exists.
    """
    import onnx

    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime.native.vits_stage import cut_before_stage, stage_arrays
    from edgeflow.runtime.native.wave_chain import WaveChain, join_arrays
    from edgeflow.runtime.native.wave_stage import WaveStage, load_arrays, save_arrays
    from edgeflow.runtime.voice import Voice
    from edgeflow.runtime.voice_config import read_vits_manifest, vits_native_section
    from edgeflow.runtime.voice_io import open_session

    cfg = cfg or TtsHeadConfig()
    src = Path(bundle_dir)
    manifest = read_vits_manifest(src)
    section = vits_native_section(manifest, src)
    why = _why_not(section)
    if why:
        raise ConfigError(f"tts_head: {why}")
    head = onnx.load(str(src / section["decoder"]))           # read once: the stages and the cut take the proto
    stages = _read_stages(head)
    if not stages:
        raise ConfigError(f"tts_head: {NO_STAGE}")
    wave, threads = section["wave_stage"], cfg.threads or 1
    arrays = [stage_arrays(s) for s in stages]
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in src.iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR, section["decoder"], WAVE_FILE):
                shutil.copy2(p, tmp / p.name)
        name = cut_before_stage(head, tmp / "pre.onnx", int(stages[0][1]["up"]["weight"].shape[0]),
                                stages[0][1]["input"])
        pre = open_session(tmp / "pre.onnx", threads, None, "decoder graph", spin="never", nhwc=False)
        xs, refs = stage_inputs(Voice.load(src, threads=threads, engine="native"), pre,
                                sentences("calibration")[:cfg.sentences], seed)
        chain = WaveChain([WaveStage(a, threads=threads) for a in arrays])
        snr = snr_db([chain.run(x) for x in xs], refs)
        if snr < MIN_SNR_DB:
            raise BundleError(f"tts_head: the native stages are {snr} dB from the onnxruntime head graph on "
                              f"calibration sentences (under {MIN_SNR_DB}): the graph was not read as it computes")
        (tmp / "pre.onnx").replace(tmp / HEAD_DECODER)
        save_arrays(tmp / WAVE_FILE, join_arrays(arrays, load_arrays(src / wave["file"])))
        draft = {k: v for k, v in manifest.items() if k != "files"}
        described = [{"channels": int(s[0][0]["weight"].shape[1]), "resblocks": 1 + int(s[0][-1]["block"]),
                      "convs": len(s[0]), "upsampler": {"stride": int(s[1]["up"]["stride"]),
                                                        "kernel": int(s[1]["up"]["weight"].shape[2])}}
                     for s in stages]
        draft["native"] = dict(section, decoder=HEAD_DECODER, wave_stage=dict(wave, input=name, head={
            "stages": described, "calibration": {
                "sentences": cfg.sentences, "snr_db": snr,
                "reference": "the onnxruntime head graph (INT8, one activation scale per tensor), same inputs"}}))
        draft["native"].pop("timings_other", None)
        write_manifest(tmp, draft)
        retime(tmp, manifest, draft["native"], cfg.time_seconds, threads)
        return write_manifest(tmp, json.loads(json.dumps(draft)))


def _why_not(section: Optional[Dict[str, Any]]) -> Optional[str]:
    wave = (section or {}).get("wave_stage")
    if not wave or not wave.get("upsampler"):
        return "needs the tts_wave pass's native stage with its upsampler (upsampler: true)"
    if wave.get("head"):
        return "the bundle's earlier upsampling stages are native already"
    return None


def _read_stages(head: Any) -> list:
    """Every upsampling stage of the head graph (a ModelProto) as :func:`stage_convs` reads it (ConfigError where
    one is not of the form the kernel runs)."""
    from edgeflow.runtime.native.vits_stage import n_upsamplers, stage_convs

    return [stage_convs(head, stage=k) for k in range(n_upsamplers(head))]


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (no native waveform stage with its upsampler, stages it cannot
    read, no C library), or None."""
    import onnx

    from edgeflow.passes.tts_kernels import native_section
    from edgeflow.runtime.native import load_error

    section, why = native_section(artifact, "tts_head")
    why = why or _why_not(section)
    if why:
        return why
    try:
        if not _read_stages(onnx.load(str(Path(artifact.bundle_dir) / section["decoder"]))):
            return NO_STAGE
    except ConfigError as exc:
        return str(exc)
    return load_error()


def _details(native: Dict[str, Any], ctx: PassContext) -> Dict[str, Any]:
    head = native["wave_stage"]["head"]
    if ctx.progress:
        print(f"    tts_head: {len(head['stages'])} upsampling stages native, SNR {head['calibration']['snr_db']} dB "
              "vs the onnxruntime head graph")
    return {"head": head, "timing": native["timing"]}


register_pass("tts_head", TtsHeadConfig, kernels_handler(
    "tts_head", lambda a, cfg: not_applicable(a),
    lambda a, out, cfg, ctx: add_tts_head(a.bundle_dir, out, cfg, seed=ctx.seed, overwrite=True), _details))

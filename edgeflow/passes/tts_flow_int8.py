"""The ``tts_flow_int8`` pass: a VITS voice's prior flow in the native engine with its WaveNet convs in INT8.

The prior flow (4 mean-only couplings of 4 WaveNet layers on joe-medium) is a quarter of a ``balanced`` voice's
time at one thread once the decoder's last stage is native. Its dilated convs run on the engine's INT8 tiles
(:mod:`edgeflow.runtime.native.wn`, ``ef_wn_q8.c``): weights symmetric per output channel, quantized from the
flow's own float weights at load; activations u8 with one dynamic scale per layer input. With ``res_skip`` (since
2026-12-05, 17:00 UTC) each layer's residual / statistics 1x1 conv runs in INT8 too, on the gate output quantized
per 64-frame block. The gate's tanh and sigmoid, the mean-only coupling update and the log-det stay float (the
coupling-aware rule). onnxruntime's graph of the flow stays float: only the native engine runs it in INT8.

Runs after ``tts_kernels`` (and ``tts_wave`` where a recipe has it). Writes a NEW bundle directory holding the same
files, the manifest's ``native.engine`` "vits-flow-int8" with ``native.int8_convs`` (["in"] or ["in", "rs"]; the
runtime quantizes those weights at load, no new file) and ``native.int8_flow``: the flow output's and the audio's
SNR against the float native flow on calibration sentences, and both engines' times again. The audio changes, so
the pipeline scores the bundle against the budget. Where the bundle has no float native flow, or the C library is
not built, it records why and leaves the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassContext, register_pass
from edgeflow.passes.kernels import kernels_handler, snr_db
from edgeflow.passes.tts_kernels import NativePassConfig, native_section, retime

#: Calibration SNR (dB) of the INT8 flow's output against the float flow below which the pass refuses (a misread
#: flow; joe-medium: about 30 dB).
MIN_SNR_DB = 15.0


@dataclasses.dataclass
class TtsFlowInt8Config(NativePassConfig):
    """Options of the tts_flow_int8 pass (and :class:`NativePassConfig`'s: threads, time_seconds, sentences).

    Attributes:
        res_skip: also the residual / statistics 1x1 convs in INT8 (joe-medium's flow: 4.54 -> 3.69 ms per second
            of audio at 1 thread, flow output 37.8 -> 35.7 dB against the float flow; the ``balanced`` gate rolled
            it back, P.808 -0.116 against the teacher).
    """

    res_skip: bool = False


def calibrate(float_voice: Any, int8_voice: Any, texts: List[str], seed: int) -> Dict[str, Any]:
    """SNRs (dB) of ``int8_voice``'s flow output and audio against ``float_voice``'s (same bundle, float native
    flow) on the first sentence of each of ``texts`` (seed ``seed + k``, the same prior noise)."""
    from edgeflow.runtime.voice_config import resolve_scales

    scales = resolve_scales(float_voice.config, None, None, None)
    flows: Dict[str, List[np.ndarray]] = {"float": [], "int8": []}
    audio: Dict[str, List[np.ndarray]] = {"float": [], "int8": []}
    for k, text in enumerate(texts):
        m_p, logs_p = float_voice._encode(next(float_voice.sentence_ids(text)), scales, seed + k)
        frames = m_p.shape[2]
        z_p = float_voice.prior(m_p, logs_p, scales["noise_scale"], seed + k, 0, frames)
        for name, voice in (("float", float_voice), ("int8", int8_voice)):
            flows[name].append(voice.flow.run(z_p))
            audio[name].append(voice._decode(m_p, logs_p, scales["noise_scale"], seed + k, 0, frames))
    return {"sentences": len(texts), "flow_snr_db": snr_db(flows["int8"], flows["float"]),
            "audio_snr_db": snr_db(audio["int8"], audio["float"]),
            "reference": "the float native flow, same inputs and noise"}


def add_tts_flow_int8(bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[TtsFlowInt8Config] = None,
                      seed: int = 0, overwrite: bool = False) -> Dict[str, Any]:
    """Copy the VITS bundle ``bundle_dir`` (with the ``tts_kernels`` pass's float native flow) to ``out_dir`` with
    the native flow's WaveNet convs in INT8. Returns the manifest written.

    Raises:
        ConfigError: no float native flow. BundleError: the INT8 flow's calibration SNR is below
            :data:`MIN_SNR_DB`, or out_dir exists.
    """
    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime.voice import Voice
    from edgeflow.runtime.voice_config import FLOAT_FLOW, INT8_FLOW, read_vits_manifest, vits_native_section

    cfg = cfg or TtsFlowInt8Config()
    src = Path(bundle_dir)
    manifest = read_vits_manifest(src)
    section = vits_native_section(manifest, src)
    if section is None or section.get("engine") != FLOAT_FLOW:
        raise ConfigError("tts_flow_int8: needs a bundle with the tts_kernels pass's float native flow")
    threads = cfg.threads or 1
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in src.iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR):
                shutil.copy2(p, tmp / p.name)
        draft = {k: v for k, v in manifest.items() if k != "files"}
        draft["native"] = dict(section, engine=INT8_FLOW, int8_convs=["in", "rs"] if cfg.res_skip else ["in"])
        write_manifest(tmp, draft)
        int8_voice = Voice.load(tmp, threads=threads, engine="native")
        calibration = calibrate(Voice.load(src, threads=threads, engine="native"), int8_voice,
                                sentences("calibration")[:cfg.sentences], seed)
        if calibration["flow_snr_db"] < MIN_SNR_DB:
            raise BundleError(f"tts_flow_int8: the INT8 flow is {calibration['flow_snr_db']} dB from the float flow "
                              f"on calibration sentences (under {MIN_SNR_DB}): the flow was not read as it computes")
        draft["native"]["int8_flow"] = {"layers": int8_voice.flow.int8_layers,
                                        "res_skip_layers": int8_voice.flow.int8_res_skip, "calibration": calibration,
                                        "weights": "symmetric per output channel, from the float weights at load",
                                        "activations": "u8, one dynamic scale per layer input (res / skip: per "
                                                       "64-frame block of the gate output)"}
        retime(tmp, manifest, draft["native"], cfg.time_seconds, threads)
        return write_manifest(tmp, json.loads(json.dumps(draft)))


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (no float native flow, no C library), or None."""
    from edgeflow.runtime.native import load_error
    from edgeflow.runtime.voice_config import FLOAT_FLOW

    section, why = native_section(artifact, "tts_flow_int8")
    if why:
        return why
    if section.get("engine") != FLOAT_FLOW:
        return "the bundle's native flow is already INT8"
    return load_error()


def _details(native: Dict[str, Any], ctx: PassContext) -> Dict[str, Any]:
    q = native["int8_flow"]
    if ctx.progress:
        print(f"    tts_flow_int8: {q['layers']} WaveNet layers INT8; against the float flow: flow output "
              f"{q['calibration']['flow_snr_db']} dB, audio {q['calibration']['audio_snr_db']} dB SNR")
    return {"int8_flow": q, "timing": native["timing"]}


register_pass("tts_flow_int8", TtsFlowInt8Config, kernels_handler(
    "tts_flow_int8", lambda a, cfg: not_applicable(a),
    lambda a, out, cfg, ctx: add_tts_flow_int8(a.bundle_dir, out, cfg, seed=ctx.seed, overwrite=True), _details))

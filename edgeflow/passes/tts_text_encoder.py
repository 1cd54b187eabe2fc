"""The ``tts_text_encoder`` pass: a VITS voice's text encoder (the transformer) in the native engine.

Once the decoder's flow and last stage run native, the text encoder is the part of a voice that scales least with
threads: about 3,900 onnxruntime nodes (relative-position attention as Pad / Reshape / Slice chains, Q/DQ pairs
around every INT8 conv) for about 0.24 GMAC per second of audio. The native kernel (``ef_enc.c``,
:mod:`edgeflow.runtime.native.text_encoder`) runs the transformer's convs on the engine's INT8 tiles (weights
symmetric per output channel, quantized at load from the graph's own weights, float or INT8; activations u8 with
one scale per tile of 128 tokens) and attention, softmax and LayerNorm in float, one head per thread. The rest of
``model.onnx`` (the prior's projection, the duration predictor's flows, the length regulation) stays in
onnxruntime as ``model_tail.onnx``, which reads the transformer's output, on one thread (its ~1,300 small nodes do
not scale). joe-medium (2026-12-05, ``bench/results/kernels.md``): the transformer 35.5 dB from the float one
(onnxruntime's INT8 graph: 29.0 dB); the encoder 3.90 -> 3.44 ms per second of audio at 1 thread, 3.57 -> 2.75 at 2;
the ``fast`` voice 5% faster at both, WER and P.808 unchanged on 20 sentences. ``balanced``'s gate rolled it back.

Runs after ``tts_kernels`` (it joins that pass's native engine: ``Voice.load(engine="native")`` runs it, "auto"
where the timing says native). Writes a NEW bundle directory holding the same files plus ``model_tail.onnx``, the
manifest's ``native.text_encoder`` (the cut graph, its input, the sha256 of the model.onnx it was cut from, and the
transformer output's SNR against onnxruntime's on calibration sentences) and both engines' times again. Durations
follow the encoder, so the audio changes and the pipeline scores the bundle against the budget. Where the bundle
has no native engine, or the C library is not built, it records why and leaves the bundle.
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
from edgeflow.passes.tts_kernels import NativePassConfig, native_section, retime, vits_manifest

#: The cut graph's file name in the bundle.
TAIL_FILE = "model_tail.onnx"
#: Calibration SNR (dB) of the native transformer's output against onnxruntime's below which the pass refuses (a
#: misread graph; joe-medium: about 35 dB against the float graph).
MIN_SNR_DB = 15.0


@dataclasses.dataclass
class TtsTextEncoderConfig(NativePassConfig):
    """Options of the tts_text_encoder pass: :class:`NativePassConfig`'s (threads, time_seconds, sentences)."""


def calibrate(encoder_graph: Path, voice: Any, texts: List[str], threads: int) -> Dict[str, Any]:
    """SNR (dB) of ``voice``'s native transformer output against onnxruntime's run of ``encoder_graph`` (the
    bundle's model.onnx, the transformer's output added as a graph output) on the first sentence of each text."""
    import onnx

    from edgeflow.runtime.native.text_encoder import ENCODER_OUTPUT

    model = onnx.load(str(encoder_graph))
    model.graph.output.append(onnx.helper.make_tensor_value_info(ENCODER_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = open_session_from_model(model, threads)
    ref, out = [], []
    for text in texts:
        ids = np.asarray(next(voice.sentence_ids(text)), np.int64)
        feeds = {"input": ids[None], "input_lengths": np.array([ids.size], np.int64),
                 "scales": np.array([0.0, 1.0, 0.0], np.float32), "noise_w_z": np.zeros((1, 2, ids.size), np.float32)}
        ref.append(session.run([ENCODER_OUTPUT], feeds)[0])
        out.append(voice.text_encoder.run(ids))
    return {"sentences": len(texts), "snr_db": snr_db(out, ref),
            "reference": "onnxruntime's run of the transformer in model.onnx"}


def open_session_from_model(model: Any, threads: int):
    """An onnxruntime CPU session of an in-memory graph with ``threads`` threads."""
    import onnxruntime as ort

    from edgeflow.core.ort import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def add_tts_text_encoder(bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[TtsTextEncoderConfig] = None,
                         overwrite: bool = False) -> Dict[str, Any]:
    """Copy the VITS bundle ``bundle_dir`` (with the ``tts_kernels`` pass's native engine) to ``out_dir`` with the
    text encoder's transformer in the native engine. Returns the manifest written.

    Raises:
        ConfigError: no native engine, or no VITS text encoder in the exported form. BundleError: the native
            transformer's calibration SNR is below :data:`MIN_SNR_DB`, or out_dir exists.
    """
    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime.native.text_encoder import TAIL_INPUT, cut_encoder_tail
    from edgeflow.runtime.voice import Voice
    from edgeflow.runtime.voice_config import TEXT_ENCODER, read_vits_manifest, vits_native_section

    cfg = cfg or TtsTextEncoderConfig()
    src = Path(bundle_dir)
    manifest = read_vits_manifest(src)
    section = vits_native_section(manifest, src)
    if section is None:
        raise ConfigError("tts_text_encoder: needs a bundle with the tts_kernels pass's native engine")
    encoder = manifest["graphs"]["encoder"]
    threads = cfg.threads or 1
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in src.iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR):
                shutil.copy2(p, tmp / p.name)
        cut_encoder_tail(src / encoder, tmp / TAIL_FILE)
        draft = {k: v for k, v in manifest.items() if k != "files"}
        draft["native"] = dict(section, text_encoder={"file": TAIL_FILE, "engine": TEXT_ENCODER, "input": TAIL_INPUT,
                                                      "source_encoder_sha256": manifest["files"][encoder]})
        write_manifest(tmp, draft)
        voice = Voice.load(tmp, threads=threads, engine="native")
        calibration = calibrate(src / encoder, voice, sentences("calibration")[:cfg.sentences], threads)
        if calibration["snr_db"] < MIN_SNR_DB:
            raise BundleError(f"tts_text_encoder: the native transformer is {calibration['snr_db']} dB from "
                              f"onnxruntime's on calibration sentences (under {MIN_SNR_DB}): the graph was not read "
                              "as it computes")
        draft["native"]["text_encoder"].update(
            calibration=calibration, weights="symmetric per output channel, from the graph's weights at load",
            activations="u8, one scale per tile of 128 tokens; attention, softmax and LayerNorm float")
        retime(tmp, manifest, draft["native"], cfg.time_seconds, threads)
        return write_manifest(tmp, json.loads(json.dumps(draft)))


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (no native engine, already native, no text encoder of the
    exported form, no C library), or None."""
    import onnx

    from edgeflow.runtime.native import load_error
    from edgeflow.runtime.native.text_encoder import ENCODER_OUTPUT

    section, why = native_section(artifact, "tts_text_encoder")
    if why:
        return why
    if section.get("text_encoder"):
        return "the bundle's text encoder is already native"
    manifest, _ = vits_manifest(artifact, "tts_text_encoder")
    graph = onnx.load(str(Path(artifact.bundle_dir) / manifest["graphs"]["encoder"])).graph
    if not any(ENCODER_OUTPUT in n.output for n in graph.node):
        return f"the encoder graph has no {ENCODER_OUTPUT} (not an exported VITS text encoder)"
    return load_error()


def _details(native: Dict[str, Any], ctx: PassContext) -> Dict[str, Any]:
    te = native["text_encoder"]
    if ctx.progress:
        print(f"    tts_text_encoder: the transformer native, {te['calibration']['snr_db']} dB SNR against "
              "onnxruntime's on calibration sentences")
    return {"text_encoder": te, "timing": native["timing"]}


register_pass("tts_text_encoder", TtsTextEncoderConfig, kernels_handler(
    "tts_text_encoder", lambda a, cfg: not_applicable(a),
    lambda a, out, cfg, ctx: add_tts_text_encoder(a.bundle_dir, out, cfg, overwrite=True), _details))

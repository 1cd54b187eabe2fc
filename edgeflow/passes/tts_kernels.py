"""The ``tts_kernels`` pass: a VITS voice bundle's prior flow through the native engine, parity-checked and timed.

Runs on a VITS bundle of any precision (the prior flow is float32 in every recipe, so it runs after
``tts_quantize`` as well as after ``tts_export``; on another family, a graph without a float flow or where the
C library is not built it records why and leaves the bundle as it is). Writes a NEW bundle directory in the work
dir holding the same files plus

* ``decoder_hifigan.onnx``: ``decoder.onnx`` cut at the flow's output (the input of ``/dec/conv_pre``), the
  HiFi-GAN decoder as it was (INT8 parts kept), hashed in the manifest;

and a ``native`` section: the cut decoder, the cut tensor, the sha256 of the decoder it was cut from, the flow's
source (``file``: ``decoder.onnx`` itself: ``Voice.load`` packs the native flow from its initializers, 0.1 s on
joe-medium, the skip convs folded with the couplings' end convs, the kernel-5 WN convs as Winograd F(4,5)) and the
sha256 of those packed weights (checked at load; until 2026-12-05 the pass wrote them to ``vits_flow.npz``, 27 MB
of float32 beside the same weights in ``decoder.onnx``; such bundles still load), the parity of native flow + cut
decoder against the whole ``decoder.onnx`` in onnxruntime (same m_p, logs_p, noise and scales at 8, 23 and 50
frames: the flow's output and the audio, max relative error and SNR), and both paths' measured times (the flow
stage alone and the whole decoder), from which ``Voice.load(..., engine="auto")`` picks. ``decoder.onnx`` stays,
so the bundle still runs without the library.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassConfig, register_pass
from edgeflow.passes.kernels import kernels_handler

#: The cut decoder graph's file name inside a bundle.
CUT_DECODER = "decoder_hifigan.onnx"


@dataclasses.dataclass
class TtsKernelsConfig(PassConfig):
    """Options of the tts_kernels pass.

    Attributes:
        threads: threads both paths are timed with (0: the target's ``threads``, else 1).
        time_seconds: seconds of audio each path is timed on (0: no timing; ``auto`` then keeps onnxruntime).
        max_rel_err: parity of the flow's output (and, float32 decoders, the audio): max |native - onnxruntime| /
            max |onnxruntime|, per length.
        min_snr_db: parity of float32 audio (SNR against onnxruntime's), per length.
        quantized_min_snr_db: audio SNR of an INT8 / FP16 decoder (the flow's last-bit differences can move a
            quantized activation by one step), per length.
        time_one_thread: when the target's threads run another conv layout than a single-threaded session (1-D
            at 2 threads, 2-D at 1 on x86-64), also time both paths at 1 thread (``timings_other``), so that
            ``engine="auto"`` can choose for a single-threaded voice too.
    """

    threads: int = 0
    time_seconds: float = 4.0
    max_rel_err: float = 1e-4
    min_snr_db: float = 80.0
    quantized_min_snr_db: float = 30.0
    time_one_thread: bool = True

    def __post_init__(self):
        if self.threads < 0 or self.time_seconds < 0 or self.max_rel_err <= 0:
            raise ValueError("tts_kernels: threads and time_seconds must be >= 0, max_rel_err > 0")


@dataclasses.dataclass
class NativePassConfig(PassConfig):
    """Options every pass that adds a native part to a voice bundle after this one shares (``tts_wave``,
    ``tts_flow_int8``, ``tts_text_encoder``).

    Attributes:
        threads: threads both engines are timed with (0: the target's ``threads``, else 1).
        time_seconds: seconds of audio each engine is timed on (0: no timing; ``auto`` then keeps onnxruntime).
        sentences: calibration sentences (never the evaluation ones) the pass's SNRs are measured on.
    """

    threads: int = 0
    time_seconds: float = 4.0
    sentences: int = 4

    def __post_init__(self):
        if self.threads < 0 or self.time_seconds < 0 or self.sentences < 1:
            raise ValueError(f"{getattr(self, 'pass_name', 'pass')}: threads and time_seconds must be >= 0, "
                             "sentences >= 1")


def _feeds(voice: Any, frames: int, seed: int) -> Dict[str, np.ndarray]:
    """Decoder inputs like an utterance's: prior mean / log-std of a plausible range, the seeded noise."""
    rng = np.random.default_rng([seed, frames])
    c = voice.channels
    return {"m_p": (rng.standard_normal((1, c, frames)) * 0.5).astype(np.float32),
            "logs_p": (rng.standard_normal((1, c, frames)) * 0.2 - 0.5).astype(np.float32),
            "noise_scale": voice.config.noise_scale, "seed": seed}


def _decode(voice: Any, f: Dict[str, Any]) -> np.ndarray:
    return voice._decode(f["m_p"], f["logs_p"], f["noise_scale"], f["seed"], 0, f["m_p"].shape[2])


def _parity(ort_voice, nat_voice, flow_ref: Callable, quantized: bool, cfg: TtsKernelsConfig) -> Dict[str, Any]:
    from edgeflow.passes.kernels import compare

    rows = []
    for n in (8, 23, 50):
        f = _feeds(ort_voice, n, n)
        z_p = nat_voice.prior(f["m_p"], f["logs_p"], f["noise_scale"], f["seed"], 0, n)
        flow = compare(nat_voice.flow.run(z_p), flow_ref(z_p))
        audio = compare(_decode(nat_voice, f), _decode(ort_voice, f))
        ok = flow["max_rel_err"] <= cfg.max_rel_err and (audio["snr_db"] >= cfg.quantized_min_snr_db if quantized
                                                          else audio["max_rel_err"] <= cfg.max_rel_err
                                                          and audio["snr_db"] >= cfg.min_snr_db)
        rows.append({"frames": n, "flow": flow, "audio": audio, "passed": bool(ok)})
    return {"reference": "onnxruntime on the bundle's decoder.onnx (flow: its subgraph), same inputs",
            "max_rel_err": cfg.max_rel_err,
            "audio_min_snr_db": cfg.quantized_min_snr_db if quantized else cfg.min_snr_db,
            "lengths": rows, "passed": all(r["passed"] for r in rows)}


def _timing(ort_voice, nat_voice, flow_ref: Callable, threads: int, seconds: float) -> Dict[str, Any]:
    from edgeflow.runtime.conv_layout import choose_layout
    from edgeflow.validate.cost import interleaved_best

    frames = max(1, int(round(seconds * ort_voice.sample_rate / ort_voice.hop_length)))
    f = _feeds(ort_voice, frames, 0)
    z_p = nat_voice.prior(f["m_p"], f["logs_p"], f["noise_scale"], 0, 0, frames)
    t = interleaved_best({"flow_native": lambda: nat_voice.flow.run(z_p), "flow_onnxruntime": lambda: flow_ref(z_p),
                          "decoder_native": lambda: _decode(nat_voice, f),
                          "decoder_onnxruntime": lambda: _decode(ort_voice, f)}, rounds=5, warmup=True)
    audio = frames * ort_voice.hop_length / ort_voice.sample_rate
    out = {"threads": threads, "conv_layout": choose_layout("auto", threads), "seconds": round(audio, 3),
           **{f"{k}_s": round(v, 5) for k, v in t.items()},
           "flow_speedup": round(t["flow_onnxruntime"] / t["flow_native"], 3),
           "native_rtf": round(t["decoder_native"] / audio, 4), "onnxruntime_rtf": round(t["decoder_onnxruntime"] / audio, 4)}
    out["faster"] = "native" if out["native_rtf"] < out["onnxruntime_rtf"] else "onnxruntime"
    return out


def _flow_reference(decoder_path: Path, channels: int, threads: int) -> Callable:
    """z_p [1, C, T] -> the flow's output by onnxruntime on ``decoder.onnx``'s flow subgraph, its convs in the
    layout a ``Voice`` session at ``threads`` gets (:mod:`edgeflow.runtime.conv_layout`)."""
    import onnx
    import onnxruntime as ort

    from edgeflow.core.ort import session_options
    from edgeflow.runtime.conv_layout import apply_layout
    from edgeflow.runtime.native.vits_graph import extract, flow_output

    model = onnx.load(str(decoder_path))
    z_p = next(n.output[0] for n in model.graph.node if n.op_type == "Add" and "m_p" in n.input)
    sub = extract(model, [z_p, "m_p"], [flow_output(model)], channels)
    apply_layout(sub, "auto", threads)
    sess = ort.InferenceSession(sub.SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {z_p: x, "m_p": x})[0]


def add_tts_kernels(bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[TtsKernelsConfig] = None,
                    overwrite: bool = False) -> Dict[str, Any]:
    """Copy the VITS bundle ``bundle_dir`` to ``out_dir`` with the native flow (packed from its decoder graph) and
    the cut decoder graph, checked against onnxruntime and timed. Returns the manifest written.

    Raises:
        ConfigError: not a VITS bundle with a float prior flow. BundleError: parity failed, or out_dir exists.
    """
    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir, sha256_file
    from edgeflow.runtime.conv_layout import choose_layout
    from edgeflow.runtime.native import info
    from edgeflow.runtime.native.vits_graph import cut_decoder, pack_vits_flow, packed_sha256
    from edgeflow.runtime.native.wn import FLOW_FILE
    from edgeflow.runtime.voice import Voice
    from edgeflow.runtime.voice_config import FLOAT_FLOW, read_vits_manifest

    cfg = cfg or TtsKernelsConfig()
    manifest = read_vits_manifest(Path(bundle_dir))
    decoder = Path(bundle_dir) / manifest["graphs"]["decoder"]
    arrays = pack_vits_flow(decoder)
    threads = cfg.threads or 1
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in Path(bundle_dir).iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR, FLOW_FILE, CUT_DECODER):
                shutil.copy2(p, tmp / p.name)
        name = cut_decoder(decoder, tmp / CUT_DECODER)
        draft = {k: v for k, v in manifest.items() if k not in ("files", "native")}
        draft["native"] = {"file": manifest["graphs"]["decoder"], "flow_sha256": packed_sha256(arrays),
                           "engine": FLOAT_FLOW, "decoder": CUT_DECODER,
                           "decoder_input": name, "source_decoder_sha256": sha256_file(decoder),
                           "flow": {"couplings": int(arrays["config"][0]), "layers": int(arrays["config"][1]),
                                    "hidden": int(arrays["config"][3]), "kernel": int(arrays["config"][4])}}
        write_manifest(tmp, draft)
        ort_voice = Voice.load(tmp, threads=threads, engine="onnxruntime")
        nat_voice = Voice.load(tmp, threads=threads, engine="native")
        flow_ref = _flow_reference(tmp / manifest["graphs"]["decoder"], nat_voice.channels, threads)
        parity = _parity(ort_voice, nat_voice, flow_ref, manifest["precision"] != "float32", cfg)
        if not parity["passed"]:
            worst = max(parity["lengths"], key=lambda r: r["flow"]["max_rel_err"])
            raise BundleError(f"tts_kernels: native flow vs onnxruntime parity failed (flow max rel err "
                              f"{worst['flow']['max_rel_err']:.2e}, audio SNR {worst['audio']['snr_db']} dB at "
                              f"{worst['frames']} frames)")
        timing = _timing(ort_voice, nat_voice, flow_ref, threads, cfg.time_seconds) if cfg.time_seconds > 0 else None
        draft["native"]["flow"]["winograd_layers"] = nat_voice.flow.winograd_layers
        lib = info()
        draft["native"].update(parity=json.loads(json.dumps(parity)), timing=timing, library=lib["isa"],
                               amx=lib["amx"])                    # the timings' INT8 tiles (AMX or not)
        if timing is not None and cfg.time_one_thread and threads != 1 \
                and choose_layout("auto", 1) != timing["conv_layout"]:
            draft["native"]["timings_other"] = [_timing_at(tmp, manifest, 1, cfg.time_seconds)]
        return write_manifest(tmp, draft)


def _timing_at(bundle: Path, manifest: Dict[str, Any], threads: int, seconds: float) -> Dict[str, Any]:
    """:func:`_timing` of the bundle's voices opened at ``threads`` (another conv layout than the target's)."""
    from edgeflow.runtime import Voice

    ort_voice = Voice.load(bundle, threads=threads, engine="onnxruntime")
    nat_voice = Voice.load(bundle, threads=threads, engine="native")
    flow_ref = _flow_reference(bundle / manifest["graphs"]["decoder"], nat_voice.channels, threads)
    return _timing(ort_voice, nat_voice, flow_ref, threads, seconds)


def retime(bundle: Path, manifest: Dict[str, Any], native: Dict[str, Any], seconds: float, threads: int) -> None:
    """Both engines of a bundle a later pass changed timed again into its ``native`` section (as this pass times
    them; ``seconds`` 0: no timing), at 1 thread too where that runs another conv layout."""
    from edgeflow.runtime.conv_layout import choose_layout
    from edgeflow.runtime.voice import Voice

    native["timing"] = None
    native.pop("timings_other", None)
    if seconds <= 0:
        return
    ort_voice = Voice.load(bundle, threads=threads, engine="onnxruntime")
    nat_voice = Voice.load(bundle, threads=threads, engine="native")
    flow_ref = _flow_reference(bundle / manifest["graphs"]["decoder"], nat_voice.channels, threads)
    native["timing"] = _timing(ort_voice, nat_voice, flow_ref, threads, seconds)
    if threads != 1 and choose_layout("auto", 1) != native["timing"]["conv_layout"]:
        native["timings_other"] = [_timing_at(bundle, manifest, 1, seconds)]


def vits_manifest(artifact: Artifact, name: str) -> Tuple[Dict[str, Any], Optional[str]]:
    """(the artifact's bundle manifest, why a VITS-only pass ``name`` does not apply to it or None).

    Raises:
        ConfigError: no bundle yet.
    """
    from edgeflow.runtime.bundle import read_manifest

    if artifact.bundle_dir is None:
        raise ConfigError(f"{name}: needs an exported voice bundle (run tts_export first)")
    manifest = read_manifest(artifact.bundle_dir, task=None)
    if manifest.get("family") != "vits" or "graphs" not in manifest:
        return manifest, f"{name} is for VITS voices, not {manifest.get('family')}"
    return manifest, None


def native_section(artifact: Artifact, name: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the artifact's bundle's ``native`` section, or None with why a pass ``name`` that builds on this pass's
    native flow does not apply)."""
    from edgeflow.runtime.voice_config import vits_native_section

    manifest, why = vits_manifest(artifact, name)
    if why:
        return None, why
    section = vits_native_section(manifest, artifact.bundle_dir)
    return section, None if section is not None else "the bundle has no native prior flow (run tts_kernels first)"


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (another family, no float flow, no C library), or None."""
    from edgeflow.runtime.native import load_error
    from edgeflow.runtime.native.vits_graph import pack_vits_flow

    manifest, why = vits_manifest(artifact, "tts_kernels")
    if why:
        return why
    try:
        pack_vits_flow(Path(artifact.bundle_dir) / manifest["graphs"]["decoder"])
    except ConfigError as exc:
        return str(exc)
    return load_error()


register_pass("tts_kernels", TtsKernelsConfig, kernels_handler(
    "tts_kernels", lambda a, cfg: not_applicable(a),
    lambda a, out, cfg, ctx: add_tts_kernels(a.bundle_dir, out, cfg, overwrite=True)),
    changes_output=False)

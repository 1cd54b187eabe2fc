"""Passes for text-to-speech (VITS) voices: ``tts_export``, ``tts_quantize``, ``tts_validate``.

The target profiles' ``recipes_tts`` table names them (``edgeflow.pipeline_tts`` picks that table for a model
whose family task is "tts"). Each writes a NEW bundle directory in the work dir, so the pipeline can roll back.

``tts_quantize`` (int8): rewrites the decoder's ConvTranspose upsamplers into their polyphase Conv form
(:mod:`edgeflow.export.vits_polyphase`), re-exports, and quantizes the HiFi-GAN convs and the text
encoder's transformer with :mod:`edgeflow.quant.vits_int8` (flows, exp and duration arithmetic float),
calibrated on the calibration sentences (:mod:`edgeflow.data.tts_text`, never the evaluation ones). With
``polyphase: "auto"`` both forms are quantized and the faster decoder (timed here) is kept; the timings are
recorded. ``float16`` converts the decoder's HiFi-GAN to fp16 (flows and the encoder stay float32).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


def _fresh(ctx: PassContext, artifact: Artifact, tag: str) -> Path:
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-{tag}"
    if out.exists():
        shutil.rmtree(out)
    return out


@dataclasses.dataclass
class TtsExportConfig(PassConfig):
    """Export the VITS model as the two-graph bundle (parity-checked against PyTorch).

    Attributes:
        precision: "float32" only (int8 / float16 come from ``tts_quantize``).
    """

    precision: str = "float32"

    def __post_init__(self):
        if self.precision != "float32":
            raise ValueError("tts_export writes float32; use the tts_quantize pass for int8/float16")


def _export(artifact: Artifact, cfg: TtsExportConfig, ctx: PassContext):
    from edgeflow.export.vits import export_vits_bundle

    if artifact.model is None:
        raise ConfigError("tts_export: the artifact has no torch model")
    out = _fresh(ctx, artifact, "export")
    # the plain-upsampler float bundle: tts_quantize's "plain" form and the reference its "auto" choice times
    manifest = export_vits_bundle(artifact.model, out, history=artifact.history, phase_form=False)
    artifact.bundle_dir = out
    artifact.info.update(precision="float32", float_bundle=out.name)
    return {"bundle": out.name, "validation": manifest.get("validation")}


register_pass("tts_export", TtsExportConfig, _export)


@dataclasses.dataclass
class TtsQuantizeConfig(PassConfig):
    """Options of ``tts_quantize``.

    Attributes:
        precision: "int8" (explicit Q/DQ) or "float16" (decoder HiFi-GAN in fp16).
        method: calibration: minmax | percentile | entropy.
        activation_type: "uint8" (onnxruntime x86: fuses into QLinearConv) or "int8" (symmetric: TensorRT).
        polyphase: True / False / "auto" (quantize both forms, keep the faster decoder).
        quantize_encoder: also quantize the text encoder's transformer.
        exclude: node-name regexes kept float besides the defaults (the decoder's conv_post).
        float_last_stages: HiFi-GAN upsampling stages, counted from the output, kept float (upsampler and
            its residual blocks): int8 activations at the waveform rate add audible noise (joe-medium, 3
            evaluation sentences: DNSMOS P.808 -0.50 with every stage int8, -0.08 with the last one float).
        calib_sentences: calibration sentences used (of 20).
        residual: int8: also Q/DQ the residual Adds of the decoder's fully quantized resblocks
            (:func:`edgeflow.quant.vits_int8.residual_adds`).
        stage_sums: with ``residual``, also the Adds summing each stage's fully quantized resblocks
            (:func:`edgeflow.quant.vits_int8.stage_sum_adds`; onnxruntime then runs them as QLinearAdd).
    """

    precision: str = "int8"
    method: str = "percentile"
    activation_type: str = "uint8"
    polyphase: Any = "auto"
    quantize_encoder: bool = True
    exclude: List[str] = dataclasses.field(default_factory=list)
    float_last_stages: int = 1
    calib_sentences: int = 8
    residual: bool = False
    stage_sums: bool = False

    def __post_init__(self):
        if self.precision not in ("int8", "float16"):
            raise ValueError("tts_quantize precision must be int8 or float16")
        if self.polyphase not in (True, False, "auto"):
            raise ValueError("polyphase must be true, false or \"auto\"")
        if self.activation_type not in ("uint8", "int8"):
            raise ValueError("activation_type must be uint8 or int8")
        if not isinstance(self.float_last_stages, int) or self.float_last_stages < 0:
            raise ValueError("float_last_stages must be an integer >= 0")
        if not 1 <= int(self.calib_sentences) <= 20:
            raise ValueError("calib_sentences must be 1..20")
        if self.stage_sums and not self.residual:
            raise ValueError("stage_sums needs residual (the sums' inputs are the residual stream)")


def calibration_feeds(bundle: Path, n: int, seed: int = 0, window: int = 64, per_sentence: int = 3, log=None):
    """(encoder feeds, decoder feeds) of the first ``n`` calibration sentences through the float bundle; the
    decoder's are up to ``per_sentence`` windows of ``window`` frames of each sentence (a shorter one whole)."""
    from edgeflow.core.noise import noise
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice
    from edgeflow.validate.progress import Progress

    prog = Progress("calibration feeds", n, log, "sentences")
    voice = Voice.load(bundle)
    c = voice.config
    scales = np.array([c.noise_scale, c.length_scale, c.noise_w], dtype=np.float32)
    enc, dec, short = [], [], []
    for k, text in enumerate(sentences("calibration")[:n]):
        for i, ids in enumerate(voice.sentence_ids(text)):
            x = np.asarray([ids], dtype=np.int64)
            s = seed + 1000 * k + i
            feed = {"input": x, "input_lengths": np.array([x.shape[1]], np.int64), "scales": scales,
                    "noise_w_z": np.random.default_rng([s, 0, 1]).standard_normal(2 * x.shape[1], dtype=np.float32)
                    .reshape(1, 2, x.shape[1])}
            m_p, logs_p = voice.encoder.run(["m_p", "logs_p"], feed)
            f, ch = m_p.shape[2], m_p.shape[1]
            z = noise(s, 0, f, ch).reshape(1, f, ch).transpose(0, 2, 1)
            enc.append(feed)
            whole = {"m_p": m_p, "logs_p": logs_p, "noise_z": np.ascontiguousarray(z), "scales": scales}
            for a in list(range(0, f - window + 1, window))[:per_sentence]:   # equal windows: histogram
                dec.append({k: v if k == "scales" else np.ascontiguousarray(v[:, :, a:a + window])  # calibrators
                            for k, v in whole.items()})              # need one shape; the decoder is frame-local
            short.append(whole)
        prog.advance()
    return enc, dec or short[:1]


def time_graphs(paths: Dict[str, Path], feeds, threads: int, rounds: int = 5) -> Dict[str, float]:
    """Fastest of ``rounds`` runs over ``feeds`` per graph, the graphs interleaved round by round (a busy
    machine slows them alike), onnxruntime CPU with ``threads`` threads, after one warm-up each."""
    import onnxruntime as ort

    from edgeflow.core.ort import session_options
    from edgeflow.validate.cost import interleaved_best

    so = session_options(threads)
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    for s in sessions.values():
        s.run(None, feeds[0])
    return interleaved_best({k: (lambda s=s: [s.run(None, f) for f in feeds]) for k, s in sessions.items()}, rounds)


def _phase_bundle(artifact: Artifact, ctx: PassContext) -> Path:
    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.export.vits_polyphase import to_phase_form
    from edgeflow.flows.coupling import remove_weight_norm

    model = copy.deepcopy(artifact.model).eval()
    remove_weight_norm(model)
    if to_phase_form(model.dec) == 0:
        raise ConfigError("tts_quantize: the decoder has no ConvTranspose to rewrite")
    out = _fresh(ctx, artifact, "phase")
    export_vits_bundle(model, out, history=artifact.history)
    return out


def stage_patterns(decoder_cfg: Dict[str, Any], last: int) -> List[str]:
    """Node-name regexes of the last ``last`` HiFi-GAN upsampling stages (upsampler + residual blocks)."""
    n, nk = len(decoder_cfg["upsample_rates"]), len(decoder_cfg["resblock_kernel_sizes"])
    out = []
    for stage in range(max(0, n - last), n):
        out.append(rf"^/dec/ups\.{stage}/")
        out += [rf"^/dec/resblocks\.{stage * nk + j}/" for j in range(nk)]
    return out


def _int8_variant(src: Path, tmp: Path, tag: str, cfg: TtsQuantizeConfig, enc_feeds, dec_feeds) -> Dict[str, Any]:
    from edgeflow.quant.vits_int8 import DEFAULT_EXCLUDE, quantize_graph

    dec_cfg = json.loads((src / "manifest.json").read_text(encoding="utf-8"))["config"]["decoder"]
    exclude = list(DEFAULT_EXCLUDE) + list(cfg.exclude) + stage_patterns(dec_cfg, cfg.float_last_stages)
    sym = cfg.activation_type == "int8"
    out = {"decoder": quantize_graph(src / "decoder.onnx", tmp / f"decoder-{tag}.onnx", "decoder", dec_feeds,
                                     cfg.method, exclude, symmetric_activations=sym, residual=cfg.residual,
                                     stage_sums=cfg.stage_sums)}
    if cfg.quantize_encoder:
        out["encoder"] = quantize_graph(src / "model.onnx", tmp / f"model-{tag}.onnx", "encoder", enc_feeds,
                                        "minmax", exclude, symmetric_activations=sym)   # feeds differ in length
    return out


def _int8(artifact: Artifact, cfg: TtsQuantizeConfig, ctx: PassContext, tmp: Path, feeds, details, log):
    """Quantize the upsampler form(s) ``cfg.polyphase`` asks for, time them, keep the fastest decoder.
    Returns (source bundle, {role: quantized graph}, quantization section)."""
    from edgeflow.validate.progress import Progress

    float_dir, (enc_feeds, dec_feeds) = artifact.bundle_dir, feeds
    threads = int(ctx.target.get("threads") or 1)
    variants, paths = {}, {"float_convtranspose": float_dir / "decoder.onnx"}
    prog = Progress("int8 variants", 2 if cfg.polyphase == "auto" else 1, log, "upsampler forms")
    if cfg.polyphase in (False, "auto"):
        variants["convtranspose"] = (float_dir, _int8_variant(float_dir, tmp, "ct", cfg, enc_feeds, dec_feeds))
        paths["int8_convtranspose"] = tmp / "decoder-ct.onnx"
        prog.advance()
    if cfg.polyphase in (True, "auto"):
        phase = _phase_bundle(artifact, ctx)
        variants["polyphase"] = (phase, _int8_variant(phase, tmp, "pp", cfg, enc_feeds, dec_feeds))
        paths.update(float_polyphase=phase / "decoder.onnx", int8_polyphase=tmp / "decoder-pp.onnx")
        prog.advance()
    timing = time_graphs(paths, dec_feeds[:6], threads)
    chosen = min(variants, key=lambda v: timing[f"int8_{v}"])
    src, section = variants[chosen]
    tag = "pp" if chosen == "polyphase" else "ct"
    graphs = {"decoder": tmp / f"decoder-{tag}.onnx"}
    if cfg.quantize_encoder:
        graphs["encoder"] = tmp / f"model-{tag}.onnx"
    details["decoder_seconds"] = {k: round(v, 4) for k, v in timing.items()}
    details["decoder_seconds_note"] = (f"decoder graph on {min(6, len(dec_feeds))} calibration windows, fastest "
                                       f"of 5 interleaved rounds, {threads} threads; kept: {chosen}")
    details["upsampler"] = chosen
    return src, graphs, dict(section, upsampler=chosen)


def _quantize(artifact: Artifact, cfg: TtsQuantizeConfig, ctx: PassContext):
    from edgeflow.core.bundle_format import copy_bundle
    from edgeflow.quant.vits_int8 import convert_graph_fp16

    if artifact.bundle_dir is None or artifact.model is None:
        raise ConfigError("tts_quantize: run tts_export first (needs the float bundle and the model)")
    float_dir = artifact.bundle_dir
    log = print if ctx.progress else None
    tmp = ctx.work_dir / f"quant-{len(artifact.history):02d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    details: Dict[str, Any] = {"precision": cfg.precision, "calibration": f"{cfg.calib_sentences} calibration "
                               "sentences (edgeflow.data.tts_text)"}
    if cfg.precision == "float16":
        section = {"decoder": convert_graph_fp16(float_dir / "decoder.onnx", tmp / "decoder.onnx")}
        graphs, src = {"decoder": tmp / "decoder.onnx"}, float_dir
    else:
        feeds = calibration_feeds(float_dir, cfg.calib_sentences, ctx.seed, log=log)
        src, graphs, section = _int8(artifact, cfg, ctx, tmp, feeds, details, log)
    out = _fresh(ctx, artifact, "int8" if cfg.precision == "int8" else "fp16")
    copy_bundle(src, out, graphs, {"precision": cfg.precision,
                                   "quantization": dict(section, method=cfg.method, calibration=details["calibration"])})
    shutil.rmtree(tmp, ignore_errors=True)
    artifact.bundle_dir = out
    artifact.info["precision"] = cfg.precision
    details["bundle"] = out.name
    details["quantization"] = section
    return details


register_pass("tts_quantize", TtsQuantizeConfig, _quantize)


@dataclasses.dataclass
class TtsValidateConfig(PassConfig):
    """Check the current voice bundle (manifest, hashes, graphs load) and record its export parity."""


def _validate(artifact: Artifact, cfg: TtsValidateConfig, ctx: PassContext):
    from edgeflow.runtime import Voice

    if artifact.bundle_dir is None:
        raise ConfigError("tts_validate: no bundle yet (run tts_export first)")
    voice = Voice.load(artifact.bundle_dir)
    return {"manifest_ok": True, "precision": voice.manifest.get("precision"),
            "export_parity": voice.manifest.get("validation")}


register_pass("tts_validate", TtsValidateConfig, _validate, changes_output=False)

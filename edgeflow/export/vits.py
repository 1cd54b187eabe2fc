"""VITS -> a two-graph ONNX bundle with every noise as a graph input (interface: BUNDLE layout below).

    BUNDLE/model.onnx    encoder: (input [1, N] int64, input_lengths [1] int64, scales [3] f32,
                         noise_w_z [1, 2, N] f32) -> (m_p [1, C, F], logs_p [1, C, F], durations [1, N] int64)
    BUNDLE/decoder.onnx  decoder: (m_p, logs_p, noise_z [1, C, F], scales [3]) -> audio [1, 1, F * hop]
    BUNDLE/manifest.json family "vits", task "tts", graphs, io, phoneme_id_map, espeak, sample_rate,
                         hop_length, inter_channels, inference (default scales), noise recipe, streaming,
                         validation

The split serves streaming: the decoder (prior flow inverse + HiFi-GAN) is convolutional over frames with no
mask, so it runs on frame chunks with ``streaming.context_frames`` of context each side. Noise is drawn
from a seed exactly as :func:`edgeflow.models.vits.model.duration_noise` / ``prior_noise`` do (numpy).
Parity: onnxruntime vs the PyTorch model (weight norm unfolded) on the same noise at several phoneme counts:
equal durations, audio within :data:`TOLERANCE` max abs.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from edgeflow.core.bundle_format import MODEL_FILE, write_manifest
from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.core.io import atomic_dir
from edgeflow.core.ort import session_options
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.vits.model import Vits, duration_noise, prior_noise

DECODER_FILE = "decoder.onnx"
OPSET = 17
TOLERANCE = 1e-4
VALIDATION_PHONEMES = (5, 23, 61)
ENC_IN = ("input", "input_lengths", "scales", "noise_w_z")
ENC_OUT = ("m_p", "logs_p", "durations")
DEC_IN = ("m_p", "logs_p", "noise_z", "scales")
DEC_OUT = ("audio",)


class ExportValidationError(BundleError):
    """The exported graphs do not reproduce the PyTorch model within the tolerance."""


class EncoderGraph(nn.Module):
    """Stage 1 as a module (scales[1] = length_scale, scales[2] = noise_w).

    A model with the deterministic duration predictor (``use_sdp`` False) ignores ``noise_w_z`` and noise_w;
    the graph still takes ``noise_w_z`` (the runtime always feeds it): one element of it times 0 is added
    to ``m_p``, so the input stays in the graph at no measurable cost.
    """

    def __init__(self, model: Vits):
        super().__init__()
        self.model = model

    def forward(self, ids, lengths, scales, noise_w_z):
        m, logs, dur, _ = self.model.encode_text(ids, lengths, noise_w_z, scales[1], scales[2])
        if not self.model.config.use_sdp:
            m = m + noise_w_z[:, :1, :1] * 0.0
        return m, logs, dur


class DecoderGraph(nn.Module):
    """Stage 2 as a module (scales[0] = noise_scale)."""

    def __init__(self, model: Vits):
        super().__init__()
        self.model = model

    def forward(self, m_p, logs_p, noise_z, scales):
        return self.model.decode_frames(m_p, logs_p, noise_z, scales[0])


def receptive_field(cfg) -> Dict[str, int]:
    """Frames of the decoder graph's dependence each side: the prior flow's WN stacks plus HiFi-GAN."""
    flow = cfg.n_flows * (cfg.flow_kernel - 1) // 2 * sum(cfg.flow_dilation ** i for i in range(cfg.flow_layers))
    dec, rate, reach = cfg.decoder, 1, 3.0
    for u, k in zip(dec.upsample_rates, dec.upsample_kernel_sizes):
        reach += k / 2 / (rate * u)
        rate *= u
        per = 2 if dec.resblock == "1" else 1
        reach += max(sum((k_r - 1) // 2 * (d + (per - 1)) for d in d_r)
                     for k_r, d_r in zip(dec.resblock_kernel_sizes, dec.resblock_dilation_sizes)) / rate
    reach += (3 + dec.istft_n_fft / max(1, dec.istft_hop)) / rate
    f = flow + int(math.ceil(reach))
    return {"left": f, "right": f}


def _io(cfg) -> Dict[str, Any]:
    c, hop = cfg.inter_channels, cfg.hop_length
    t = lambda name, shape, dtype="float32": {"name": name, "shape": shape, "dtype": dtype}  # noqa: E731
    return {"encoder": {"inputs": [t("input", [1, "N"], "int64"), t("input_lengths", [1], "int64"),
                                   t("scales", [3]), t("noise_w_z", [1, 2, "N"])],
                        "outputs": [t("m_p", [1, c, "F"]), t("logs_p", [1, c, "F"]), t("durations", [1, "N"], "int64")]},
            "decoder": {"inputs": [t("m_p", [1, c, "F"]), t("logs_p", [1, c, "F"]), t("noise_z", [1, c, "F"]),
                                   t("scales", [3])],
                        "outputs": [t("audio", [1, 1, f"F*{hop}"])]},
            "scales": ["noise_scale", "length_scale", "noise_w"]}


def _export(module: nn.Module, args, path: Path, inputs, outputs, axes) -> None:
    import warnings

    import onnx

    from edgeflow.export.onnx_export import runtime_ir_version

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, runtime_ir_version())
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _example_ids(cfg, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, n]).integers(0, cfg.num_symbols, size=(1, n)).astype(np.int64)


def validate_parity(enc, dec, model: Vits, scales=(0.667, 1.0, 0.8), seed: int = 0,
                    lengths=VALIDATION_PHONEMES) -> Dict[str, Any]:
    """Run both graphs and the PyTorch model on the same ids and noise; compare durations and audio."""
    cfg, cases = model.config, []
    sc = np.asarray(scales, dtype=np.float32)
    for n in lengths:
        ids = _example_ids(cfg, n, seed)
        nwz = duration_noise(seed, n)
        m, logs, dur = enc.run(None, {"input": ids, "input_lengths": np.array([n], np.int64), "scales": sc,
                                      "noise_w_z": nwz})
        nz = prior_noise(seed, 0, m.shape[2], cfg.inter_channels)
        audio = dec.run(None, {"m_p": m, "logs_p": logs, "noise_z": nz, "scales": sc})[0].reshape(-1)
        ref, ref_dur = model.synthesize(ids[0].tolist(), float(sc[0]), float(sc[1]), float(sc[2]),
                                        torch.from_numpy(nwz), torch.from_numpy(nz), return_durations=True)
        same = bool(np.array_equal(dur[0], ref_dur.numpy()))
        err = float(np.abs(audio - ref.numpy()).max()) if same and audio.shape == tuple(ref.shape) else float("inf")
        cases.append({"phonemes": n, "frames": int(m.shape[2]), "durations_equal": same, "max_abs_err": err})
    worst = max(c["max_abs_err"] for c in cases)
    return {"tolerance": TOLERANCE, "scales": [round(float(s), 6) for s in sc], "max_abs_err": worst,
            "passed": bool(worst <= TOLERANCE), "cases": cases}


def _manifest(model: Vits, validation, history, graph_info) -> Dict[str, Any]:
    cfg = model.config
    return {
        "family": "vits", "task": "tts", "config": cfg.to_dict(), "sample_rate": cfg.sample_rate,
        "mel": {"sample_rate": cfg.sample_rate, "n_fft": cfg.filter_length, "hop_length": cfg.hop_length,
                "win_length": cfg.win_length, "n_mels": cfg.mel_channels, "fmin": cfg.mel_fmin, "fmax": cfg.mel_fmax},
        "precision": "float32", "opset": OPSET, "graphs": {"encoder": MODEL_FILE, "decoder": DECODER_FILE},
        "io": _io(cfg), "hop_length": cfg.hop_length, "inter_channels": cfg.inter_channels,
        "num_symbols": cfg.num_symbols, "phoneme_id_map": cfg.phoneme_id_map, "phoneme_type": cfg.phoneme_type,
        "espeak": {"voice": cfg.espeak_voice},
        "inference": {"noise_scale": cfg.noise_scale, "length_scale": cfg.length_scale, "noise_w": cfg.noise_w},
        "noise": {"duration": "numpy default_rng([seed, 0, 1]).standard_normal(2*N, float32).reshape(1, 2, N)",
                  "prior": "edgeflow.core.noise.noise(seed, start_frame, n_frames, C) reshaped [1, n, C] -> "
                           "transposed [1, C, n]"},
        "streaming": {"receptive_field": receptive_field(cfg), "context_frames": receptive_field(cfg)},
        "history": list(history or []), "validation": validation,
        "export": dict(graph_info, exporter="torch.onnx TorchScript (dynamo=False)", torch=torch.__version__),
    }


def export_vits_bundle(model: Vits, out_dir: str | Path, history: Optional[List[Dict[str, Any]]] = None,
                       overwrite: bool = False, phase_form: bool = True) -> Dict[str, Any]:
    """Export a single-speaker VITS model (left untouched) as a validated two-graph bundle.

    Args:
        phase_form: write the decoder's ConvTranspose upsamplers as polyphase Convs
            (:func:`edgeflow.models.polyphase.to_phase_form`, exact): 5.7% faster HiFi-GAN decoder in float32 on
            this project's CPU at 1 thread (joe voice, 400 frames, 2026-12-02); parity is checked against the
            unrewritten model either way.

    Raises:
        BundleError: ``out_dir`` exists and overwrite is False.
        ConfigError: a multi-speaker model (speaker input not exported yet).
        ExportValidationError: onnxruntime disagrees with PyTorch beyond :data:`TOLERANCE`.
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists (pass overwrite / --overwrite to replace it)")
    if model.config.n_speakers > 1:
        raise ConfigError("exporting multi-speaker VITS models is not supported yet")
    reference = copy.deepcopy(model).cpu().float().eval()
    frozen = copy.deepcopy(reference)
    remove_weight_norm(frozen)
    if phase_form:
        from edgeflow.models.polyphase import to_phase_form

        to_phase_form(frozen.dec)
    frozen.requires_grad_(False)
    cfg = reference.config
    n = 11
    ids = torch.from_numpy(_example_ids(cfg, n, 0))
    scales = torch.tensor([cfg.noise_scale, cfg.length_scale, cfg.noise_w], dtype=torch.float32)
    nwz = torch.from_numpy(duration_noise(0, n))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with torch.no_grad():
            m, logs, _ = EncoderGraph(frozen)(ids, torch.tensor([n]), scales, nwz)
            _export(EncoderGraph(frozen), (ids, torch.tensor([n]), scales, nwz), tmp / MODEL_FILE, ENC_IN, ENC_OUT,
                    {"input": {1: "N"}, "noise_w_z": {2: "N"}, "m_p": {2: "F"}, "logs_p": {2: "F"},
                     "durations": {1: "N"}})
            nz = torch.from_numpy(prior_noise(0, 0, m.shape[2], cfg.inter_channels))
            _export(DecoderGraph(frozen), (m, logs, nz, scales), tmp / DECODER_FILE, DEC_IN, DEC_OUT,
                    {"m_p": {2: "F"}, "logs_p": {2: "F"}, "noise_z": {2: "F"}, "audio": {2: "T"}})
        so = session_options(threads=1)
        enc = ort.InferenceSession(str(tmp / MODEL_FILE), so, providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(str(tmp / DECODER_FILE), so, providers=["CPUExecutionProvider"])
        validation = validate_parity(enc, dec, reference, scales.tolist())
        if not validation["passed"]:
            raise ExportValidationError(f"VITS export failed validation: max abs error {validation['max_abs_err']:.3g} "
                                        f"above {TOLERANCE} (cases {validation['cases']})")
        info = {"bytes": {f: (tmp / f).stat().st_size for f in (MODEL_FILE, DECODER_FILE)},
                "seconds": round(time.perf_counter() - t0, 2),
                "decoder_upsamplers": "polyphase conv" if phase_form else "ConvTranspose"}
        manifest = write_manifest(tmp, _manifest(reference, validation, history, info))
    return manifest

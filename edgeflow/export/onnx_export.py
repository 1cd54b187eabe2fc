"""torch -> ONNX export of the synthesis graph, validated, written as a bundle (see edgeflow.runtime.bundle).

``export_bundle`` freezes and fuses a copy of the model (``fuse_for_export``), traces the family's
synthesis wrapper with the TorchScript exporter (``dynamo=False``), sets an IR version the installed
onnxruntime reads, runs ``onnx.checker``, checks onnxruntime against the PyTorch inverse on the same z
at three lengths, picks the streaming context, and writes ``model.onnx`` + ``manifest.json`` into a
directory that appears only when everything passed (``atomic_dir``).
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from edgeflow.core.errors import BundleError
from edgeflow.core.io import atomic_dir
from edgeflow.export.freeze import freeze_model, fuse_for_export
from edgeflow.export.specs import ExportSpec, get_spec
from edgeflow.runtime.bundle import MODEL_FILE, write_manifest

#: Streaming context is grown until stitched audio is this close to whole synthesis (dB).
STREAM_TARGET_SNR_DB = 50.0
STREAM_CHUNK_FRAMES = 16


class ExportValidationError(BundleError):
    """The exported graph does not reproduce the PyTorch model within the spec's tolerance."""


@functools.lru_cache(maxsize=None)
def runtime_ir_version() -> int:
    """The highest ONNX IR version (<= the installed onnx's) the installed onnxruntime loads, probed on a
    tiny graph. The exported graph's IR version is capped at it (onnx may write newer IR than ORT reads)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for ir in range(onnx.IR_VERSION, 6, -1):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = ir
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 8 if onnx.IR_VERSION >= 8 else onnx.IR_VERSION


def export_onnx(frozen: torch.nn.Module, spec: ExportSpec, path: str | Path) -> Dict[str, int]:
    """Trace the synthesis wrapper of a frozen model to ``path`` and make it loadable and checked.

    Returns:
        Graph size and IR version: {"nodes", "initializers", "bytes", "ir_version"}.
    """
    import onnx

    cfg = frozen.config
    frames = 8 * _frame_multiple(frozen)
    wrapper = spec.wrapper(frozen).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, spec.example_inputs(cfg, frames), str(path), input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes(cfg.mel.hop_length),
                          opset_version=spec.opset, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, runtime_ir_version())
    onnx.checker.check_model(model)
    try:  # symbolic shapes in value_info: without them onnxruntime's load is quadratic in the Conv count
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, logger  # (~15 min -> 15 s, demo)

        logger.setLevel("ERROR")
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - an op it does not know: the graph still loads, only slower
        pass
    onnx.save(model, str(path))
    return {"nodes": len(model.graph.node), "initializers": len(model.graph.initializer),
            "bytes": Path(path).stat().st_size, "ir_version": int(model.ir_version)}


def _frame_multiple(model) -> int:
    return int(model.length_multiple // model.hop_length)


def _jsonable(obj: Any) -> Any:
    """A JSON round-trip of ``obj`` (numbers that are tensors or numpy scalars become plain values / strings)."""
    import json

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def validate_parity(session, reference: torch.nn.Module, spec: ExportSpec, frame_multiple: int,
                    batch: int = 2) -> Dict[str, Any]:
    """onnxruntime vs PyTorch ``reference.inverse(z * sigma, mel)`` on the same inputs, per length.

    Returns:
        {"tolerance", "passed", "lengths": [{"frames", "batch", "max_abs_err", "max_abs_audio", "passed"}]}.
    """
    cfg = reference.config
    rows = []
    for n in spec.validation_frames:
        frames = _round_up(n, frame_multiple)
        mel, z, sigma = spec.example_inputs(cfg, frames, batch=batch, seed=n)
        with torch.no_grad():
            ref = reference.inverse(z * sigma, mel)[0].numpy()
        out = session.run(None, dict(zip(spec.input_names, (mel.numpy(), z.numpy(), sigma.numpy()))))[0]
        finite = bool(np.all(np.isfinite(ref)) and np.all(np.isfinite(out)) and out.shape == ref.shape)
        err = float(np.max(np.abs(out - ref))) if finite else float("nan")
        ok = finite and err < spec.tolerance
        rows.append({"frames": frames, "batch": batch, "max_abs_err": err if finite else None,
                     "max_abs_audio": float(np.max(np.abs(ref))) if np.all(np.isfinite(ref)) else None,
                     "passed": ok})
    return {"tolerance": spec.tolerance, "passed": all(r["passed"] for r in rows), "lengths": rows,
            "reference": "PyTorch inverse of the unfrozen model, same mel, z and sigma"}


def _test_mel(cfg, frames: int) -> np.ndarray:
    """A speech-like log-mel [n_mels, frames] from the numpy front-end: gliding harmonics + noise bursts."""
    from edgeflow.audio.mel import log_mel

    sr, n = cfg.mel.sample_rate, frames * cfg.mel.hop_length
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t) ** 2)
    audio = 0.1 * audio + 0.02 * rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t) > 0.6)
    return log_mel(audio.astype(np.float32), cfg.mel)


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return 200.0 if noise == 0 else min(200.0, 10 * math.log10(max(signal, 1e-30) / noise))


def choose_stream_context(synth, config: Any, field: Dict[str, int], frame_multiple: int,
                          check: bool = True) -> Dict[str, Any]:
    """Smallest verified streaming context, starting from the one-pass receptive field.

    The context doubles (up to the worst-case bound ``field["left"/"right"]``) until streaming a
    speech-like mel in chunks of 16 frames matches whole synthesis with SNR >= 50 dB. With
    ``check=False`` the one-pass field is taken unverified (``check`` is then None).

    Args:
        synth: a runtime Synthesizer over the exported graph.
        config: the model config (front-end of the test mel).
        field: the spec's receptive field (frames).
        frame_multiple: chunk sizes are rounded up to this.

    Returns:
        The manifest's ``streaming`` section.
    """
    left, right = field["net_left"], field["net_right"]
    chunk = _round_up(STREAM_CHUNK_FRAMES, frame_multiple)
    tried = []
    if not check:
        return {"receptive_field_frames": dict(field), "context_frames": {"left": left, "right": right},
                "check": None}
    while True:
        frames = left + right + 3 * chunk
        mel = _test_mel(config, frames)
        whole = synth.synthesize(mel, seed=0)
        pieces = [mel[:, i:i + chunk] for i in range(0, frames, chunk)]
        streamed = np.concatenate(list(synth.synthesize_stream(pieces, seed=0, left_context=left,
                                                               right_context=right)))
        snr = _snr_db(whole, streamed)
        tried.append({"left": left, "right": right, "snr_db": round(snr, 2)})
        if snr >= STREAM_TARGET_SNR_DB or (left >= field["left"] and right >= field["right"]):
            break
        left, right = min(2 * left, field["left"]), min(2 * right, field["right"])
    return {"receptive_field_frames": dict(field), "context_frames": {"left": left, "right": right},
            "check": {"target_snr_db": STREAM_TARGET_SNR_DB, "chunk_frames": chunk, "tried": tried}}


def export_bundle(model: torch.nn.Module, out_dir: str | Path, history: Optional[List[Dict[str, Any]]] = None,
                  overwrite: bool = False, cached: bool = True, check_streaming: bool = True) -> Dict[str, Any]:
    """Export ``model`` (left untouched) as a validated bundle directory.

    Args:
        model: a FlowVocoder (any device; exported on CPU in float32).
        out_dir: the bundle directory to create.
        history: passes applied to the model so far (from the checkpoint info), kept in the manifest.
        overwrite: replace an existing bundle (only once the new one is complete).
        cached: WaveFlow: put the cached row-by-row inverse in the graph (False: the plain h^2 one).
        check_streaming: verify the streaming context by synthesis (False: take the one-pass
            receptive field unverified; for quick benchmark bundles).

    Returns:
        The manifest written.

    Raises:
        BundleError: ``out_dir`` exists and overwrite is False.
        ExportValidationError: onnxruntime disagrees with PyTorch beyond the spec's tolerance.
    """
    import onnxruntime as ort

    from edgeflow.runtime.synthesizer import Synthesizer, session_options

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists (pass overwrite / --overwrite to replace it)")
    spec = get_spec(model.family)
    reference = copy.deepcopy(model).cpu().float().eval()
    if hasattr(reference, "set_cached"):
        reference.set_cached(cached)
    frozen = fuse_for_export(freeze_model(copy.deepcopy(reference)))
    cfg, fm = reference.config, _frame_multiple(reference)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        graph = export_onnx(frozen, spec, tmp / MODEL_FILE)
        session = ort.InferenceSession(str(tmp / MODEL_FILE), sess_options=session_options(nodes=graph["nodes"]),
                                       providers=["CPUExecutionProvider"])
        validation = validate_parity(session, reference, spec, fm)
        if not validation["passed"]:
            errs = ", ".join(f"{r['frames']} frames: {r['max_abs_err']}" for r in validation["lengths"])
            raise ExportValidationError(f"export of the {model.family} model failed validation: onnxruntime vs "
                                        f"PyTorch max abs error ({errs}) above {spec.tolerance}")
        manifest = {
            "family": model.family, "config": cfg.to_dict(), "sample_rate": cfg.mel.sample_rate,
            "mel": cfg.mel.to_dict(), "precision": "float32", "opset": spec.opset,
            "io": dict(spec.io_spec(cfg), frame_multiple=fm), "history": _jsonable(list(history or [])),
            "validation": validation,
        }
        synth = Synthesizer(session, dict(manifest, streaming={"context_frames": {"left": 0, "right": 0}}))
        manifest["streaming"] = choose_stream_context(synth, cfg, spec.receptive_field(cfg), fm, check_streaming)
        manifest["export"] = {"exporter": "torch.onnx TorchScript (dynamo=False)", "torch": torch.__version__,
                              "onnx": __import__("onnx").__version__, "onnxruntime": ort.__version__,
                              "cached": cached if hasattr(model, "set_cached")
                              else None, "graph": graph, "seconds": round(time.perf_counter() - t0, 2)}
        manifest = write_manifest(tmp, manifest)
    return manifest

"""torch -> ONNX export of the synthesis graph, validated, written as a bundle (format: edgeflow.core.bundle_format).

``export_bundle`` freezes and fuses a copy of the model (the family's ``freeze`` / ``fuse`` hooks), traces the
family's synthesis wrapper with the TorchScript exporter (``dynamo=False``), sets an IR version the installed
onnxruntime reads, runs ``onnx.checker``, checks onnxruntime against the PyTorch inverse on the same z
at three lengths, sets the streaming context (the one-pass receptive field, or what a ``stream_context``
callback verified: :func:`edgeflow.validate.export.export_bundle` passes one that streams through the
runtime), and writes ``model.onnx`` + ``manifest.json`` into a directory that appears only when everything
passed (``atomic_dir``). Nothing here imports the runtime.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from edgeflow.core.bundle_format import MODEL_FILE, write_manifest
from edgeflow.core.errors import BundleError
from edgeflow.core.io import atomic_dir
from edgeflow.core.ort import session_options
from edgeflow.export.specs import ExportSpec, get_spec
from edgeflow.models.family import get_family

#: ``stream_context(session, manifest, field, frame_multiple) -> the manifest's streaming section``.
StreamContext = Callable[[Any, Dict[str, Any], Dict[str, int], int], Dict[str, Any]]


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
    from edgeflow.export.dedup import dedup_constants

    dedup_constants(model)          # one Constant per distinct value (the unrolled inverse repeats them)
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
    """onnxruntime vs PyTorch (``reference.inverse(z * sigma, mel)``; :meth:`ExportSpec.reference`) on the same
    inputs, per length.

    Returns:
        {"tolerance", "passed", "lengths": [{"frames", "batch", "max_abs_err", "max_abs_audio", "passed"}]}.
    """
    cfg = reference.config
    rows = []
    for n in spec.validation_frames:
        frames = _round_up(n, frame_multiple)
        inputs = spec.example_inputs(cfg, frames, batch=batch, seed=n)
        with torch.no_grad():
            ref = spec.reference(reference, inputs).numpy()
        out = session.run(None, dict(zip(spec.input_names, (t.numpy() for t in inputs))))[0]
        finite = bool(np.all(np.isfinite(ref)) and np.all(np.isfinite(out)) and out.shape == ref.shape)
        err = float(np.max(np.abs(out - ref))) if finite else float("nan")
        ok = finite and err < spec.tolerance
        rows.append({"frames": frames, "batch": batch, "max_abs_err": err if finite else None,
                     "max_abs_audio": float(np.max(np.abs(ref))) if np.all(np.isfinite(ref)) else None,
                     "passed": ok})
    return {"tolerance": spec.tolerance, "passed": all(r["passed"] for r in rows), "lengths": rows,
            "reference": ("PyTorch inverse of the unfrozen model, same mel, z and sigma" if spec.has_noise else
                          "PyTorch forward of the unfrozen model, same mel")}


def one_pass_context(field: Dict[str, int]) -> Dict[str, Any]:
    """The manifest's ``streaming`` section from the one-pass receptive field, unverified (``check`` None)."""
    return {"receptive_field_frames": dict(field),
            "context_frames": {"left": field["net_left"], "right": field["net_right"]}, "check": None}


def export_bundle(model: torch.nn.Module, out_dir: str | Path, history: Optional[List[Dict[str, Any]]] = None,
                  overwrite: bool = False, cached: bool = True,
                  stream_context: Optional[StreamContext] = None) -> Dict[str, Any]:
    """Export ``model`` (left untouched) as a validated bundle directory.

    Args:
        model: a FlowVocoder (any device; exported on CPU in float32).
        out_dir: the bundle directory to create.
        history: passes applied to the model so far (from the checkpoint info), kept in the manifest.
        overwrite: replace an existing bundle (only once the new one is complete).
        cached: WaveFlow: put the cached row-by-row inverse in the graph (False: the plain h^2 one).
        stream_context: ``(onnxruntime session, manifest so far, receptive field, frame multiple) ->``
            the manifest's ``streaming`` section; None: the one-pass receptive field, unverified.

    Returns:
        The manifest written.

    Raises:
        BundleError: ``out_dir`` exists and overwrite is False.
        ExportValidationError: onnxruntime disagrees with PyTorch beyond the spec's tolerance.
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists (pass overwrite / --overwrite to replace it)")
    family = get_family(model)
    spec = get_spec(family.name)
    reference = copy.deepcopy(model).cpu().float().eval()
    family.set_cached(reference, cached)
    frozen = family.fuse(family.freeze(copy.deepcopy(reference)))
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
        field = spec.receptive_field(cfg)
        manifest["streaming"] = (stream_context(session, manifest, field, fm) if stream_context
                                 else one_pass_context(field))
        manifest["export"] = {"exporter": "torch.onnx TorchScript (dynamo=False)", "torch": torch.__version__,
                              "onnx": __import__("onnx").__version__, "onnxruntime": ort.__version__,
                              "cached": cached if family.has_cached_inverse else None, "graph": graph,
                              "seconds": round(time.perf_counter() - t0, 2)}
        manifest = write_manifest(tmp, manifest)
    return manifest

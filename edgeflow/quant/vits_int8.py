"""Coupling-aware INT8 (and FP16) for the two graphs of a VITS bundle, with onnxruntime.quantization.

What is quantized (explicit Q/DQ, ``quantize_static`` in QDQ format, weights int8 per output channel,
activations uint8 so onnxruntime's x86 kernels fuse DQ-Conv-Q into QLinearConv):

- decoder.onnx: the HiFi-GAN convolutions (nodes under ``/dec/``; its ConvTranspose upsamplers only once
  rewritten as a Conv over a polyphase split, :mod:`edgeflow.export.vits_polyphase`);
- model.onnx: the text encoder's transformer (``/enc_p/encoder/``: the 1x1 q/k/v/o and FFN convs and the
  attention MatMuls).

Everything else stays float: the prior coupling flow (WN convs, ``exp(logs)``, the affine update), the
stochastic duration predictor's spline flows, the duration arithmetic (exp, ceil, cumsum, path
expansion) and the stats projection ``/enc_p/proj`` whose ``logs`` feeds an exp. :func:`select_nodes`
states it; the pass records the lists.

Calibration: the caller provides the feeds (the calibration sentences' ids and their noise for the
encoder; the float encoder's m_p / logs_p with their prior noise for the decoder).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from edgeflow.core.errors import ConfigError

#: Per graph role: (regex of the node names that may be quantized, op types).
QUANTIZABLE = {"decoder": (r"^/dec/", ("Conv", "ConvTranspose")),
               "encoder": (r"^/enc_p/encoder/", ("Conv", "MatMul"))}
#: Kept float by default in every recipe: the decoder's last conv (1 channel, straight into tanh: the
#: waveform itself).
DEFAULT_EXCLUDE = ("/dec/conv_post/",)
#: Op types kept float32 in an FP16 graph (overflow / precision of the flow arithmetic and durations).
FP16_KEEP_OPS = ["Exp", "Log", "Ceil", "CumSum", "ReduceSum", "Softplus", "Pow", "Sqrt", "Erf", "Softmax"]


def select_nodes(model, role: str, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                 quantize_conv_transpose: bool = False) -> Dict[str, List[str]]:
    """Split the graph's Conv/MatMul nodes into ``quantize`` and ``float`` (with the reason per node).

    Args:
        model: the onnx ModelProto of one bundle graph.
        role: "encoder" or "decoder".
        exclude: regexes of node names kept float in addition.
        quantize_conv_transpose: also Q/DQ a ConvTranspose (onnxruntime runs it float anyway on x86).

    Returns:
        {"quantize": [node names], "float": [node names], "reasons": {node: why float}}.
    """
    pattern, ops = QUANTIZABLE[role]
    out: Dict[str, Any] = {"quantize": [], "float": [], "reasons": {}}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        why = None
        if not re.search(pattern, node.name):
            why = "flow / duration arithmetic (coupling-aware: kept float)"
        elif node.op_type not in ops:
            why = f"{node.op_type} not quantized in the {role}"
        elif node.op_type == "ConvTranspose" and not quantize_conv_transpose:
            why = "ConvTranspose (no int8 kernel here: use the polyphase form)"
        elif any(re.search(p, node.name) for p in exclude):
            why = "excluded by the recipe"
        if why:
            out["float"].append(node.name)
            out["reasons"][node.name] = why
        else:
            out["quantize"].append(node.name)
    return out


def residual_adds(model, quantized: Iterable[str]) -> List[str]:
    """Names of the decoder's HiFi-GAN resblock Adds whose convs are all in ``quantized``
    (:func:`edgeflow.quant.graph.resblock_adds` over ``/dec/resblocks.N/``): with Q/DQ on the residual stream
    onnxruntime runs them (and the LeakyRelus between) on uint8. The flows' Adds never qualify."""
    from edgeflow.quant.graph import resblock_adds

    return [n.name for n in resblock_adds(model, quantized, r"^/dec/resblocks\.(\d+)/")]


def stage_sum_adds(model, resblock_adds: Iterable[str]) -> List[str]:
    """Names of the decoder's Adds that sum an upsampling stage's resblocks (HiFi-GAN's ``xs += resblock(x)``,
    exported as ``/dec/Add``, ``/dec/Add_1``, ...) where every input is the output of a resblock Add in
    ``resblock_adds`` (:func:`residual_adds`: the block is fully quantized) or of another such sum."""
    ok, out = set(resblock_adds), []
    prod = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:                                  # topological: a sum's inputs come first
        if n.op_type == "Add" and re.match(r"^/dec/Add(_\d+)?$", n.name) and \
                all(i in prod and prod[i].name in ok for i in n.input):
            ok.add(n.name)
            out.append(n.name)
    return out


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: Iterable[Dict[str, np.ndarray]]):
        self._it = iter(list(feeds))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)


def quantize_graph(src: Path, dst: Path, role: str, feeds: Sequence[Dict[str, np.ndarray]], method: str = "minmax",
                   exclude: Sequence[str] = DEFAULT_EXCLUDE, per_channel: bool = True,
                   symmetric_activations: bool = False, residual: bool = False,
                   stage_sums: bool = False) -> Dict[str, Any]:
    """INT8 (QDQ) version of one bundle graph. Returns what was quantized, what stayed float, the seconds.

    Args:
        src, dst: the float graph and where to write the QDQ graph.
        role: "encoder" or "decoder" (:func:`select_nodes`).
        feeds: calibration inputs of that graph.
        method: minmax | percentile | entropy (onnxruntime's calibrators).
        exclude: node-name regexes kept float.
        per_channel: int8 weights per output channel (symmetric).
        symmetric_activations: int8 symmetric activations (TensorRT) instead of uint8 asymmetric (x86 ORT).
        residual: decoder only: also Q/DQ the residual Adds of fully quantized resblocks (:func:`residual_adds`).
        stage_sums: with ``residual``, also the Adds summing those resblocks per stage (:func:`stage_sum_adds`).

    Raises:
        ConfigError: an unknown calibration method, or no feeds.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ConfigError(f"quantize: unknown calibration method {method!r} (known: {', '.join(methods)})")
    if not feeds:
        raise ConfigError("quantize: no calibration feeds")
    t0 = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    sel = select_nodes(model, role, exclude)
    adds = residual_adds(model, sel["quantize"]) if residual and role == "decoder" else []
    sums = stage_sum_adds(model, adds) if stage_sums and adds else []
    adds = adds + sums
    extra = {"WeightSymmetric": True, "ActivationSymmetric": symmetric_activations}
    if method == "percentile":
        extra.update(CalibPercentile=99.999)
    with quiet_ort():
        quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZABLE[role][1]) + (["Add"] if adds else []),
                        nodes_to_quantize=sel["quantize"] + adds,
                        per_channel=per_channel,
                        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method], extra_options=extra)
    fix_ir(dst)
    return {"quantized": sel["quantize"], "residual_adds": len(adds) - len(sums), "stage_sum_adds": len(sums),
            "float": sel["float"],
            "float_reasons": _reason_counts(sel["reasons"]),
            "method": method, "per_channel": per_channel,
            "activations": "int8 symmetric" if symmetric_activations else "uint8", "weights": "int8",
            "seconds": round(time.perf_counter() - t0, 2)}


def convert_graph_fp16(src: Path, dst: Path) -> Dict[str, Any]:
    """FP16 decoder graph: the HiFi-GAN (``/dec/``) in float16; the coupling flow, :data:`FP16_KEEP_OPS` and
    the graph's I/O stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    keep = [n.name for n in model.graph.node if not n.name.startswith("/dec/")]
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_OPS, node_block_list=keep)
    onnx.save(half, str(dst))
    fix_ir(dst)
    return {"float16": "/dec/ (HiFi-GAN)", "kept_float32_ops": FP16_KEEP_OPS, "kept_float32_nodes": len(keep)}


@contextlib.contextmanager
def quiet_ort():
    """Silence onnxruntime.quantization's root-logger warnings and its calibrators' prints."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _reason_counts(reasons: Dict[str, str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for why in reasons.values():
        counts[why] = counts.get(why, 0) + 1
    return counts


def fix_ir(path: Path) -> None:
    import onnx

    from edgeflow.export.onnx_export import runtime_ir_version

    m = onnx.load(str(path))
    if m.ir_version > runtime_ir_version():
        m.ir_version = runtime_ir_version()
        onnx.save(m, str(path))

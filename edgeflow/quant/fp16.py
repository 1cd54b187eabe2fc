"""FP16 variant of an exported flow graph for GPU targets (TensorRT strongly typed / CUDA).

The conditioning nets (upsampler, WaveNet layers) run in float16; the audio path stays float32:
the coupling ``end`` convs (log s, t), Exp, the affine update, the invertible 1x1 convs, the
row/channel assembly and any log-det reduction (:func:`edgeflow.quant.graph.audio_path`), plus
every Exp / Log / ReduceSum / Pow anywhere. Conversion is onnxruntime's
``transformers.float16.convert_float_to_float16`` (keep_io_types=True: the graph still takes and
returns float32). The result is run on the calibration set and refused if any output is NaN/Inf.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgeflow.quant.graph import DEFAULT_OP_TYPES, audio_path, classify, with_shapes
from edgeflow.quant.int8 import QuantizationError, compare, run_graph

#: Op types kept float32 wherever they appear (overflow or precision loss in float16).
FP32_OPS = ["Exp", "Log", "ReduceSum", "ReduceMean", "Pow", "Softplus"]


def convert_fp16(src: Path, dst: Path, feeds: List[Dict[str, np.ndarray]], mel_cfg: Any,
                 threads: Optional[int] = None, min_snr_db: Optional[float] = None,
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Write the FP16 graph of ``src`` to ``dst`` and check it on the calibration feeds.

    Returns:
        Details for the manifest: kept-float32 node counts by op type, quality vs float32.

    Raises:
        QuantizationError: NaN/Inf in any output, or SNR vs float32 below ``min_snr_db``.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from edgeflow.export.onnx_export import runtime_ir_version

    t0 = time.time()
    model = onnx.load(str(src))
    for k, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"node_{k}"
    roles = classify(model, DEFAULT_OP_TYPES)
    keep = audio_path(model, roles, [i.name for i in model.graph.input if i.name not in ("mel",)])
    keep |= {n.name for n in model.graph.node if n.op_type in FP32_OPS}
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS,
                                    node_block_list=sorted(keep), disable_shape_infer=False)
    half.ir_version = min(half.ir_version, runtime_ir_version())
    _tidy(half)
    half = with_shapes(half)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    ref = run_graph(src, feeds, threads)
    outs = run_graph(dst, feeds, threads)
    bad = [i for i, o in enumerate(outs) if not np.all(np.isfinite(o))]
    if bad:
        raise QuantizationError(f"the float16 graph produced NaN/Inf on {len(bad)} of {len(outs)} calibration "
                                f"utterances; keep float32 for this model")
    q = compare(ref, outs, mel_cfg)
    log(f"    fp16: SNR vs float32 {q['snr_db']:.1f} dB, log-mel L1 {q['mel_l1']:.4f} on {len(feeds)} clips")
    if min_snr_db is not None and q["snr_db"] < min_snr_db:
        raise QuantizationError(f"the float16 graph is {q['snr_db']:.1f} dB from float32 on the calibration set, "
                                f"below the budget of {min_snr_db} dB")
    ops = {n.name: n.op_type for n in model.graph.node}
    kept: Dict[str, int] = {}
    for name in keep:
        kept[ops.get(name, "?")] = kept.get(ops.get(name, "?"), 0) + 1
    return {"kept_float32": {"why": "audio path (coupling end convs, exp, affine update, 1x1 convs, log-det) and "
                                    + "/".join(FP32_OPS) + " ops: overflow/precision", "nodes_by_op": kept},
            "float16_nodes": len(model.graph.node) - len(keep), "finite": True, "quality_vs_float": q,
            "seconds": round(time.time() - t0, 1)}


def _tidy(model) -> None:
    """Fix up the converter's output in place: skip float32 -> float16 -> float32 Cast round trips (they
    would round the noise input z), drop unused Casts, give duplicate node names a suffix, and sort the
    nodes topologically (onnx.checker requires it)."""
    from onnx import TensorProto

    from edgeflow.quant.qdq import _toposort

    g = model.graph
    prod = {o: n for n in g.node for o in n.output}

    def cast_to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    alias = {}
    for n in g.node:
        src = prod.get(n.input[0]) if n.input else None
        if cast_to(n) == TensorProto.FLOAT and src is not None and cast_to(src) == TensorProto.FLOAT16:
            origin = prod.get(src.input[0])
            if origin is None or cast_to(origin) != TensorProto.FLOAT16:
                alias[n.output[0]] = src.input[0]
    outputs = {o.name for o in g.output}
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    seen: Dict[str, int] = {}
    for n in g.node:
        if n.name in seen:
            seen[n.name] += 1
            n.name = f"{n.name}_{seen[n.name]}"
        else:
            seen[n.name] = 0
    order = _toposort(list(g.node), {i.name for i in g.input} | {t.name for t in g.initializer})
    del g.node[:]
    g.node.extend(order)

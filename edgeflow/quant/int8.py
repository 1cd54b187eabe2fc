"""Coupling-aware INT8 of an exported flow graph, on top of ``onnxruntime.quantization``.

onnxruntime owns the calibration math (MinMax / Percentile / Entropy / Distribution) and the QDQ
format (``quantize_static`` itself with ``engine="onnxruntime"``; the linear-time writer of
:mod:`edgeflow.quant.qdq` by default, see there why); this module owns the flow-specific choices:

1. Only Conv / ConvTranspose / MatMul / Gemm are quantized (never Exp, Mul, Add, Sub, Tanh, Sigmoid),
   weights int8 symmetric per output channel, activations symmetric (int8: zero point 0, what
   TensorRT needs; or uint8 with zero point 128 for onnxruntime's x86 u8s8 kernels).
2. Each coupling's ``end`` conv (it outputs log s and t) and the invertible 1x1 convs stay float,
   and with them the whole audio path (:func:`edgeflow.quant.graph.audio_path`).
3. Sensitivity: the calibration ranges are computed once (cached); then each remaining group of
   layers is quantized alone and its loss against the float graph is measured on the calibration
   set (SNR of the audio with the same noise, log-mel L1); the most harmful groups are kept in
   float, one at a time, until the budget holds.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import EdgeflowError
from edgeflow.quant.graph import DEFAULT_OP_TYPES, FLOAT_ROLES, classify, matches, residual_tensors, with_shapes

METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "distribution": "Distribution"}


class QuantizationError(EdgeflowError):
    """No quantized configuration meets the quality budget, or the quantized graph is unusable."""


class CalibReader:
    """``CalibrationDataReader`` over precomputed feeds, with the ``set_range``/``len`` that strided
    calibration uses (one utterance at a time keeps the augmented graph's outputs small)."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]):
        self.feeds, self.start, self.end, self.i = list(feeds), 0, len(feeds), 0

    def get_next(self):
        if self.start + self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.start + self.i - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.i = start_index, min(end_index, len(self.feeds)), 0


def run_graph(path: str | Path, feeds: Sequence[Dict[str, np.ndarray]], threads: Optional[int] = None,
              basic: bool = False) -> List[np.ndarray]:
    """Audio [T] of an ONNX synthesis graph for each feed (CPU).

    ``basic``: only basic graph optimizations (Q/DQ then run as quantize -> float op -> dequantize,
    numerically what the fused int8 kernels compute, and the session starts much faster).
    """
    import onnxruntime as ort

    from edgeflow.core.ort import session_options

    sess = ort.InferenceSession(str(path), sess_options=session_options(threads, basic=basic),
                                providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0][0].astype(np.float32) for f in feeds]


def compare(ref: Sequence[np.ndarray], outs: Sequence[np.ndarray], mel_cfg: Any) -> Dict[str, float]:
    """Mean SNR (dB, :func:`edgeflow.audio.snr.snr_db`, capped at its SNR_CAP_DB), worst SNR, and mean log-mel L1 of ``outs`` against ``ref``."""
    from edgeflow.audio.snr import log_mel_l1, snr_db

    snrs, l1s = [], []
    for r, o in zip(ref, outs):
        if not np.all(np.isfinite(o)):
            return {"snr_db": -math.inf, "snr_db_min": -math.inf, "mel_l1": math.inf, "finite": False}
        snrs.append(snr_db(r, o))
        l1s.append(log_mel_l1(r, o, mel_cfg))
    return {"snr_db": round(float(np.mean(snrs)), 2), "snr_db_min": round(float(np.min(snrs)), 2),
            "mel_l1": round(float(np.mean(l1s)), 4), "finite": True}


def within(q: Dict[str, float], min_snr_db: Optional[float], max_mel_l1: Optional[float]) -> bool:
    """Whether measured quality ``q`` meets the budget (None: that bound is not checked)."""
    return bool(q.get("finite", True) and (min_snr_db is None or q["snr_db"] >= min_snr_db)
                and (max_mel_l1 is None or q["mel_l1"] <= max_mel_l1))


def quantize_nodes(src: Path, dst: Path, nodes: List[str], cfg: Any, reader: CalibReader, cache: Path) -> Path:
    """``quantize_static`` of ``nodes`` only (explicit QDQ), with calibration ranges cached in ``cache``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeflow.export.onnx_export import runtime_ir_version

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1}
    if not cfg.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(cfg.op_types)
    act = QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)                    # quantize_static logs pre-processing advice at WARNING
    try:
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(cfg.op_types),
                        per_channel=cfg.per_channel, activation_type=act, weight_type=QuantType.QInt8,
                        nodes_to_quantize=list(nodes), calibrate_method=getattr(CalibrationMethod, METHODS[cfg.method]),
                        extra_options=extra, calibration_cache_path=str(cache))
    finally:
        root.setLevel(level)
    model = onnx.load(str(dst))
    rewired = _float_readers_back(model, set(nodes), set(cfg.op_types))
    if model.ir_version > runtime_ir_version() or rewired:
        model.ir_version = min(model.ir_version, runtime_ir_version())
        onnx.save(model, str(dst))
    return dst


def _float_readers_back(model, quantized: set, op_types: set) -> int:
    """Give float nodes of ``op_types`` their float inputs back; returns how many inputs were rewired.

    ``quantize_static`` shares one Q/DQ pair among all readers of a tensor when only one reader is
    quantized (``DedicatedQDQPair`` applies to two or more), so a float conv reading the same tensor (a
    fused WaveFlow layer's gate output feeds the int8 res conv and the float ``skip_end``) would read
    int8-rounded data. edgeflow's own writer never does this.
    """
    prod = {o: n for n in model.graph.node for o in n.output}
    count = 0
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in quantized:
            continue
        dq = prod.get(node.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            count += 1
    return count


def coupling_aware_int8(src: Path, dst: Path, feeds: List[Dict[str, np.ndarray]], mel_cfg: Any, cfg: Any,
                        work: Path, threads: Optional[int] = None, log: Callable[[str], None] = print
                        ) -> Dict[str, Any]:
    """Quantize ``src`` to ``dst``: coupling-aware exclusions, then (``cfg.sensitivity``) the greedy search.

    Args:
        src, dst: float ONNX graph in, QDQ graph out.
        feeds: calibration inputs ({mel, z, sigma} per utterance).
        mel_cfg: the model's MelConfig (for log-mel L1).
        cfg: the quantize pass config (see :class:`edgeflow.passes.quantize.QuantizeConfig`).
        work: scratch directory (calibration cache, trial graphs).

    Returns:
        Details for the manifest: kept-float layers with reasons and numbers, trials, final quality.

    Raises:
        QuantizationError: no tried configuration meets the budget.
    """
    import onnx

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = with_shapes(onnx.load(str(src)))        # value_info: fast session loads for every trial
    src = work / "float.onnx"
    onnx.save(model, str(src))
    roles = classify(model, cfg.op_types)
    float_keep, groups = _layer_groups(roles, cfg)
    build = _builder(model, src, [n for names in groups.values() for n in names], feeds, cfg, work, threads, log)
    ref = run_graph(src, feeds, threads)
    small = list(range(min(len(feeds), cfg.sensitivity_clips)))
    trials: List[Dict[str, Any]] = []

    def trial(names: List[str], label: str, clips: Sequence[int]) -> Dict[str, float]:
        path = build(names, work / "trial.onnx")
        q = compare([ref[i] for i in clips], run_graph(path, [feeds[i] for i in clips], threads, basic=True),
                    mel_cfg)
        trials.append({"quantized": label, "clips": len(clips), **q})
        log(f"    int8 [{label}] on {len(clips)} clips: SNR vs float {q['snr_db']:.1f} dB, "
            f"log-mel L1 {q['mel_l1']:.4f}")
        return q

    harm: Dict[str, Dict[str, float]] = {}
    if cfg.sensitivity:
        for g, names in groups.items():
            harm[g] = trial(names, f"{g} alone", small)
    names, kept = _greedy_float(groups, harm, lambda n, label: trial(n, label, range(len(feeds))), trials, cfg)
    build(names, dst)
    q = compare(ref, run_graph(dst, feeds, threads), mel_cfg)      # as the runtime will run it (fused kernels)
    final = onnx.load(str(dst))
    zps = _nonzero_zero_points(final) if cfg.activation_type == "int8" else []
    if zps:
        raise QuantizationError(f"quantized graph has non-zero zero points ({', '.join(zps[:3])})")
    structural = [{"node": r.name, "role": r.role, "reason": float_keep[r.name]} for r in roles if r.name in float_keep]
    searched = [{"group": g, "nodes": len(groups[g]), "reason": "sensitivity: among the most harmful groups when "
                 "quantized alone; kept float until the budget held", "quantized_alone": harm.get(g)} for g in kept]
    return _details(cfg, model, names, roles, groups, structural, searched, harm, trials, q, t0)


def _builder(model: Any, src: Path, candidates: List[str], feeds: List[Dict[str, np.ndarray]], cfg: Any,
             work: Path, threads: Optional[int], log: Callable[[str], None]) -> Callable[[List[str], Path], Path]:
    """Calibrate ``candidates`` once (edgeflow engine) and return ``build(names, path)``, which writes the graph
    with ``names`` in INT8 (edgeflow's Q/DQ insertion, or onnxruntime's quantize_static) and returns ``path``."""
    import onnx

    from edgeflow.quant.qdq import collect_ranges, insert_qdq, tensors_for

    ranges = None
    if cfg.engine == "edgeflow":
        log(f"    calibrating ({cfg.method}) {len(candidates)} layers on {len(feeds)} utterances ...")
        wanted = tensors_for(model, candidates, cfg.quantize_outputs)
        if cfg.residual:
            wanted |= residual_tensors(model, candidates)
        ranges = collect_ranges(model, wanted, feeds, cfg.method, threads)
    reader, cache = CalibReader(feeds), work / f"calibration-{cfg.method}.json"

    def build(names: List[str], path: Path) -> Path:
        if cfg.engine == "onnxruntime":
            return quantize_nodes(src, path, names, cfg, reader, cache)
        extra = residual_tensors(model, names) if cfg.residual else ()
        q, _ = insert_qdq(model, names, ranges, cfg.activation_type, cfg.per_channel, cfg.quantize_outputs, extra)
        onnx.save(q, str(path))
        return path

    return build


def _layer_groups(roles: List[Any], cfg: Any) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """(node -> why it stays float, group -> its quantizable nodes) of the classified layers ``roles``.

    Raises:
        QuantizationError: no layer left to quantize.
    """
    float_keep: Dict[str, str] = {}
    for r in roles:
        if r.role in cfg.keep_float_roles:
            float_keep[r.name] = FLOAT_ROLES.get(r.role, f"role {r.role} kept float by config")
        elif cfg.exclude and any(matches(x, cfg.exclude) for x in (r.name, r.role, r.group(cfg.group_by))):
            float_keep[r.name] = "excluded by config"
    groups: Dict[str, List[str]] = {}
    for r in roles:
        if r.name not in float_keep:
            groups.setdefault(r.group(cfg.group_by), []).append(r.name)
    if not groups:
        raise QuantizationError(f"nothing to quantize: no {'/'.join(cfg.op_types)} node outside the kept-float layers")
    return float_keep, groups


def _greedy_float(groups: Dict[str, List[str]], harm: Dict[str, Dict[str, float]],
                  trial: Callable[[List[str], str], Dict[str, float]], trials: List[Dict[str, Any]], cfg: Any
                  ) -> Tuple[List[str], List[str]]:
    """(quantized nodes, groups kept float): quantize every group, then keep the most harmful ones (by ``harm``,
    each group quantized alone) float one by one until ``trial`` of the rest meets the budget.

    Raises:
        QuantizationError: the budget fails with as many groups kept float as allowed.
    """
    order = sorted(harm, key=lambda g: (harm[g]["mel_l1"], -harm[g]["snr_db"]), reverse=True)
    limit = len(groups) - 1 if cfg.max_float_layers is None else min(cfg.max_float_layers, len(groups) - 1)
    kept: List[str] = []
    while True:
        names = [n for g in groups if g not in kept for n in groups[g]]
        q = trial(names, "all candidates" if not kept else f"all but {', '.join(kept)}")
        if within(q, cfg.min_snr_db, cfg.max_mel_l1):
            return names, kept
        if not cfg.sensitivity or len(kept) >= limit:
            tried = "; ".join(f"{t['quantized']}: {t['snr_db']:.1f} dB, L1 {t['mel_l1']:.3f}" for t in trials)
            raise QuantizationError(
                f"no INT8 configuration meets the budget (min SNR {cfg.min_snr_db} dB, max log-mel L1 "
                f"{cfg.max_mel_l1} vs float) with at most {limit} of the layer groups {', '.join(groups)} kept "
                f"float (coupling end convs and 1x1 convs always float); tried: {tried}")
        kept.append(order[len(kept)])


def _details(cfg: Any, model: Any, names: List[str], roles: List[Any], groups: Dict[str, List[str]],
             structural: List[Dict[str, Any]], searched: List[Dict[str, Any]], harm: Dict[str, Any],
             trials: List[Dict[str, Any]], q: Dict[str, float], t0: float) -> Dict[str, Any]:
    """The quantize pass's manifest details (see :func:`coupling_aware_int8`)."""
    return {
        "method": cfg.method, "engine": cfg.engine, "activation_type": cfg.activation_type, "weight_type": "int8",
        "symmetric": True, "per_channel": cfg.per_channel, "op_types": list(cfg.op_types),
        "quantize_outputs": cfg.quantize_outputs, "group_by": cfg.group_by,
        "residual_tensors": len(residual_tensors(model, names)) if cfg.residual else 0,
        "budget": {"min_snr_db": cfg.min_snr_db, "max_mel_l1": cfg.max_mel_l1},
        "quantized_nodes": len(names), "float_nodes": len(roles) - len(names),
        "groups": {g: len(v) for g, v in groups.items()},
        "kept_float": {"structural": _summarize(structural), "sensitivity": searched},
        "sensitivity": harm, "trials": trials, "quality_vs_float": q, "seconds": round(time.time() - t0, 1),
    }


def _summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Kept-float nodes grouped by (role, reason) with counts and a few names."""
    out: Dict[tuple, Dict[str, Any]] = {}
    for r in rows:
        e = out.setdefault((r["role"], r["reason"]), {"role": r["role"], "reason": r["reason"], "nodes": 0,
                                                        "examples": []})
        e["nodes"] += 1
        if len(e["examples"]) < 3:
            e["examples"].append(r["node"])
    return list(out.values())


def _nonzero_zero_points(model) -> List[str]:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and len(n.input) > 2 and n.input[2] in inits and numpy_helper.to_array(inits[n.input[2]]).any()]


__all__ = ["CalibReader", "QuantizationError", "compare", "coupling_aware_int8", "quantize_nodes", "run_graph",
           "within", "DEFAULT_OP_TYPES"]

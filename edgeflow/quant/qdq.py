"""Calibration ranges and explicit Q/DQ insertion that stay linear in the graph size.

The cached WaveFlow graph unrolls every row: the demo model's has ~20k nodes and ~1,900 convs.
``onnxruntime.quantization.quantize_static`` rewrites inputs by scanning every node for every tensor
(quadratic): it did not finish in 30 minutes on that graph here. So edgeflow keeps onnxruntime's
calibration *math* (``HistogramCollector`` for Percentile / Entropy / Distribution, ``compute_scale_zp``
and the symmetric int8/uint8 ranges of ``quant_utils``) and writes the same QDQ pattern itself in one pass:

* activation tensor t: ``QuantizeLinear(t) -> DequantizeLinear`` (symmetric: zero point 0 for int8,
  128 for uint8), one pair per tensor shared by its consumers;
* weight W: int8 symmetric per output channel (axis 0 for Conv, 1 for ConvTranspose / MatMul B),
  stored quantized with a ``DequantizeLinear``;
* bias b: int32 with scale ``s_x * s_w`` (what QLinearConv fusion needs);
* output y (``quantize_outputs``): a Q/DQ pair read by every consumer, so onnxruntime can fuse
  ``DQ -> Conv -> Q`` into QLinearConv.

Ranges are computed once for every candidate tensor, so sensitivity trials only re-run the cheap writer.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

Range = Tuple[float, float]


def tensors_for(model, nodes: Iterable[str], quantize_outputs: bool) -> Set[str]:
    """Activation tensors that quantizing ``nodes`` needs ranges for (non-constant inputs, and outputs)."""
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(nodes)
    out: Set[str] = set()
    for n in model.graph.node:
        if n.name in wanted:
            k = 2 if n.op_type == "MatMul" else 1
            out |= {i for i in n.input[:k] if i and i not in consts}
            if quantize_outputs:
                out.add(n.output[0])
    return out


def collect_ranges(model, tensors: Iterable[str], feeds: Sequence[Dict[str, np.ndarray]], method: str = "minmax",
                   threads: Optional[int] = None, percentile: float = 99.999) -> Dict[str, Range]:
    """Calibration range (lo, hi) of each tensor over the feeds, one utterance at a time.

    ``minmax``: extremes. ``percentile`` / ``entropy`` / ``distribution``: onnxruntime's
    ``HistogramCollector`` with the settings of its calibrators (2048 bins at 99.999 % for
    percentile; 128 bins otherwise).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgeflow.core.ort import session_options

    names = sorted(tensors)
    m = copy.deepcopy(model)
    present = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in names if t not in present)
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    lo: Dict[str, float] = {}
    hi: Dict[str, float] = {}
    collector = None
    if method != "minmax":
        bins = 2048 if method == "percentile" else 128
        collector = HistogramCollector(method, True, bins, 128, percentile, "same")
    for feed in feeds:
        values = dict(feed, **dict(zip(out_names, sess.run(out_names, feed))))
        batch = {t: values[t].astype(np.float32) for t in names if t in values and values[t].size}
        for t, v in batch.items():
            lo[t] = min(lo.get(t, np.inf), float(v.min()))
            hi[t] = max(hi.get(t, -np.inf), float(v.max()))
        if collector is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                collector.collect({t: [v] for t, v in batch.items()})
    if collector is None:
        return {t: (lo[t], hi[t]) for t in lo}
    with contextlib.redirect_stdout(io.StringIO()):
        result = collector.compute_collection_result()
    out = {}
    for t, v in result.items():
        r = v.range_value if hasattr(v, "range_value") else v
        out[t] = (float(r[0]), float(r[1]))
    return out


def _act_params(rng: Range, act_type: str) -> Tuple[float, int]:
    """(scale, zero point) of a symmetric activation range, as onnxruntime computes them."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qtype = TensorProto.UINT8 if act_type == "uint8" else TensorProto.INT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=True)
    zp, scale = compute_scale_zp(np.array(rng[0], np.float32), np.array(rng[1], np.float32), qmin, qmax,
                                 symmetric=True)
    return float(scale), int(zp)


def _weight_axis(node) -> int:
    if node.op_type == "ConvTranspose" or node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 0


class _QdqBuilder:
    """The new Q/DQ nodes and initializers of one :func:`insert_qdq` call (shared pairs per tensor)."""

    def __init__(self, inits: Dict[str, object], ranges: Dict[str, Range], act_type: str, per_channel: bool):
        self.inits, self.ranges, self.act_type, self.per_channel = inits, ranges, act_type, per_channel
        self.act_np = np.uint8 if act_type == "uint8" else np.int8
        self.nodes: List[object] = []
        self.new_inits: List[object] = []
        self.dq_of: Dict[str, str] = {}          # activation tensor -> its DequantizeLinear output
        self.scale_of: Dict[str, float] = {}
        self.w_cache: Dict[str, Tuple[str, np.ndarray]] = {}

    def _dq(self, base: str, arrays: Sequence[np.ndarray], **attrs) -> str:
        """Initializers {base}_quantized / _scale / _zero_point and their DequantizeLinear; its output name."""
        from onnx import helper, numpy_helper

        names = [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"]
        self.new_inits.extend(numpy_helper.from_array(a, n) for a, n in zip(arrays, names))
        self.nodes.append(helper.make_node("DequantizeLinear", names, [f"{base}_dq"], name=f"{base}_DequantizeLinear",
                                           **attrs))
        return f"{base}_dq"

    def act_pair(self, t: str) -> str:
        """The dequantized copy of activation ``t`` (a Q/DQ pair with its calibrated range, made once)."""
        from onnx import helper, numpy_helper

        if t not in self.dq_of:
            scale, zp = _act_params(self.ranges[t], self.act_type)
            s, z = f"{t}_qscale", f"{t}_qzero"
            self.new_inits.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                                   numpy_helper.from_array(np.array(zp, self.act_np), z)])
            self.nodes.append(helper.make_node("QuantizeLinear", [t, s, z], [f"{t}_q"], name=f"{t}_QuantizeLinear"))
            self.nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", s, z], [f"{t}_dq"],
                                               name=f"{t}_DequantizeLinear"))
            self.dq_of[t], self.scale_of[t] = f"{t}_dq", scale
        return self.dq_of[t]

    def weight(self, name: str, axis: int) -> Tuple[str, np.ndarray]:
        """(dequantized weight, its scales [out] or scalar): symmetric int8, per channel along ``axis``."""
        from onnx import numpy_helper

        if name not in self.w_cache:
            w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
            red = tuple(i for i in range(w.ndim) if i != axis)
            absmax = np.max(np.abs(w), axis=red) if self.per_channel else np.array(np.max(np.abs(w)))
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            shape = [-1 if i == axis else 1 for i in range(w.ndim)] if self.per_channel else [1] * w.ndim
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            attrs = {"axis": axis} if self.per_channel else {}
            self.w_cache[name] = (self._dq(name, [q, scale, np.zeros_like(scale, dtype=np.int8)], **attrs), scale)
        return self.w_cache[name]

    def bias(self, name: str, node_name: str, x: str, w_scale: np.ndarray) -> str:
        """The int32 bias of a conv reading activation ``x`` (scale = x's scale x the weight scales), dequantized."""
        from onnx import numpy_helper

        b = numpy_helper.to_array(self.inits[name]).astype(np.float64)
        bscale = (self.scale_of[x] * w_scale.astype(np.float64)) * np.ones_like(b)
        qb = np.clip(np.round(b / bscale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        return self._dq(f"{name}_{node_name}".replace("/", "_"), [qb, bscale.astype(np.float32), np.zeros_like(qb)],
                        axis=0)

    def quantize_node(self, node) -> bool:
        """Rewire ``node``'s activation, weight and (conv) bias through Q/DQ; False if it cannot be (no constant
        weight, an input without a range, or two activation inputs)."""
        k = 2 if node.op_type == "MatMul" else 1
        acts = [i for i in node.input[:k] if i not in self.inits]
        w_name = node.input[1] if len(node.input) > 1 and node.input[1] in self.inits else None
        if w_name is None or any(a not in self.ranges for a in acts) or len(acts) != 1:
            return False
        x = acts[0]
        node.input[0] = self.act_pair(x)
        node.input[1], w_scale = self.weight(w_name, _weight_axis(node))
        if len(node.input) > 2 and node.input[2] in self.inits and node.op_type in ("Conv", "ConvTranspose"):
            node.input[2] = self.bias(node.input[2], node.name, x, w_scale)
        return True


def insert_qdq(model, nodes: Iterable[str], ranges: Dict[str, Range], act_type: str = "int8",
               per_channel: bool = True, quantize_outputs: bool = True,
               extra: Iterable[str] = ()) -> Tuple[object, List[str]]:
    """A copy of ``model`` with ``nodes`` (Conv / ConvTranspose / MatMul / Gemm) in explicit QDQ, and a Q/DQ
    pair read by every consumer of each ``extra`` activation tensor that has a range (a HiFi-GAN's residual
    stream, :func:`edgeflow.quant.graph.residual_tensors`).

    Returns:
        (the QDQ model, names of the requested nodes left float for lack of a calibration range or
        of a constant weight).
    """
    m = copy.deepcopy(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    wanted = set(nodes)
    qb = _QdqBuilder(inits, ranges, act_type, per_channel)
    skipped: List[str] = []
    graph_outputs = {o.name for o in g.output}
    done_out: Set[str] = set()
    for node in g.node:
        if node.name not in wanted:
            continue
        if not qb.quantize_node(node):
            skipped.append(node.name)
            continue
        y = node.output[0]
        if quantize_outputs and y in ranges and y not in graph_outputs:
            done_out.add(y)
    done_out |= {t for t in extra if t in ranges and t not in graph_outputs}
    # Output pairs last: every consumer of y (but its own Q) reads the dequantized value.
    if done_out:
        pairs = {y: qb.act_pair(y) for y in done_out}
        for n in g.node:
            for i, name in enumerate(n.input):
                if name in pairs:
                    n.input[i] = pairs[name]
    # Inputs already rewired to a pair stay; pairs on outputs made after them are shared.
    g.initializer.extend(qb.new_inits)
    order = _toposort(list(g.node) + qb.nodes, {i.name for i in g.input} | set(inits) |
                      {t.name for t in qb.new_inits})
    del g.node[:]
    g.node.extend(order)
    used = {i for n in g.node for i in n.input} | {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m, skipped


def _toposort(nodes: List[object], available: Set[str]) -> List[object]:
    """Nodes in an order where every input is produced first (ONNX requires topological order)."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    deps = [{producer[i] for i in n.input if i and i in producer and producer[i] != k} for k, n in enumerate(nodes)]
    users: Dict[int, List[int]] = {}
    for k, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(k)
    remaining = [len(d) for d in deps]
    ready = [k for k, r in enumerate(remaining) if r == 0]
    out: List[int] = []
    while ready:
        k = ready.pop()
        out.append(k)
        for u in users.get(k, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(out) != len(nodes):
        raise RuntimeError("Q/DQ insertion produced a cycle")
    return [nodes[k] for k in out]

"""What each node of an exported flow graph is, for coupling-aware quantization.

The TorchScript exporter names node *weights* after the module that owns them
(``model.flows.blocks.3.inner.net.layers.2.skip_conv.weight``), while node names in the cached
WaveFlow graph are generic (``/Conv_17``); so a quantizable node (Conv, ConvTranspose, MatMul, Gemm)
is classified by its weight initializer's name, and a MatMul by a square constant operand:

* ``coupling_end`` - each coupling net's ``end`` conv (or, in a frozen WaveFlow net, each layer's
  ``skip_end``: its skip conv with the end conv folded in): it outputs (log s, t), which feed exp()
  and the affine update ``x = (z - t) * exp(-log s)``. Kept float.
* ``inv1x1`` - the invertible 1x1 convs (a MatMul by the frozen W^-1 in WaveGlow). Kept float.
* ``upsample``, ``cond``, ``start``, ``dilated``, ``res``, ``skip``, ``res_skip`` - the conditioning
  upsampler and the WaveNet layers: candidates for INT8.

A HiFi-GAN generator (``generator.conv_pre`` / ``ups.i`` / ``resblocks.j`` / ``conv_post`` weights) has no
coupling: ``pre`` (conv_pre), ``upsample`` (``ups.i``, a ConvTranspose or its phase-form Conv) and
``resblock`` (the multi-receptive-field convs) are candidates, grouped by upsampling stage (``flow`` is
``stage<i>``; conv_pre's is ``pre``), and ``waveform`` (conv_post: one output channel, straight into tanh:
the waveform itself) is kept float.

The elementwise coupling arithmetic (Exp, Neg, Sub, Mul, Add, Tanh, Sigmoid) and the log-det
reductions are never candidates: only the op types given are.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Iterable, List, Optional, Set

#: Roles kept in float by default, and why (written into the manifest).
FLOAT_ROLES = {
    "coupling_end": "outputs (log s, t): feeds exp(log s) and the affine update, where int8 error is amplified "
                    "exponentially and compounds over flows (and rows)",
    "inv1x1": "invertible 1x1 conv (W^-1): mixes every channel of the audio path itself, not a conditioning net",
    "waveform": "the last conv (to one channel, straight into tanh): its output is the waveform itself, so int8 "
                "error there is heard directly (and the 1-channel conv has no speed to gain)",
}
#: Quantizable op types by default.
DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: The coupling arithmetic: must never get Q/DQ of its own.
COUPLING_OPS = ("Exp", "Neg", "Sub", "Mul", "Add", "Tanh", "Sigmoid", "Div", "ReduceSum", "Log")

_NET = re.compile(r"^(?:model\.)?(?P<flow>.+?)\.net\.(?P<rest>.+)\.weight(?:_inv)?$")
_ROLES = [(re.compile(p), r) for p, r in (
    (r"^end$", "coupling_end"), (r"^layers\.\d+\.skip_end$", "coupling_end"), (r"^start$", "start"),
    (r"^layers\.\d+\.conv$", "dilated"),
    (r"^in_layers\.\d+$", "dilated"), (r"^layers\.\d+\.cond_conv$", "cond"), (r"^cond_layer$", "cond"),
    (r"^layers\.\d+\.res_conv$", "res"), (r"^layers\.\d+\.skip_conv$", "skip"),
    (r"^res_skip_layers\.\d+$", "res_skip"))]
_GENERATOR = re.compile(r"^(?:model\.)?generator\.(?:(?P<pre>conv_pre)|(?P<post>conv_post)|ups\.(?P<up>\d+)"
                        r"|resblocks\.(?P<rb>\d+))\.")


@dataclasses.dataclass
class NodeRole:
    """A quantizable node: ``name``, ``op_type``, ``role`` (see module doc), ``flow`` (owning coupling or
    None), ``weight`` (initializer name or None)."""

    name: str
    op_type: str
    role: str
    flow: Optional[str]
    weight: Optional[str]

    def group(self, by: str) -> str:
        """The sensitivity group: ``kind`` -> role, ``flow`` -> flow, ``flow_kind`` -> both."""
        if by == "kind" or self.flow is None:
            return self.role
        return self.flow if by == "flow" else f"{self.flow}/{self.role}"


def _short_flow(prefix: str) -> str:
    return prefix.replace(".inner", "").replace("flows.", "")


def _constants(model) -> Dict[str, List[int]]:
    """name -> shape of every initializer and Constant-node output."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def classify(model, op_types: Iterable[str] = DEFAULT_OP_TYPES) -> List[NodeRole]:
    """Roles of the nodes of ``model`` (an onnx.ModelProto) whose op type is in ``op_types``."""
    consts = _constants(model)
    init = {t.name for t in model.graph.initializer}
    out: List[NodeRole] = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        weight = next((i for i in node.input[1:2] if i in init), None)
        role, flow = "other", None
        if node.op_type in ("MatMul", "Gemm"):
            square = [i for i in node.input[:2] if i in consts and len(consts[i]) == 2
                      and consts[i][0] == consts[i][1]]
            if square or (weight and weight.endswith("weight_inv")):
                role, weight = "inv1x1", (square[0] if square else weight)
        if weight and role == "other":
            m = _NET.match(weight)
            g = _GENERATOR.match(weight)
            if m:
                flow = _short_flow(m.group("flow"))
                role = next((r for p, r in _ROLES if p.match(m.group("rest"))), "other")
            elif g:
                role = ("pre" if g.group("pre") else "waveform" if g.group("post") else
                        "upsample" if g.group("up") is not None else "resblock")
                flow = g.group("up") or g.group("rb") or ("pre" if g.group("pre") else None)
            elif "upsample" in weight:
                role = "upsample"
            elif "weight_inv" in weight or "conv1x1" in weight:
                role = "inv1x1"
        out.append(NodeRole(node.name, node.op_type, role, flow, weight))
    return _generator_stages(out)


def _generator_stages(roles: List[NodeRole]) -> List[NodeRole]:
    """HiFi-GAN nodes' ``flow`` as their upsampling stage: ``ups.i`` -> ``stage<i>``; ``resblocks.j`` ->
    ``stage<j // kernels>`` (kernels = resblocks per stage = resblock count / upsampler count)."""
    ups = {r.flow for r in roles if r.role == "upsample" and r.flow is not None and r.flow.isdigit()}
    blocks = {r.flow for r in roles if r.role == "resblock"}
    per = max(1, len(blocks) // max(1, len(ups)))
    for r in roles:
        if r.role == "upsample" and r.flow is not None and r.flow.isdigit():
            r.flow = f"stage{r.flow}"
        elif r.role == "resblock":
            r.flow = f"stage{int(r.flow) // per}"
    return roles


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a node name (or its role/group label) matches any exclude pattern (exact, or a regex)."""
    for p in patterns:
        if name == p:
            return True
        try:
            if re.fullmatch(p, name):
                return True
        except re.error:
            continue
    return False


def quantized_nodes(model) -> Set[str]:
    """Names of the non-Q/DQ nodes that read a DequantizeLinear output (the nodes that run on int8 data)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq_out for i in n.input)}


def quantized_outputs(model) -> Set[str]:
    """Names of the nodes whose output goes straight into a QuantizeLinear."""
    q_in = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(o in q_in for o in n.output)}


#: Node names of a HiFi-GAN generator's resblocks (group 1: the block index), as the exporter writes them.
GENERATOR_RESBLOCKS = r"(?:^|/)generator/resblocks\.(\d+)/"


def resblock_adds(model, quantized: Iterable[str], pattern: str = GENERATOR_RESBLOCKS) -> List[Any]:
    """The ``Add`` nodes (``x = x + conv(lrelu(...))``) of the resblocks whose convs are all in ``quantized``;
    a resblock is the nodes whose name matches ``pattern`` (group 1: its index). Only HiFi-GAN resblocks are
    named so: a flow's Add is coupling arithmetic and never qualifies."""
    rb, done = re.compile(pattern), set(quantized)
    convs: Dict[str, List[str]] = {}
    for n in model.graph.node:
        m = rb.search(n.name)
        if m and n.op_type in ("Conv", "ConvTranspose"):
            convs.setdefault(m.group(1), []).append(n.name)
    full = {k for k, names in convs.items() if all(x in done for x in names)}
    return [n for n in model.graph.node if n.op_type == "Add" and (m := rb.search(n.name)) and m.group(1) in full]


def residual_tensors(model, quantized: Iterable[str]) -> Set[str]:
    """The residual stream of a HiFi-GAN generator's fully quantized resblocks: inputs and outputs of their
    Adds (:func:`resblock_adds`).

    Q/DQ there lets onnxruntime run the block's Adds and LeakyRelus on uint8 (QLinearAdd, QLinearLeakyRelu)
    instead of a DequantizeLinear -> float Add -> QuantizeLinear round trip around every conv pair (its uint8
    convs still run in NHWC between Transposes, now of uint8 data).
    """
    consts = _constants(model)
    return {t for n in resblock_adds(model, quantized) for t in [*n.input, *n.output] if t and t not in consts}


def audio_path(model, roles: List[NodeRole], start_inputs: Iterable[str] = ("z",)) -> Set[str]:
    """Nodes on the flow's audio path: everything reached from the noise input ``z`` and from the
    ``coupling_end`` / ``inv1x1`` nodes, stopping at the conditioning nets' quantizable layers.

    That is the affine update (Slice of (log s, t), Neg, Exp, Sub, Mul), the invertible 1x1 convs,
    the row/channel assembly (Concat, Reshape, Transpose) and any log-det arithmetic: the part of a
    flow whose error is not absorbed by a later layer. Kept in float for INT8 and FP16 alike.
    """
    float_nodes = {r.name for r in roles if r.role in FLOAT_ROLES}
    net_layers = {r.name for r in roles if r.role not in FLOAT_ROLES}
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen: Set[str] = set()
    stack = [n for n in model.graph.node if n.name in float_nodes]
    stack += [c for i in start_inputs for c in consumers.get(i, [])]
    while stack:
        node = stack.pop()
        if node.name in seen or node.name in net_layers:
            continue
        seen.add(node.name)
        for o in node.output:
            stack.extend(consumers.get(o, []))
    return seen


def with_shapes(model):
    """``model`` with symbolic shapes of every tensor in ``value_info`` (onnxruntime's symbolic shape
    inference, the first step of ``quant_pre_process``); the model itself if inference fails.

    Without them onnxruntime invents a fresh symbol for each Conv output's unknown length while it
    loads the graph, which is quadratic: the demo WaveFlow graph (~20k nodes) took ~15 minutes to
    load here, and 15 seconds with the shapes.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, logger

    logger.setLevel("ERROR")                        # "Unable to determine if 64*T <= ..." notes
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - an op the symbolic inference does not know: load without hints
        return model

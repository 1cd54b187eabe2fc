"""The waveform-rate stage of a VITS voice's decoder graph, for the native engine's INT8 stage kernel
(:mod:`edgeflow.runtime.native.wave_stage`): its float weights read from the graph (:func:`pack_graph_stage`)
and the decoder graph cut before it (:func:`cut_before_stage`). No torch.

The exported decoder (``/dec/...`` node names) ends in HiFi-GAN's last upsampling stage: every resblock of that
stage reads the last upsampler's output through a LeakyRelu, their outputs are summed and divided by their number,
then LeakyRelu, ``/dec/conv_post`` and Tanh make the audio. Resblocks of type "2" (``convs.{c}``, each
``x + conv(lrelu(x))``) and type "1" (``convs1.{c}`` then ``convs2.{c}``) are read; the stage must be float
(the ``balanced`` and ``fast`` recipes keep it float: a QDQ graph cannot take it, bench/results/tts_optimize.md).
With ``upsampler=True`` the stage starts one step earlier, at the last upsampler's LeakyRelu: the upsampler
(``/dec/ups.{n}``, a ConvTranspose or edgeflow's phase form of it, :mod:`edgeflow.models.polyphase`) runs in the
native kernel too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.runtime.native.vits_graph import float_initializers
from edgeflow.runtime.native.wave_stage import pack_stage

_CONV = re.compile(r"^/dec/resblocks\.(\d+)/convs(1|2)?\.(\d+)/Conv$")
_UPS = re.compile(r"^/dec/ups\.(\d+)/")


def _load(model: Any):
    import onnx

    return onnx.load(str(model)) if isinstance(model, (str, Path)) else model


def _stage_convs(graph, stage: Optional[int] = None) -> Tuple[List[int], Dict[int, List[Any]]]:
    """(upsampling stage ``stage``'s (None: the last one's) resblock indices, {resblock: its Conv nodes in run
    order})."""
    ups = {int(m.group(1)) for n in graph.node for m in [_UPS.match(n.name)] if m}
    blocks: Dict[int, List[Tuple[int, int, Any]]] = {}
    for n in graph.node:
        m = _CONV.match(n.name)
        if n.op_type == "Conv" and m:
            kind = {None: 0, "1": 0, "2": 1}[m.group(2)]
            blocks.setdefault(int(m.group(1)), []).append((int(m.group(3)), kind, n))
    if not ups or not blocks or (max(blocks) + 1) % (max(ups) + 1):
        raise ConfigError("tts_wave: the decoder graph has no HiFi-GAN resblocks in the exported form (/dec/...)")
    nk = (max(blocks) + 1) // (max(ups) + 1)
    k = max(ups) if stage is None else stage
    if not 0 <= k <= max(ups):
        raise ConfigError(f"tts_wave: the decoder graph has no upsampling stage {k}")
    chosen = list(range(k * nk, (k + 1) * nk))
    if any(j not in blocks for j in chosen):
        raise ConfigError(f"tts_wave: upsampling stage {k}'s resblocks are not all in the decoder graph")
    return chosen, {j: [n for _, _, n in sorted(blocks[j], key=lambda t: (t[0], t[1]))] for j in chosen}


def n_upsamplers(model: Any) -> int:
    """The decoder graph's number of upsampling stages (``/dec/ups.{n}``)."""
    return 1 + max((int(m.group(1)) for n in _load(model).graph.node for m in [_UPS.match(n.name)] if m), default=-1)


def stage_input(model: Any) -> str:
    """The tensor the last stage's resblocks read (the last upsampler's output), checked to be one tensor."""
    graph = _load(model).graph
    last, convs = _stage_convs(graph)
    prod = {o: n for n in graph.node for o in n.output}
    found = set()
    for j in last:
        relu = prod.get(convs[j][0].input[0])
        if relu is None or relu.op_type != "LeakyRelu":
            raise ConfigError(f"tts_wave: resblock {j}'s first conv is quantized or does not read a LeakyRelu")
        found.add(relu.input[0])
    if len(found) != 1:
        raise ConfigError("tts_wave: the last stage's resblocks do not read one tensor")
    return found.pop()


def _upsampler_node(graph, stage: Optional[int] = None):
    """Upsampler ``stage``'s (None: the last one's) weight-carrying node: a ConvTranspose, or the phase form's Conv
    (``/dec/ups.{n}/conv``)."""
    last = max((int(m.group(1)) for n in graph.node for m in [_UPS.match(n.name)] if m), default=None)
    k = last if stage is None else stage
    for n in graph.node:
        if k is not None and n.name.startswith(f"/dec/ups.{k}/") and n.op_type in ("ConvTranspose", "Conv"):
            return n
    raise ConfigError(f"tts_wave: the decoder graph has no upsampler /dec/ups.{'N' if k is None else k} to run "
                      "natively")


def relu_before(prod: Dict[str, Any], tensor: str, qdq: bool = False):
    """The node making ``tensor``; with ``qdq``, through a QuantizeLinear / DequantizeLinear pair (an INT8 graph's
    activations): the node before the pair."""
    node = prod.get(tensor)
    if qdq and node is not None and node.op_type == "DequantizeLinear":
        q = prod.get(node.input[0])
        node = prod.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else node
    return node


def upsampler(model: Any, channels: int, inits: Optional[Dict[str, np.ndarray]] = None,
              stage: Optional[int] = None) -> Dict[str, Any]:
    """Upsampler ``stage`` (None: the last) as :func:`edgeflow.runtime.native.wave_stage.pack_stage` takes it
    (``up``: the ConvTranspose1d weight [cin, C, K], bias, stride, padding, its input's leaky-ReLU slope) plus
    ``"input"``: the tensor that LeakyRelu reads. ``channels``: the stage's C (the phase form's rows are stride x
    C); ``inits``: the graph's initializers as float32, where the caller has them. The last upsampler must be float;
    an earlier one may be INT8 (QDQ: its weights dequantized, its LeakyRelu read through the Q / DQ pair).

    Raises:
        ConfigError: no such upsampler, a quantized last one, or not after a LeakyRelu.
    """
    graph = _load(model).graph
    inits = float_initializers(graph) if inits is None else inits
    prod = {o: n for n in graph.node for o in n.output}
    node = _upsampler_node(graph, stage)
    w, bias = _weights(node, inits, prod if stage is not None else None)
    relu = relu_before(prod, node.input[0], qdq=stage is not None)
    if relu is None or relu.op_type != "LeakyRelu":
        raise ConfigError(f"tts_wave: {node.name} does not read a LeakyRelu (quantized?)")
    if node.op_type == "ConvTranspose":
        u = int(_attr(node, "strides", [1])[0])
        pads = _attr(node, "pads", [0, 0])
        if _attr(node, "group", 1) != 1 or pads[0] != pads[-1] or _attr(node, "output_padding", [0]) not in ([0], 0):
            raise ConfigError(f"tts_wave: {node.name} is not a plain, symmetric ConvTranspose")
        p = int(pads[0])
    else:                         # phase form: [u C, cin, taps], row r C + o, tap d = W[.., (taps - 1 - d) u + r]
        u, taps = w.shape[0] // channels, w.shape[2]
        if u * channels != w.shape[0]:
            raise ConfigError(f"tts_wave: {node.name} has {w.shape[0]} rows, not a multiple of {channels}")
        w = w.reshape(u, channels, w.shape[1], taps)[:, :, :, ::-1].transpose(2, 1, 3, 0).reshape(
            w.shape[1], channels, taps * u)
        bias = None if bias is None else bias[:channels]
        p = (taps * u - u) // 2
    if w.shape[2] - 2 * p != u:
        raise ConfigError(f"tts_wave: {node.name} does not upsample by exactly {u}")
    return {"weight": np.ascontiguousarray(w), "bias": bias, "stride": u, "padding": p,
            "slope": float(_attr(relu, "alpha", 0.01)), "input": relu.input[0]}


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.f if a.type == a.FLOAT else a.i)
    return default


def _weights(node, inits: Dict[str, np.ndarray], prod: Optional[Dict[str, Any]] = None
             ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(weight, bias or None) of a Conv: float initializers; with ``prod`` (the graph's producers) also an INT8
    graph's, read through their DequantizeLinear node (``inits`` holds them dequantized under the name without
    ``_quantized``: :func:`edgeflow.runtime.native.vits_graph.float_initializers`)."""
    names = list(node.input[1:3])
    for i, name in enumerate(names):
        dq = prod.get(name) if prod is not None else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0].endswith("_quantized"):
            names[i] = dq.input[0][:-len("_quantized")]
    if names[0] not in inits:
        raise ConfigError(f"tts_wave: {node.name}'s weight is not a float initializer (the stage is quantized?)")
    return inits[names[0]], (inits[names[1]] if len(names) > 1 and names[1] else None)


def stage_convs(model: Any, with_upsampler: bool = False, stage: Optional[int] = None
                ) -> Tuple[List[dict], Dict[str, Any]]:
    """The last stage's convs as :func:`edgeflow.runtime.native.wave_stage.pack_stage` takes them (float32), and
    {"post_w", "post_b", "slope", "post_slope", "input"} (with the upsampler: "up" too, and "input" is its
    LeakyRelu's input). ``stage``: an earlier upsampling stage instead (its upsampler included, no conv_post:
    "post_w" None), INT8 (QDQ) or float: its weights dequantized, its LeakyRelus read through the Q / DQ pairs."""
    model = _load(model)                          # read once: stage_input and upsampler take the proto
    graph = model.graph
    qdq = stage is not None
    inits = float_initializers(graph)
    prod = {o: n for n in graph.node for o in n.output}
    chosen, convs = _stage_convs(graph, stage)
    out, slope = [], None
    for b, j in enumerate(chosen):
        type1 = any("/convs1." in n.name for n in convs[j])
        for i, node in enumerate(convs[j]):
            w, bias = _weights(node, inits, prod if qdq else None)
            k, d = w.shape[2], (_attr(node, "dilations", [1]) or [1])[0]
            if _attr(node, "pads", [d * (k - 1) // 2] * 2) != [d * (k - 1) // 2] * 2 or _attr(node, "group", 1) != 1:
                raise ConfigError(f"tts_wave: {node.name} is not a 'same'-padded, ungrouped conv")
            relu = relu_before(prod, node.input[0], qdq)
            if relu is None or relu.op_type != "LeakyRelu":
                raise ConfigError(f"tts_wave: {node.name} does not read a LeakyRelu")
            slope = float(_attr(relu, "alpha", 0.01)) if slope is None else slope
            out.append({"block": b, "weight": w, "bias": np.zeros(w.shape[0], np.float32) if bias is None else bias,
                        "dilation": int(d), "mode": (1 + i % 2) if type1 else 0})
    if qdq:
        up = upsampler(model, out[0]["weight"].shape[1], inits, stage)
        return out, {"post_w": None, "post_b": 0.0, "slope": slope, "post_slope": 0.0, "up": up,
                     "input": up.pop("input")}
    post = next((n for n in graph.node if n.op_type == "Conv" and n.name == "/dec/conv_post/Conv"), None)
    if post is None:
        raise ConfigError("tts_wave: the decoder graph has no /dec/conv_post Conv")
    pw, pb = _weights(post, inits)
    relu = prod.get(post.input[0])
    if pw.shape[0] != 1 or relu is None or relu.op_type != "LeakyRelu":
        raise ConfigError("tts_wave: /dec/conv_post is not a one-channel conv after a LeakyRelu")
    extra = {"post_w": pw, "post_b": 0.0 if pb is None else float(pb.reshape(-1)[0]), "slope": slope,
             "post_slope": float(_attr(relu, "alpha", 0.01)), "input": stage_input(model)}
    if with_upsampler:
        up = upsampler(model, pw.shape[1], inits)
        extra.update(up=up, input=up.pop("input"))
    return out, extra


def stage_arrays(stage: Tuple[List[dict], Dict[str, Any]], two_planes: Sequence[int] = ()) -> Dict[str, np.ndarray]:
    """The stage arrays (:func:`edgeflow.runtime.native.wave_stage.pack_stage`) of :func:`stage_convs`'s result,
    the convs numbered in ``two_planes`` with two activation planes (number len(convs): the upsampler)."""
    convs, extra = stage
    n = len(convs) + ("up" in extra)
    for i in two_planes:
        if not 0 <= int(i) < n:
            raise ConfigError(f"tts_wave: conv {i} is not in the stage (it has {n})")
    two = {int(i) for i in two_planes}
    up = dict(extra["up"], planes=2 if len(convs) in two else 1) if "up" in extra else None
    convs = [dict(c, planes=2 if i in two else 1) for i, c in enumerate(convs)]
    return pack_stage(convs, extra["post_w"], extra["post_b"], extra["slope"], extra["post_slope"], up)


def pack_graph_stage(model: Any, two_planes: Sequence[int] = ()) -> Dict[str, np.ndarray]:
    """:func:`stage_arrays` of a VITS decoder graph (a path or ModelProto)."""
    return stage_arrays(stage_convs(model), two_planes)


def cut_before_stage(decoder: Any, out_path: str | Path, channels: int, name: Optional[str] = None) -> str:
    """Write the decoder graph (``decoder``: a path or ModelProto whose one input is the flow's output) cut at
    the last stage's input (or at tensor ``name``, e.g. the upsampler's input, of ``channels`` channels) to
    ``out_path``; returns that tensor's name.

    Raises:
        ConfigError: no stage of this form. BundleError: the cut graph does not check.
    """
    import onnx

    from edgeflow.core.io import atomic_write_bytes
    from edgeflow.runtime.native.vits_graph import extract

    model = _load(decoder)
    name = name or stage_input(model)
    try:
        cut = extract(model, [i.name for i in model.graph.input], [name], channels)
        onnx.checker.check_model(cut)
    except Exception as exc:                      # onnx raises several kinds
        raise BundleError(f"tts_wave: cutting the decoder at {name} failed ({exc})") from None
    atomic_write_bytes(out_path, cut.SerializeToString())
    return name

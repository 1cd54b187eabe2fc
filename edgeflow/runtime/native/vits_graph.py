"""The VITS prior flow of a voice bundle's ``decoder.onnx``, for the native engine: its weights packed from the
graph's initializers (:func:`pack_vits_flow`) and the decoder graph without it (:func:`cut_decoder`). No torch.

The exported decoder names the flow's weights ``model.flow.flows.{2i}.pre / enc.in_layers.{l} /
enc.res_skip_layers.{l} / post`` (weight norm removed; the Flips at odd indices have none), and feeds the
flow's output (times the all-ones frame mask) to ``/dec/conv_pre/Conv``, directly (float32) or through a
QuantizeLinear / DequantizeLinear pair (an INT8 decoder: the graph's flow stays float; the ``tts_flow_int8``
pass runs the native flow's WaveNet convs in INT8, quantized at load).

Also the graph helpers the other native packers share: :func:`extract` (a subgraph between named tensors) and
:func:`float_initializers` (a graph's weights as float32, an INT8 graph's dequantized through its own
DequantizeLinear nodes), read by the waveform stages (:mod:`edgeflow.runtime.native.vits_stage`) and the text
encoder (:mod:`edgeflow.runtime.native.text_encoder`).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.runtime.native.wn import FORMAT
from edgeflow.runtime.native.wn_pack import fold_coupling

_PREFIX = "model.flow.flows."
_NAME = re.compile(r"^model\.flow\.flows\.(\d+)\.(pre|post|enc\.in_layers\.(\d+)|enc\.res_skip_layers\.(\d+))"
                   r"\.(weight|bias)$")


def float_initializers(graph) -> Dict[str, np.ndarray]:
    """Initializers as float32 by name; the int8 / int32 initializer ``NAME_quantized`` of every DequantizeLinear
    node that reads one (an INT8 graph's weights and biases) also as ``NAME``, dequantized with that node's scale,
    zero point and axis."""
    from onnx import numpy_helper

    raw = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {n: a.astype(np.float32) for n, a in raw.items()}
    for node in graph.node:
        name = node.input[0] if node.op_type == "DequantizeLinear" else ""
        if not name.endswith("_quantized") or name not in raw or node.input[1] not in raw:
            continue
        q, scale = raw[name].astype(np.float64), raw[node.input[1]].astype(np.float64)
        zp = raw[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] in raw else 0.0
        if np.size(scale) > 1:                                # per channel along the node's axis
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.size(zp) > 1 else zp
        out[name[:-len("_quantized")]] = ((q - zp) * scale).astype(np.float32)
    return out


def _flow_tensors(graph) -> Dict[Tuple[int, str, int], Dict[str, np.ndarray]]:
    from onnx import numpy_helper

    found: Dict[Tuple[int, str, int], Dict[str, np.ndarray]] = {}
    for t in graph.initializer:
        m = _NAME.match(t.name)
        if m:
            part = m.group(2).split(".")[1] if m.group(2).startswith("enc.") else m.group(2)
            lay = int(m.group(3) or m.group(4) or 0)
            found.setdefault((int(m.group(1)), part, lay), {})[m.group(5)] = \
                numpy_helper.to_array(t).astype(np.float64)
    return found


def _dilations(graph, n_layers: int, k: int) -> list:
    """Dilation of each WN layer from its Conv node (every coupling uses the same), checked: symmetric padding."""
    dil = {}
    for node in graph.node:
        m = next((_NAME.match(i) for i in node.input[1:2] if _NAME.match(i)), None)
        if node.op_type != "Conv" or not m or m.group(3) is None:
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute}
        d = (attrs.get("dilations") or [1])[0]
        if attrs.get("pads", [d * (k - 1) // 2] * 2) != [d * (k - 1) // 2] * 2:
            raise ConfigError(f"tts_kernels: {node.name} is not a 'same'-padded conv")
        dil.setdefault(int(m.group(3)), set()).add(d)
    if sorted(dil) != list(range(n_layers)) or any(len(v) != 1 for v in dil.values()):
        raise ConfigError("tts_kernels: the flow's WN convs are not found or differ between couplings")
    return [dil[lay].pop() for lay in range(n_layers)]


def pack_vits_flow(decoder: Any) -> Dict[str, np.ndarray]:
    """The native flow arrays (:mod:`edgeflow.runtime.native.wn`) of a VITS decoder graph (an onnx ModelProto or
    its path): mean-only couplings with a Flip after each, the skip convs folded with ``post`` (float64, then
    float32).

    Raises:
        ConfigError: the graph has no VITS prior flow of this form (a quantized flow conv, a speaker input).
    """
    import onnx

    model = onnx.load(str(decoder)) if isinstance(decoder, (str, Path)) else decoder
    t = _flow_tensors(model.graph)
    idx = sorted({f for f, _, _ in t})
    if not idx or idx != list(range(0, 2 * len(idx), 2)):
        raise ConfigError("tts_kernels: the decoder graph has no float VITS prior flow (model.flow.flows.* weights)")
    n_layers = len({lay for f, p, lay in t if f == 0 and p == "in_layers"})
    try:
        pre, in0, post = t[(0, "pre", 0)]["weight"], t[(0, "in_layers", 0)]["weight"], t[(0, "post", 0)]["weight"]
        hidden, half, k = pre.shape[0], pre.shape[1], in0.shape[2]
    except (KeyError, IndexError):
        raise ConfigError("tts_kernels: the decoder graph's flow weights are incomplete (quantized?)") from None
    if post.shape[0] != half or n_layers < 1:
        raise ConfigError("tts_kernels: the native engine runs VITS's mean-only couplings only")
    out = {"format": np.array([FORMAT], np.int32),
           "config": np.array([len(idx), n_layers, 2 * half, hidden, k, 0, 1, 1], np.int32),
           "dilations": np.array(_dilations(model.graph, n_layers, k), np.int32)}
    for f, fi in enumerate(idx):
        try:
            _pack_coupling(t, fi, f, n_layers, hidden, out)
        except KeyError as exc:
            raise ConfigError(f"tts_kernels: flow weight {_PREFIX}{fi} {exc} is missing (quantized?)") from None
    return out


def packed_sha256(arrays: Dict[str, np.ndarray]) -> str:
    """sha256 of packed flow arrays (their config and weight blob, :func:`edgeflow.runtime.native.wn.blob`)."""
    import hashlib

    from edgeflow.runtime.native.wn import blob

    cfg, weights = blob(arrays)
    return hashlib.sha256(np.ascontiguousarray(cfg, "<i4").tobytes() +
                          np.ascontiguousarray(weights, "<f4").tobytes()).hexdigest()


def flow_from_bundle(bundle: Path, section: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The native flow arrays of a bundle's ``native`` section: packed from the decoder graph it names (checked
    against ``flow_sha256``), or read from a flow file (bundles of 2026-12-05 and before); engine
    "vits-flow-int8" (the ``tts_flow_int8`` pass): with every WaveNet layer's dilated conv (and, where
    ``int8_convs`` names "rs", its residual / statistics conv) in INT8, the weights quantized from the float ones at
    load (:func:`edgeflow.runtime.native.wn.quantize_weights`, deterministic). Sections without ``int8_convs``
    (before 2026-12-05, 17:00 UTC) mean the dilated convs only.

    Raises:
        BundleError: packed weights that differ from the ones the pass checked, or an unreadable file.
    """
    from edgeflow.runtime.native.wn import load, quantize_weights
    from edgeflow.runtime.voice_config import INT8_FLOW

    path = Path(bundle) / section["file"]
    if not section["file"].endswith(".onnx"):
        arrays = load(path)
    else:
        try:
            arrays = pack_vits_flow(path)
        except ConfigError as exc:
            raise BundleError(f"{path}: no native flow in it ({exc})") from None
        if packed_sha256(arrays) != section.get("flow_sha256"):
            raise BundleError(f"{path}: the flow packed from it is not the one the tts_kernels pass checked")
    if section.get("engine") != INT8_FLOW:
        return arrays
    return quantize_weights(arrays, res_skip="rs" in section.get("int8_convs", ["in"]))


def _pack_coupling(t, fi: int, f: int, n_layers: int, hidden: int, out: Dict[str, np.ndarray]) -> None:
    conv = lambda part, lay=0: (t[(fi, part, lay)]["weight"], t[(fi, part, lay)]["bias"])  # noqa: E731
    layers = [(*conv("in_layers", lay), np.zeros((2 * hidden, 0)), conv("res_skip_layers", lay)[0][:, :, 0],
               conv("res_skip_layers", lay)[1]) for lay in range(n_layers)]
    out.update(fold_coupling(f"flow.{f}.", (conv("pre")[0][:, :, 0], conv("pre")[1]), layers,
                             (conv("post")[0][:, :, 0], conv("post")[1])))


def flow_output(decoder: Any) -> str:
    """The float tensor the flow hands to HiFi-GAN: ``/dec/conv_pre/Conv``'s data input, before any
    QuantizeLinear / DequantizeLinear pair."""
    graph = decoder.graph
    prod = {o: n for n in graph.node for o in n.output}
    conv = next((n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/dec/conv_pre")), None)
    if conv is None:
        raise ConfigError("tts_kernels: the decoder graph has no /dec/conv_pre Conv (not a VITS decoder)")
    name = conv.input[0]
    while name in prod and prod[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = prod[name].input[0]
    return name


def extract(model: Any, inputs: list, outputs: list, channels: int) -> Any:
    """The subgraph of ``model`` from float tensors ``inputs`` [1, channels, F] (and the graph inputs it still
    reads) to ``outputs``, by onnx's Extractor, with the cut tensors' types declared (shape inference leaves
    them out of this graph's value_info)."""
    from onnx import TensorProto, helper
    from onnx.utils import Extractor

    model = copy.deepcopy(model)
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    for name in set(inputs + outputs) - known:
        model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, "F"]))
    return Extractor(model).extract_model(list(inputs), list(outputs))


def cut_decoder(decoder_path: str | Path, out_path: str | Path) -> str:
    """Write the decoder graph from the flow's output tensor to ``audio`` (HiFi-GAN only, INT8 parts kept) to
    ``out_path``; returns its input's name.

    Raises:
        ConfigError: not a VITS decoder graph. BundleError: the cut graph does not check.
    """
    import onnx

    from edgeflow.core.io import atomic_write_bytes

    model = onnx.load(str(decoder_path))
    name = flow_output(model)
    channels = int(pack_vits_flow(model)["config"][2])
    try:
        cut = extract(model, [name], [o.name for o in model.graph.output], channels)
        onnx.checker.check_model(cut)
    except Exception as exc:                      # onnx raises several kinds
        raise BundleError(f"tts_kernels: cutting the decoder at {name} failed ({exc})") from None
    atomic_write_bytes(out_path, cut.SerializeToString())
    return name

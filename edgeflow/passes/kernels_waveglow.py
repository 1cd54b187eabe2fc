"""WaveGlow's native weights for the ``kernels`` pass (:mod:`edgeflow.runtime.native.waveglow`'s file).

Packed from a frozen copy of the model (weight norm folded, the 1x1 convs' inverses computed in float64 and kept
in float32: the weights the exported graph holds). Each coupling's WN becomes a one-coupling native flow
(:func:`edgeflow.runtime.native.wn_pack.fold_coupling`): the shared conditioning conv split per layer (its bias
added to the layer's in-conv bias), and the end conv's rows reordered from WaveGlow's [log s; t] to the engine's
statistic order [t; log s] (the engine's inverse is x_b = (z_b - m) * exp(-logs), WaveGlow's
x_b = (z_b - t) * exp(-log s)). An INT8 bundle's WN layers get the quantized graph's own int8 weights and
per-output-channel scales (:func:`int8_from_graph`). A helper of :mod:`edgeflow.passes.kernels` (no pass of its
own).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError


def _wn_arrays(coupling: Any, n_cond: int, prefix: str) -> Dict[str, np.ndarray]:
    """One AffineCoupling (frozen) as native flow arrays named ``{prefix}...``."""
    from edgeflow.runtime.native.wn import FORMAT
    from edgeflow.runtime.native.wn_pack import fold_coupling

    net, n_b = coupling.net, coupling.n_b
    if coupling.n_a != n_b:
        raise ConfigError(f"kernels: the native engine needs couplings with an even channel count, got "
                          f"{coupling.n_a + n_b}")
    h, n_layers = net.channels, net.n_layers
    a = lambda t: t.detach().double().numpy()  # noqa: E731
    cond_w, cond_b = a(net.cond_layer.weight)[:, :, 0], a(net.cond_layer.bias)
    layers, dilations = [], []
    for i, (conv, rs) in enumerate(zip(net.in_layers, net.res_skip_layers)):
        d, k = conv.dilation[0], conv.kernel_size[0]
        if conv.padding[0] != d * (k - 1) // 2 or conv.stride[0] != 1:
            raise ConfigError(f"kernels: WN layer {i} is not a 'same'-padded conv")
        rows = slice(i * 2 * h, (i + 1) * 2 * h)
        layers.append((a(conv.weight), a(conv.bias) + cond_b[rows], cond_w[rows], a(rs.weight)[:, :, 0],
                       a(rs.bias)))
        dilations.append(d)
    end_w, end_b = a(net.end.weight)[:, :, 0], a(net.end.bias)
    order = np.r_[n_b:2 * n_b, 0:n_b]                              # [log s; t] -> [t; log s]
    out = {prefix + "format": np.array([FORMAT], np.int32),
           prefix + "config": np.array([1, n_layers, 2 * n_b, h, net.in_layers[0].kernel_size[0], n_cond, 0, 0],
                                       np.int32),
           prefix + "dilations": np.array(dilations, np.int32)}
    out.update(fold_coupling(prefix + "flow.0.", (a(net.start.weight)[:, :, 0], a(net.start.bias)), layers,
                             (end_w[order], end_b[order])))
    return out


def pack_waveglow(model: Any) -> Dict[str, np.ndarray]:
    """The native WaveGlow arrays (:mod:`edgeflow.runtime.native.waveglow`) of a WaveGlow model (left untouched;
    a frozen copy is read).

    Raises:
        ConfigError: not a WaveGlow, or a coupling the engine cannot run (odd channel count).
    """
    import torch

    from edgeflow.models.family import get_family
    from edgeflow.models.waveglow_family import flow_pairs
    from edgeflow.runtime.native.waveglow import FORMAT, flow_channels

    fam = get_family(model)
    if fam.name != "waveglow":
        raise ConfigError(f"kernels: pack_waveglow needs a WaveGlow, not {fam.name}")
    frozen = fam.fuse(fam.freeze(copy.deepcopy(model).cpu().float()))
    c, up = frozen.config, frozen.upsample
    if up.kernel_size[0] != 4 * c.mel.hop_length or up.stride[0] != c.mel.hop_length or up.padding[0] != 0:
        raise ConfigError("kernels: the native engine needs WaveGlow's upsampler (kernel 4 hop, stride hop)")
    cfg = np.array([c.n_flows, c.n_group, c.n_early_every, c.n_early_size, c.mel.n_mels, c.mel.hop_length],
                   np.int32)
    f32 = lambda t: t.detach().to(torch.float32).numpy().copy()  # noqa: E731
    out = {"format": np.array([FORMAT], np.int32), "config": cfg, "up.weight": f32(up.weight),
           "up.bias": f32(up.bias)}
    pairs = flow_pairs(frozen)
    if [conv.weight_inv.shape[0] for conv, _ in pairs] != flow_channels(cfg):
        raise ConfigError("kernels: the model's flows do not have WaveGlow's early-output channel counts")
    for k, (conv, coupling) in enumerate(pairs):
        out[f"flow.{k}.inv"] = f32(conv.weight_inv)
        out.update(_wn_arrays(coupling, c.mel.n_mels * c.n_group, f"coupling.{k}."))
    return out


def _graph_weights(onnx_path: str | Path) -> Dict[str, Optional[Tuple[np.ndarray, np.ndarray]]]:
    """Float weight name (``model.`` prefix dropped) -> (int8 weight, per-output-channel scale) of every weight the
    quantized graph dequantizes; None for one that is not int8 symmetric per output channel (the upsampler's
    ConvTranspose, per input channel, say)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith(".weight_quantized") \
                or any(i not in inits for i in node.input[:3]):
            continue
        name = node.input[0]
        q, scale, zp = (numpy_helper.to_array(inits[i]) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        ok = q.dtype == np.int8 and not np.any(zp != 0) and scale.shape == (q.shape[0],) and axis == 0
        base = name[:-len("_quantized")]
        out[base[len("model."):] if base.startswith("model.") else base] = (q, scale.astype(np.float32)) if ok \
            else None
    return out


def _matched(pair: Optional[Tuple[np.ndarray, np.ndarray]], ref: np.ndarray, name: str) -> np.ndarray:
    """The int8 weight of ``pair`` (:func:`_graph_weights`'s), checked to be symmetric per output channel and to
    dequantize to the model's folded float weight ``ref`` (same shape)."""
    if pair is None:
        raise BundleError(f"kernels: {name} is not an int8 weight symmetric per output channel")
    q, scale = pair[0].reshape(ref.shape), pair[1]
    tol = scale.reshape((-1,) + (1,) * (ref.ndim - 1)) * 0.501 + 1e-6 * float(np.max(np.abs(ref)))
    if np.any(np.abs(q * scale.reshape(tol.shape) - ref) > tol):
        raise BundleError(f"kernels: the graph's INT8 weight {name} does not match the model's (was the bundle "
                          f"exported from this model?)")
    return np.ascontiguousarray(q, dtype=np.int8)


def int8_from_graph(onnx_path: str | Path, model: Any, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``arrays`` (:func:`pack_waveglow`'s) plus the INT8 pairs of every WN layer whose dilated conv and
    conditioning rows the quantized graph ``onnx_path`` both runs in INT8 (the graph's own int8 weights and
    scales; the shared conditioning conv split per layer). The other layers stay float.

    Raises:
        BundleError: a quantized weight that is not symmetric per output channel or does not match the model.
    """
    import torch

    from edgeflow.models.family import get_family
    from edgeflow.models.waveglow_family import flow_pairs

    fam = get_family(model)
    frozen = fam.fuse(fam.freeze(copy.deepcopy(model).cpu().float()))
    names = {id(m): n for n, m in frozen.named_modules()}
    graph, out = _graph_weights(onnx_path), dict(arrays)
    a = lambda t: t.detach().to(torch.float64).numpy()  # noqa: E731
    for k, (_, coupling) in enumerate(flow_pairs(frozen)):
        net, h = coupling.net, coupling.net.channels
        path = names[id(net)]
        cname = f"{path}.cond_layer.weight"
        if cname not in graph:                                      # no INT8 conditioning: the coupling stays float
            continue
        cq, cscale = _matched(graph[cname], a(net.cond_layer.weight), cname), graph[cname][1]
        for lay, conv in enumerate(net.in_layers):
            name = f"{path}.in_layers.{lay}.weight"
            if name not in graph:
                continue
            p, rows = f"coupling.{k}.flow.0.layer.{lay}.", slice(lay * 2 * h, (lay + 1) * 2 * h)
            out[p + "in.qweight"], out[p + "in.qscale"] = _matched(graph[name], a(conv.weight), name), graph[name][1]
            out[p + "cond.qweight"] = np.ascontiguousarray(cq[rows, :, 0])
            out[p + "cond.qscale"] = np.ascontiguousarray(cscale[rows])
    return out

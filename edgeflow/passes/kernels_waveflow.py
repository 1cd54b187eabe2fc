"""WaveFlow's native weights for the ``kernels`` pass (:mod:`edgeflow.runtime.native.format`'s ``kernels.npz``).

:func:`pack_waveflow` reads a frozen, fused copy of the model (weight norm folded, the end convs folded into the
skip convs, the upsampler in phase form: the weights the exported graph holds); :func:`int8_from_graph` adds the
INT8 convs of a quantized graph (its own int8 weights and per-output-channel scales). Helpers of the pass in
:mod:`edgeflow.passes.kernels` (no pass of their own).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError


def pack_waveflow(model: Any) -> Dict[str, np.ndarray]:
    """The native weight arrays of a WaveFlow model (left untouched; a frozen, fused copy is read).

    Raises:
        ConfigError: not a WaveFlow, or an upsampler without the phase form (odd factors).
    """
    import torch

    from edgeflow.models.family import get_family
    from edgeflow.runtime.native.format import FORMAT

    fam = get_family(model)
    if fam.name != "waveflow":
        raise ConfigError(f"kernels: pack_waveflow needs a WaveFlow, not {fam.name}")
    frozen = fam.fuse(fam.freeze(copy.deepcopy(model).cpu().float()))
    cfg, up = frozen.config, frozen.upsample
    if not up.phased:
        raise ConfigError("kernels: the native engine needs even upsample factors (the phase form)")
    f32 = lambda t: t.detach().to(torch.float32).numpy().copy()  # noqa: E731
    nets = [blk.inner.net for blk in frozen.flows.blocks]
    out = {"format": np.array([FORMAT], np.int32),
           "config": np.array([cfg.n_flows, cfg.n_layers, cfg.channels, cfg.kernel_size, cfg.mel.n_mels,
                               cfg.height, len(up.factors)], np.int32),
           "up_factors": np.array(up.factors, np.int32),
           "dilations_h": np.array([lay.dh for lay in nets[0].layers], np.int32),
           "dilations_w": np.array([lay.dw for lay in nets[0].layers], np.int32),
           "row_orders": np.array([blk.permute.perm.tolist() for blk in frozen.flows.blocks], np.int32)}
    for u, layer in enumerate(up.layers):
        out[f"up.{u}.phase"] = f32(getattr(up, f"phase_weight_{u}")[:, 0])
        out[f"up.{u}.bias"] = f32(layer.bias).reshape(1)
    for f, net in enumerate(nets):
        out[f"flow.{f}.start.weight"], out[f"flow.{f}.start.bias"] = f32(net.start.weight).reshape(-1), \
            f32(net.start.bias)
        for i, lay in enumerate(net.layers):
            p = f"flow.{f}.layer.{i}."
            out[p + "conv.weight"] = f32(lay.conv.weight)
            out[p + "cond.weight"] = f32(lay.cond_conv.weight)[:, :, 0, 0]
            out[p + "in.bias"] = f32(lay.conv.bias + lay.cond_conv.bias)
            out[p + "res.weight"], out[p + "res.bias"] = f32(lay.res_conv.weight)[:, :, 0, 0], f32(lay.res_conv.bias)
            out[p + "skip.weight"], out[p + "skip.bias"] = f32(lay.skip_end.weight)[:, :, 0, 0], \
                f32(lay.skip_end.bias)
    return out


_QWEIGHT = re.compile(r"^(?:model\.)?flows\.blocks\.(\d+)\.inner\.net\.layers\.(\d+)\.(conv|cond_conv)\.weight$")


def int8_from_graph(onnx_path: str | Path, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The INT8 convs of a quantized WaveFlow graph as native ``.qweight`` / ``.qscale`` arrays, added to a copy of
    ``arrays`` (:func:`pack_waveflow`'s): the graph's own int8 weights and per-output-channel scales (symmetric,
    zero point 0), for every dilated / conditioning conv whose weight the graph dequantizes.

    Raises:
        BundleError: a quantized weight that is not symmetric per output channel, or that does not match the
            model's folded float weight (the bundle was not exported from this model).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    out = dict(arrays)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("_quantized"):
            continue
        m = _QWEIGHT.match(node.input[0][:-len("_quantized")])
        if not m or any(i not in inits for i in node.input[:3]):
            continue
        base = f"flow.{m.group(1)}.layer.{m.group(2)}.{'conv' if m.group(3) == 'conv' else 'cond'}"
        q, scale, zp = (numpy_helper.to_array(inits[i]) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        ref = arrays.get(base + ".weight")
        if ref is None or q.dtype != np.int8 or np.any(zp != 0) or scale.shape != (q.shape[0],) or axis != 0:
            raise BundleError(f"kernels: {node.input[0]} is not an int8 weight symmetric per output channel")
        q = q.reshape(ref.shape)
        tol = scale.reshape((-1,) + (1,) * (ref.ndim - 1)) * 0.501 + 1e-6 * float(np.max(np.abs(ref)))
        if q.shape != ref.shape or np.any(np.abs(q * scale.reshape(tol.shape) - ref) > tol):
            raise BundleError(f"kernels: the graph's INT8 weight {node.input[0]} does not match the model's "
                              f"(was the bundle exported from this model?)")
        out[base + ".qweight"], out[base + ".qscale"] = q.astype(np.int8), scale.astype(np.float32)
    return out

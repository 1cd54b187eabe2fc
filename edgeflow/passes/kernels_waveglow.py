"""WaveGlow's native weights for the ``kernels`` pass (:mod:`edgeflow.runtime.native.waveglow`'s file).

Packed from a frozen copy of the model (weight norm folded, the 1x1 convs' inverses computed in float64 and kept
in float32: the weights the exported graph holds). Each coupling's WN becomes a one-coupling native flow
(:func:`edgeflow.runtime.native.wn_pack.fold_coupling`): the shared conditioning conv split per layer (its bias
added to the layer's in-conv bias), and the end conv's rows reordered from WaveGlow's [log s; t] to the engine's
statistic order [t; log s] (the engine's inverse is x_b = (z_b - m) * exp(-logs), WaveGlow's
x_b = (z_b - t) * exp(-log s)). A helper of :mod:`edgeflow.passes.kernels` (no pass of its own).
"""

from __future__ import annotations

import copy
from typing import Any, Dict

import numpy as np

from edgeflow.core.errors import ConfigError


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

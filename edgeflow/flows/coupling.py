"""Affine coupling (RealNVP / WaveGlow) with a WaveNet-like conditioning net.

Coupling: split x [B, C, T] into x_a = x[:, :C/2] and x_b; (log s, t) = net(x_a, cond);
z_b = x_b * exp(log s) + t; logdet = sum(log s). The inverse is x_b = (z_b - t) * exp(-log s).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from edgeflow.flows.base import InvertibleModule


class WN(nn.Module):
    """WaveNet-like conditioning net (WaveGlow's WN).

    Dilated non-causal 1-D convs (dilation 2**i), gated tanh * sigmoid with the conditioning
    added before the gate, residual and skip 1x1 convs, and a zero-initialised last layer so
    that a fresh coupling is the identity.

    Shapes: x [B, in_channels, T], cond [B, cond_channels, T] -> [B, out_channels, T].
    """

    def __init__(self, in_channels: int, cond_channels: int, out_channels: int, n_layers: int = 8,
                 channels: int = 256, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("WN kernel_size must be odd")
        self.n_layers, self.channels = n_layers, channels
        self.start = weight_norm(nn.Conv1d(in_channels, channels, 1))
        self.cond_layer = weight_norm(nn.Conv1d(cond_channels, 2 * channels * n_layers, 1))
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            d = 2 ** i
            self.in_layers.append(weight_norm(nn.Conv1d(channels, 2 * channels, kernel_size, dilation=d,
                                                        padding=d * (kernel_size - 1) // 2)))
            out = 2 * channels if i < n_layers - 1 else channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(channels, out, 1)))
        self.end = nn.Conv1d(channels, out_channels, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.start(x)
        c_all = self.cond_layer(cond)
        c2 = 2 * self.channels
        skip = 0
        for i, (conv, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = conv(h) + c_all[:, i * c2:(i + 1) * c2]
            g = torch.tanh(a[:, :self.channels]) * torch.sigmoid(a[:, self.channels:])
            rs = res_skip(g)
            if i < self.n_layers - 1:
                h = h + rs[:, :self.channels]
                skip = skip + rs[:, self.channels:]
            else:
                skip = skip + rs
        return self.end(skip)


class AffineCoupling(InvertibleModule):
    """Affine coupling layer over channels, conditioned through a WN net.

    Args:
        channels: C of x [B, C, T]; the first C // 2 channels condition the rest.
        cond_channels: channels of cond [B, cond_channels, T].
        n_layers, wn_channels, kernel_size: the WN net's size.
    """

    def __init__(self, channels: int, cond_channels: int, n_layers: int = 8, wn_channels: int = 256,
                 kernel_size: int = 3):
        super().__init__()
        self.n_a = channels // 2
        self.n_b = channels - self.n_a
        self.net = WN(self.n_a, cond_channels, 2 * self.n_b, n_layers, wn_channels, kernel_size)
        self.kernel_engine = "torch"   # "triton": WN + update through edgeflow.flows.triton_ops (set_engine)

    def _params(self, x_a, cond):
        out = self.net(x_a, cond)
        return out[:, :self.n_b], out[:, self.n_b:]

    def _triton(self, x, cond, reverse: bool):
        """Both directions through the Triton kernels: (out [B, C, T], logdet [B])."""
        from edgeflow.flows.triton_ops import coupling_update, wn_stack

        net, n_b = self.net, self.n_b
        x_a, x_b = x[:, :self.n_a], x[:, self.n_a:]
        skip = wn_stack(net.start(x_a), net, net.cond_layer(cond), None)
        w, b = net.end.weight, net.end.bias
        out, ld = coupling_update(skip, w[n_b:], b[n_b:], w[:n_b], b[:n_b], x_b, None, reverse)
        return torch.cat([x_a, out], 1), -ld if reverse else ld

    def forward(self, x, cond=None):
        if self.kernel_engine == "triton":
            return self._triton(x, cond, reverse=False)
        x_a, x_b = x[:, :self.n_a], x[:, self.n_a:]
        log_s, t = self._params(x_a, cond)
        z_b = x_b * torch.exp(log_s) + t
        return torch.cat([x_a, z_b], 1), log_s.flatten(1).sum(1)

    def inverse(self, z, cond=None):
        if self.kernel_engine == "triton":
            return self._triton(z, cond, reverse=True)
        z_a, z_b = z[:, :self.n_a], z[:, self.n_a:]
        log_s, t = self._params(z_a, cond)
        x_b = (z_b - t) * torch.exp(-log_s)
        return torch.cat([z_a, x_b], 1), -log_s.flatten(1).sum(1)


def remove_weight_norm(module: nn.Module) -> int:
    """Fold every weight-norm parametrisation under ``module`` into a plain weight. Returns the count.

    Safe on a ``copy.deepcopy`` of a model: a deep copy shares torch's injected ``Parametrized<Conv>``
    class with the original, and ``remove_parametrizations`` deletes ``weight`` from that class, which
    would break the original. Each module first gets a class of its own.
    """
    from torch.nn.utils import parametrize

    n = 0
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            cls = m.__class__
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(cls.__name__, cls.__bases__, body)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            n += 1
    return n


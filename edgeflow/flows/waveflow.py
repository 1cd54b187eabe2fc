"""WaveFlow's affine transform, autoregressive over the height of the folded waveform.

The waveform is folded to x [B, 1, h, w] (see :class:`edgeflow.flows.reshape.Fold2d`). Row i is
transformed as ``z_i = x_i * exp(log s_i) + t_i`` where (log s_i, t_i) depend on rows < i and the
conditioning. The net is a 2-D WaveNet: dilated 3x3 convs causal in height (zero-padded on top),
non-causal in width (dilation 2**layer), gated tanh * sigmoid, residual and skip 1x1 convs.

Forward (training, likelihood) is one parallel pass. The inverse is sequential over the h rows;
:meth:`WaveFlowCoupling.inverse` uses per-layer row caches (a convolution queue), so a flow costs
h single-row steps, the work of one forward pass; :meth:`inverse_plain` recomputes the whole net
for each row (h^2 row-work) and is kept as the reference.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from edgeflow.flows.base import InvertibleModule

#: Height dilations per layer used by the WaveFlow paper's reference configs, by h.
DEFAULT_DILATIONS_H = {
    2: [1] * 8, 4: [1] * 8, 8: [1] * 8, 16: [1] * 8, 32: [1, 2, 4, 1, 2, 4, 1, 2],
    64: [1, 2, 4, 8, 16, 1, 2, 4], 128: [1, 2, 4, 8, 16, 32, 64, 1],
}


class ResidualBlock2d(nn.Module):
    """One gated residual layer of the 2-D WaveNet. Shapes: x [B, C, H, W], cond [B, n_mels, H, W]."""

    def __init__(self, channels: int, cond_channels: int, kernel_size: int, dilation_h: int, dilation_w: int):
        super().__init__()
        self.channels, self.k = channels, kernel_size
        self.dh, self.dw = dilation_h, dilation_w
        self.conv = weight_norm(nn.Conv2d(channels, 2 * channels, kernel_size, dilation=(dilation_h, dilation_w),
                                          padding=(0, dilation_w * (kernel_size - 1) // 2)))
        self.cond_conv = weight_norm(nn.Conv2d(cond_channels, 2 * channels, 1))
        self.res_conv = weight_norm(nn.Conv2d(channels, channels, 1))
        self.skip_conv = weight_norm(nn.Conv2d(channels, channels, 1))
        self.skip_end: Optional[nn.Conv2d] = None   # set by WaveFlowNet.fuse: end conv o skip conv

    @property
    def receptive_rows(self) -> int:
        """Input rows one output row depends on: (k - 1) * dilation_h + 1."""
        return (self.k - 1) * self.dh + 1

    def gate(self, a: torch.Tensor, c: torch.Tensor):
        a = a + c
        g = torch.tanh(a[:, :self.channels]) * torch.sigmoid(a[:, self.channels:])
        return self.res_conv(g), (self.skip_conv if self.skip_end is None else self.skip_end)(g)

    def forward(self, x, cond_proj):
        a = self.conv(F.pad(x, (0, 0, self.receptive_rows - 1, 0)))
        res, skip = self.gate(a, cond_proj)
        return (x + res) * math.sqrt(0.5), skip

    def step(self, rows: torch.Tensor, cond_row: torch.Tensor):
        """One output row from the k input rows it depends on, stacked as [B, C, k, W] oldest first."""
        a = F.conv2d(rows, self.conv.weight, self.conv.bias, padding=(0, self.dw * (self.k - 1) // 2),
                     dilation=(1, self.dw))
        res, skip = self.gate(a, cond_row)
        return (rows[:, :, -1:] + res) * math.sqrt(0.5), skip


class WaveFlowNet(nn.Module):
    """The 2-D WaveNet predicting (log s, t). Shapes: x [B, 1, h, w], cond [B, n_mels, h, w] -> 2 x [B, 1, h, w]."""

    def __init__(self, cond_channels: int, n_layers: int = 8, channels: int = 64, kernel_size: int = 3,
                 dilations_h: Sequence[int] = (1,) * 8):
        super().__init__()
        if len(dilations_h) != n_layers:
            raise ValueError(f"need {n_layers} height dilations, got {len(dilations_h)}")
        self.n_layers = n_layers
        self.start = weight_norm(nn.Conv2d(1, channels, 1))
        self.layers = nn.ModuleList(ResidualBlock2d(channels, cond_channels, kernel_size, dh, 2 ** i)
                                    for i, dh in enumerate(dilations_h))
        self.end = nn.Conv2d(channels, 2, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)
        self.fused = False

    def fuse(self) -> None:
        """Fold the end conv into every layer's skip conv (export): ``skip_end_l = end o skip_l / sqrt(L)``.

        The end conv is linear, so ``end(sum_l skip_l(g_l) / sqrt(L)) = sum_l (end o skip_l)(g_l) / sqrt(L)``
        (the end bias goes to layer 0): each layer's ``skip_end`` has 2 outputs instead of C, the skip sum
        adds [B, 2, ., W] tensors and :meth:`head` is the identity. The ``skip_end`` convs output (log s, t)
        contributions, so quantization treats them as the coupling end (edgeflow.quant.graph). Called by the
        exporter on its frozen copy (:func:`edgeflow.export.freeze.fuse_for_export`), never on a model that
        is trained or saved afterwards: later edits of ``end``/``skip_conv`` would not reach ``skip_end``.
        """
        if self.fused:
            return
        with torch.no_grad():
            ws, bs = self.folded_skip(torch.float64)
            for layer, w, bias in zip(self.layers, ws, bs):
                old = layer.skip_conv
                new = nn.Conv2d(w.shape[1], 2, 1).to(old.weight.device, old.weight.dtype)
                new.weight.copy_(w[:, :, None, None])
                new.bias.copy_(bias)
                layer.skip_end = new.requires_grad_(False)
        self.fused = True

    def folded_skip(self, dtype: Optional[torch.dtype] = None):
        """Each layer's skip conv folded with the end conv: ``end o skip_l / sqrt(L)``, end bias in layer 0.

        Returns:
            (weights [2, C] per layer, biases [2] per layer), in ``dtype`` (default: the weights'); the
            ``skip_end`` convs' own weights once fused.
        """
        if self.fused:
            return ([l.skip_end.weight.reshape(2, -1) for l in self.layers], [l.skip_end.bias for l in self.layers])
        dt = dtype or self.end.weight.dtype
        end_w = self.end.weight.detach().reshape(2, -1).to(dt)
        scale = math.sqrt(1.0 / self.n_layers)
        ws, bs = [], []
        for i, layer in enumerate(self.layers):
            w = layer.skip_conv.weight.detach().reshape(layer.channels, -1).to(dt)
            bias = end_w @ layer.skip_conv.bias.detach().to(dt) * scale
            ws.append(end_w @ w * scale)
            bs.append(bias + self.end.bias.detach().to(dt) if i == 0 else bias)
        return ws, bs

    def head(self, skip: torch.Tensor) -> torch.Tensor:
        """(log s, t) stacked [B, 2, h, w] from the skip sum (already folded through the end conv once fused)."""
        return skip if self.fused else self.end(skip * math.sqrt(1.0 / self.n_layers))

    def forward(self, x, cond):
        h = self.start(x)
        skip = 0
        for layer in self.layers:
            h, s = layer(h, layer.cond_conv(cond))
            skip = skip + s
        out = self.head(skip)
        return out[:, :1], out[:, 1:]


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i - 1 of x (row 0 is zeros): [B, C, h, w] -> same shape."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class WaveFlowCoupling(InvertibleModule):
    """Affine transform autoregressive over rows (one WaveFlow flow), x [B, 1, h, w]."""

    def __init__(self, cond_channels: int, n_layers: int = 8, channels: int = 64, kernel_size: int = 3,
                 dilations_h: Sequence[int] = (1,) * 8):
        super().__init__()
        self.net = WaveFlowNet(cond_channels, n_layers, channels, kernel_size, dilations_h)
        self.cached = True
        self.kernel_engine = "torch"   # "triton": the inverse through edgeflow.flows.triton_ops (set_engine)

    def forward(self, x, cond=None):
        log_s, t = self.net(shift_down(x), cond)
        return x * torch.exp(log_s) + t, log_s.flatten(1).sum(1)

    def inverse(self, z, cond=None):
        if self.kernel_engine == "triton":
            from edgeflow.flows.triton_ops import waveflow_inverse
            return waveflow_inverse(self, z, cond)
        return self.inverse_cached(z, cond) if self.cached else self.inverse_plain(z, cond)

    def inverse_plain(self, z, cond):
        """Reference inverse: the whole net recomputed for each of the h rows (h^2 row-work)."""
        h = z.shape[2]
        x = torch.zeros_like(z)
        rows: List[torch.Tensor] = []
        log_s_rows: List[torch.Tensor] = []
        for i in range(h):
            log_s, t = self.net(shift_down(x), cond)
            xi = (z[:, :, i:i + 1] - t[:, :, i:i + 1]) * torch.exp(-log_s[:, :, i:i + 1])
            rows.append(xi)
            log_s_rows.append(log_s[:, :, i:i + 1])
            x = torch.cat(rows + [torch.zeros_like(z[:, :, i + 1:])], dim=2)
        return x, -torch.cat(log_s_rows, 2).flatten(1).sum(1)

    def inverse_cached(self, z, cond):
        """Row-by-row inverse with a queue of past input rows per layer: h steps of one row each."""
        net = self.net
        b, _, h, w = z.shape
        cond_proj = [layer.cond_conv(cond) for layer in net.layers]   # [B, 2C, h, w] each, once
        history: List[List[torch.Tensor]] = [[] for _ in net.layers]    # per layer: its input rows so far
        zero_row = None
        prev = torch.zeros_like(z[:, :, :1])
        out_rows: List[torch.Tensor] = []
        log_s_rows: List[torch.Tensor] = []
        for i in range(h):
            hid = net.start(prev)                                       # [B, C, 1, w]
            if zero_row is None:
                zero_row = torch.zeros_like(hid)
            skip = 0
            for li, layer in enumerate(net.layers):
                history[li].append(hid)
                taps = [history[li][i - k * layer.dh] if i - k * layer.dh >= 0 else zero_row
                        for k in range(layer.k - 1, -1, -1)]
                hid, s = layer.step(torch.cat(taps, 2), cond_proj[li][:, :, i:i + 1])
                skip = skip + s
            out = net.head(skip)
            log_s, t = out[:, :1], out[:, 1:]
            prev = (z[:, :, i:i + 1] - t) * torch.exp(-log_s)
            out_rows.append(prev)
            log_s_rows.append(log_s)
        return torch.cat(out_rows, 2), -torch.cat(log_s_rows, 2).flatten(1).sum(1)

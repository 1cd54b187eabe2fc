"""Invertible 1x1 convolutions over channels (Glow / WaveGlow), plain and LU-parametrised.

Shapes: x [B, C, T] (or [B, C, H, W]); the same C x C matrix mixes channels at every position.
``freeze()`` precomputes the inverse matrix once in float64 and stores it as a buffer, so the
exported graph needs no matrix inverse (``torch.inverse`` does not export to ONNX).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeflow.flows.base import InvertibleModule


def _positions(x: torch.Tensor) -> int:
    n = 1
    for s in x.shape[2:]:
        n *= s
    return n


def _mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Apply a channel-mixing matrix w [C, C] to x [B, C, ...] (a 1x1 conv)."""
    shape = x.shape
    y = torch.matmul(w.to(x.dtype), x.reshape(shape[0], shape[1], -1))
    return y.reshape(shape)


def _random_rotation(c: int, generator: torch.Generator | None = None) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64, device="cpu"))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _FrozenInverse(InvertibleModule):
    """Holds the optional frozen inverse buffer shared by both 1x1 variants."""

    def _init_frozen(self):
        self.register_buffer("weight_inv", None, persistent=False)

    def freeze(self) -> None:
        """Compute W^-1 once in float64 and store it as a buffer used by :meth:`inverse`."""
        with torch.no_grad():
            w = self.weight_matrix().detach().to(torch.float64)
            self.weight_inv = torch.linalg.inv(w).to(self.weight_matrix().dtype)

    def unfreeze(self) -> None:
        self.weight_inv = None

    def _inverse_matrix(self, dtype):
        if self.weight_inv is not None:
            return self.weight_inv
        w = self.weight_matrix()
        return torch.linalg.inv(w.to(torch.float64)).to(dtype)

    def forward(self, x, cond=None):
        w = self.weight_matrix()
        return _mix(x, w), self.log_abs_det().to(x.dtype).expand(x.shape[0]) * _positions(x)

    def inverse(self, z, cond=None):
        w_inv = self._inverse_matrix(z.dtype)
        return _mix(z, w_inv), -self.log_abs_det().to(z.dtype).expand(z.shape[0]) * _positions(z)


class Invertible1x1Conv(_FrozenInverse):
    """Plain invertible 1x1 conv: a free C x C weight, initialised as a random rotation (det +1).

    logdet = (number of positions) * log|det W|.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(_random_rotation(channels, generator).float())
        self._init_frozen()

    def weight_matrix(self) -> torch.Tensor:
        return self.weight

    def log_abs_det(self) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # slogdet does not export; the exported graph carries the value as a constant.
            return torch.tensor(float(torch.linalg.slogdet(self.weight.detach().double())[1]))
        return torch.linalg.slogdet(self.weight.to(torch.float64))[1].to(self.weight.dtype)


class InvertibleLU1x1Conv(_FrozenInverse):
    """LU-parametrised invertible 1x1 conv (Glow): W = P L (U + diag(sign * exp(log_s))).

    logdet = (number of positions) * sum(log_s): no determinant needed.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        w = _random_rotation(channels, generator)
        p, l, u = torch.linalg.lu(w)
        s = torch.diagonal(u)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(l.float())
        self.upper = nn.Parameter(torch.triu(u, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self._init_frozen()

    def weight_matrix(self) -> torch.Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        return self.log_s.sum()

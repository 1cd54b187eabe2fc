"""Monotonic rational-quadratic splines (Durkan et al., 2019, "Neural Spline Flows") with linear tails.

The transform maps [-B, B] onto itself through K bins whose widths, heights and inner knot derivatives
come from unconstrained parameters; outside [-B, B] it is the identity (derivative 1, which the spline
matches at the boundary knots). VITS's stochastic duration predictor uses B = 5, K = 10.

Written without boolean indexing (every element goes through the spline on a clamped input, and
``torch.where`` picks the tail), so the same code traces to a static ONNX graph.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
#: softplus(TAIL_CONST) + MIN_DERIVATIVE == 1: the boundary knots' derivative, continuous with the tails.
TAIL_CONST = math.log(math.exp(1 - MIN_DERIVATIVE) - 1)


def _knots(unnorm: Tensor, lo: float, hi: float, min_size: float) -> Tuple[Tensor, Tensor]:
    """Knot positions [..., K+1] from lo to hi and bin sizes [..., K] from unnormalised logits [..., K]."""
    k = unnorm.shape[-1]
    sizes = min_size + (1 - min_size * k) * F.softmax(unnorm, dim=-1)
    cum = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), value=0.0)
    cum = (hi - lo) * cum + lo
    cum = torch.cat([torch.full_like(cum[..., :1], lo), cum[..., 1:-1], torch.full_like(cum[..., :1], hi)], -1)
    return cum, cum[..., 1:] - cum[..., :-1]


def _bin_index(knots: Tensor, x: Tensor) -> Tensor:
    """Index of the bin [..., 1] holding x (the last knot nudged up so x == hi falls in the last bin)."""
    knots = torch.cat([knots[..., :-1], knots[..., -1:] + 1e-6], -1)
    idx = torch.sum((x[..., None] >= knots).long(), dim=-1) - 1
    return idx.clamp(0, knots.shape[-1] - 2)[..., None]


def rq_spline(x: Tensor, widths: Tensor, heights: Tensor, derivs: Tensor, inverse: bool = False,
              tail_bound: float = 5.0) -> Tuple[Tensor, Tensor]:
    """Elementwise monotonic rational-quadratic spline with linear (identity) tails.

    Args:
        x: inputs, any shape [...].
        widths, heights: unnormalised bin widths and heights [..., K].
        derivs: unnormalised derivatives at the K - 1 inner knots [..., K - 1].
        inverse: apply the inverse map.
        tail_bound: B; the spline acts on [-B, B], identity outside.

    Returns:
        (y, logabsdet), both shaped like x: y = f(x) (or f^-1(x)) and log|dy/dx| elementwise.
    """
    b = float(tail_bound)
    inside = (x >= -b) & (x <= b)
    xc = x.clamp(-b, b)
    const = torch.full_like(derivs[..., :1], TAIL_CONST)
    d = MIN_DERIVATIVE + F.softplus(torch.cat([const, derivs, const], -1))
    cw, w = _knots(widths, -b, b, MIN_BIN_WIDTH)
    ch, h = _knots(heights, -b, b, MIN_BIN_HEIGHT)
    idx = _bin_index(ch if inverse else cw, xc)
    x_k, w_k = cw.gather(-1, idx)[..., 0], w.gather(-1, idx)[..., 0]
    y_k, h_k = ch.gather(-1, idx)[..., 0], h.gather(-1, idx)[..., 0]
    s_k = h_k / w_k
    d0, d1 = d.gather(-1, idx)[..., 0], d[..., 1:].gather(-1, idx)[..., 0]
    curv = d0 + d1 - 2 * s_k
    if inverse:
        dy = xc - y_k
        a = dy * curv + h_k * (s_k - d0)
        bq = h_k * d0 - dy * curv
        c = -s_k * dy
        disc = (bq.pow(2) - 4 * a * c).clamp_min(0)
        theta = (2 * c) / (-bq - torch.sqrt(disc))
        out = theta * w_k + x_k
    else:
        theta = (xc - x_k) / w_k
    t1 = theta * (1 - theta)
    denom = s_k + curv * t1
    if not inverse:
        out = y_k + h_k * (s_k * theta.pow(2) + d0 * t1) / denom
    dnum = s_k.pow(2) * (d1 * theta.pow(2) + 2 * s_k * t1 + d0 * (1 - theta).pow(2))
    lad = torch.log(dnum) - 2 * torch.log(denom)
    if inverse:
        lad = -lad
    y = torch.where(inside, out, x)
    return y, torch.where(inside, lad, torch.zeros_like(lad))

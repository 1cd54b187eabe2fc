"""Least-squares refit of a channel-pruned HiFi-GAN generator's readers (the resblock convs, the ConvTranspose
upsamplers and conv_post).

After :func:`edgeflow.compress.generator.slice_generator` keeps the channels ``keep[group]`` of every group, each
kept reader (Conv1d or ConvTranspose1d) is re-solved so that its kept outputs reproduce the unpruned conv's
outputs on calibration inputs: what the removed input channels contributed is moved, as far as a linear map of
the kept ones can, onto them (the channel-pruning reconstruction of He et al., 2017). A ConvTranspose1d upsampler
is solved as its stride's phases (each output phase reads its own taps), so pruning a residual stream also
refits the upsampler that reads it; an upsampler whose input channels are all kept is left as sliced (each phase
has C_in x k / s unknowns per output channel: the universal V1's first upsampler, 512 x 2, sees about 2 rows
per unknown on 64 windows of 32 frames, and refitting its unpruned upsamplers lowered the cpu `fast` recipe's
gate P.808 from 3.45 to 3.35, 2026-12-04). Two modes:

* ``"independent"``: every conv is fitted on the *unpruned* generator's inputs to that conv. One pass over the
  inputs; errors made upstream are not seen downstream.
* ``"sequential"`` (default): the convs are fitted in forward order on the *pruned* generator's own inputs, each
  solution in place before the next conv sees its output, so every conv also corrects what the pruning and the
  refits upstream left over (the reconstruction as He et al. state it, on the pruned network's features). On
  the universal V1 with its last stage halved (layout "b" of bench/results/vocoders.md), 64 windows of 32 frames
  of real speech: log-mel L1 to the unpruned model 2.311 unfitted, 0.468 independent, 0.435 sequential; SNR to
  its waveform 9.6 -> 11.9 dB (2026-12-04).

Targets are the unpruned convs' outputs (pre-activation) on the kept output channels; the ridge is ``ridge`` x the
mean diagonal of the normal equations on the weights, none on the bias. Float64 normal equations.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.hifigan import Generator, channel_groups

REFIT_MODES = ("sequential", "independent")


def assign_weight(dst: nn.Module, src: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Set dst's weight (through its weight norm when the source had one, else folded) and bias."""
    if parametrize.is_parametrized(dst, "weight") and not parametrize.is_parametrized(src, "weight"):
        remove_weight_norm(dst)
    if parametrize.is_parametrized(dst, "weight"):
        dst.weight = weight.clone()                              # right_inverse: g = ||v||, v = weight
    else:
        dst.weight.copy_(weight)
    if bias is not None:
        dst.bias.copy_(bias)


@torch.no_grad()
def run_hooked(gen: Generator, inputs: Iterable[Any], handles: List[Any]) -> None:
    """Run ``gen`` in eval mode over ``inputs`` (x, or (x, g) pairs) with hooks ``handles``, then remove them and
    restore its training mode."""
    was_training = gen.training
    gen.eval()
    try:
        for item in inputs:
            x, g = item if isinstance(item, (tuple, list)) else (item, None)
            gen(x, g)
    finally:
        for h in handles:
            h.remove()
        gen.train(was_training)


def _patches(x: torch.Tensor, conv: nn.Conv1d, rows: torch.Tensor) -> torch.Tensor:
    """The conv's input patches at output positions ``rows``: [B * len(rows), C_in * k] (channel-major)."""
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    xp = F.pad(x, (p, p)).unfold(2, (k - 1) * d + 1, 1)[..., ::d]          # [B, C, T, k]
    return xp[:, :, rows].permute(0, 2, 1, 3).reshape(x.shape[0] * len(rows), -1)


def _phase_patches(x: torch.Tensor, conv: nn.ConvTranspose1d, rows: torch.Tensor, phase: int):
    """A ConvTranspose1d's (stride s, padding P) input patches at the output positions ``rows`` of one phase
    (t + P = phase mod s): output t reads input n = (t + P - k) / s through the taps k = phase, phase + s, ...
    Returns (patches [B * len(rows), C_in * taps] channel-major, the taps' kernel indices [taps])."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    taps = torch.arange(phase, k, s)
    n = (rows[:, None] + p - taps[None, :]) // s                            # [R, taps], exact division
    valid = (n >= 0) & (n < x.shape[2])
    xp = x[:, :, n.clamp(0, x.shape[2] - 1)] * valid.to(x.dtype)            # [B, C, R, taps]
    return xp.permute(0, 2, 1, 3).reshape(x.shape[0] * len(rows), -1), taps


def _normal_transposed(x: torch.Tensor, conv: nn.ConvTranspose1d, rows: torch.Tensor, y: torch.Tensor):
    """[P^T P, P^T Y] as :func:`_normal` for a ConvTranspose1d, columns (c, k) channel-major plus the bias. Each
    output phase reads its own taps, so the weight block is block-diagonal per phase: built phase by phase
    (no products of structural zeros)."""
    if conv.dilation[0] != 1 or conv.groups != 1:
        raise ConfigError("generator refit: a ConvTranspose1d with dilation or groups is not supported")
    c_in, k, s = x.shape[1], conv.kernel_size[0], conv.stride[0]
    n_w, bias = c_in * k, conv.bias is not None
    a = x.new_zeros(n_w + bias, n_w + bias, dtype=torch.float64)
    b = x.new_zeros(n_w + bias, y.shape[1], dtype=torch.float64)
    for r in range(min(s, k)):
        sel = (rows + conv.padding[0]) % s == r
        if not bool(sel.any()):
            continue
        pt, taps = _phase_patches(x.double(), conv, rows[sel], r)
        cols = (torch.arange(c_in)[:, None] * k + taps[None, :]).reshape(-1)
        if bias:
            pt = torch.cat([pt, torch.ones(pt.shape[0], 1, dtype=pt.dtype)], 1)
            cols = torch.cat([cols, torch.tensor([n_w])])
        yy = y[:, :, sel].double().permute(0, 2, 1).reshape(pt.shape[0], -1)
        a[cols[:, None], cols[None, :]] += pt.T @ pt
        b[cols] += pt.T @ yy
    return [a, b]


def _out_length(conv: nn.Module, length: int) -> int:
    """Output length of a Conv1d / ConvTranspose1d (dilation 1 for the latter) on ``length`` input samples."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if isinstance(conv, nn.ConvTranspose1d):
        return (length - 1) * s - 2 * p + k + conv.output_padding[0]
    return (length + 2 * p - conv.dilation[0] * (k - 1) - 1) // s + 1


def _rows(length: int, per_item: int) -> torch.Tensor:
    return torch.linspace(0, length - 1, min(per_item, length)).long()


def _normal(x: torch.Tensor, conv: nn.Module, rows: torch.Tensor, y: torch.Tensor, chunk: int = 8):
    """[P^T P, P^T Y] (float64) for a conv's input x [B, C_in, T] (P its patches at ``rows``, plus a ones column
    when it has a bias) and targets y [B, C_out, len(rows)], accumulated ``chunk`` items at a time."""
    if isinstance(conv, nn.ConvTranspose1d):
        return _normal_transposed(x, conv, rows, y)
    acc = None
    for s in range(0, x.shape[0], chunk):
        pt = _patches(x[s:s + chunk].double(), conv, rows)
        if conv.bias is not None:
            pt = torch.cat([pt, torch.ones(pt.shape[0], 1, dtype=pt.dtype)], 1)
        yy = y[s:s + chunk].double().permute(0, 2, 1).reshape(pt.shape[0], -1)
        ab = [pt.T @ pt, pt.T @ yy]
        acc = ab if acc is None else [u + v for u, v in zip(acc, ab)]
    return acc


def _solve(dst: nn.Module, src: nn.Module, normal, ridge: float) -> None:
    """Solve the ridge-regularized normal equations and write the weights (and bias) into ``dst``."""
    a, b = normal
    n_w = a.shape[0] - int(src.bias is not None)                      # ridge on the weights, not on the bias
    reg = torch.cat([torch.full((n_w,), ridge * float(a.diagonal()[:n_w].mean()), dtype=a.dtype),
                     a.new_zeros(a.shape[0] - n_w)])
    sol = torch.linalg.solve(a + torch.diag(reg), b)                  # [C_in * k (+ 1), C_out]
    w = sol[:n_w].T.reshape(sol.shape[1], -1, dst.kernel_size[0])             # [C_out, C_in, k]
    if isinstance(dst, nn.ConvTranspose1d):
        w = w.transpose(0, 1)                                                # its weight is [C_in, C_out, k]
    dtype = next(dst.parameters()).dtype
    assign_weight(dst, src, w.to(dtype), sol[-1].to(dtype) if src.bias is not None else None)


def _batch(inputs: List[Any]):
    """All calibration inputs as one batch (x, g): sequential refitting needs every item at every conv."""
    pairs = [item if isinstance(item, (tuple, list)) else (item, None) for item in inputs]
    if len({tuple(x.shape[1:]) for x, _ in pairs}) != 1:
        raise ConfigError("generator refit: sequential mode needs calibration windows of one length")
    x = torch.cat([x for x, _ in pairs])
    g = None if pairs[0][1] is None else torch.cat([g for _, g in pairs])
    return x, g


def _targets(gen: Generator, keep, names: List[str], out_of: Dict[str, str], x, g, per_item: int):
    """The unpruned convs' outputs at their sampled rows, kept output channels only: {name: [B, C, rows]}."""
    mods, targets = dict(gen.named_modules()), {}

    def hook(name):
        def fn(_mod, _args, out):
            y = out[:, :, _rows(out.shape[2], per_item)]
            targets[name] = (y[:, keep[out_of[name]]] if name in out_of else y).float()
        return fn

    run_hooked(gen, [(x, g)], [mods[n].register_forward_hook(hook(n)) for n in names])
    return targets


@torch.no_grad()
def refit_readers(new: Generator, gen: Generator, keep: Dict[str, torch.Tensor], inputs: Iterable[Any],
                  rows_per_item: Optional[int] = None, ridge: float = 1e-3, mode: str = "sequential") -> List[str]:
    """Least-squares refit of the pruned generator's readers (Conv1d and ConvTranspose1d), in place (see the
    module docstring).

    Args:
        new: the pruned generator (``slice_generator(gen, keep)``); changed in place.
        gen: the unpruned generator.
        keep: {group name: kept channel indices}.
        inputs: calibration inputs x [B, in_channels, F] or (x, g) pairs (sequential: all of one length F).
        rows_per_item: output positions sampled per item per conv (default 2048 independent, 512 sequential,
            whose targets are held in memory for every conv at once).
        ridge: ridge factor on the weights.
        mode: "sequential" or "independent".

    Returns:
        The refitted module names.
    """
    if mode not in REFIT_MODES:
        raise ConfigError(f"generator refit: mode must be one of {', '.join(REFIT_MODES)}, got {mode!r}")
    groups = channel_groups(gen.config)
    out_of = {w: g["name"] for g in groups for w in g["writers"]}
    in_of = {r: g["name"] for g in groups for r in g["readers"]}
    src, dst = dict(gen.named_modules()), dict(new.named_modules())
    width = {g["name"]: int(g["width"]) for g in groups}
    names = [r for grp in groups for r in grp["readers"]
             if isinstance(src[r], nn.Conv1d) or (isinstance(src[r], nn.ConvTranspose1d)
                                                 and len(keep[in_of[r]]) < width[in_of[r]])]
    if mode == "independent":
        per_item = rows_per_item or 2048
        normal = {}

        def hook(name):
            def fn(mod, args, out):
                rows = _rows(out.shape[2], per_item)
                y = out[:, :, rows]
                y = y[:, keep[out_of[name]]] if name in out_of else y
                ab = _normal(args[0][:, keep[in_of[name]]], mod, rows, y)
                normal[name] = [u + v for u, v in zip(normal[name], ab)] if name in normal else ab
            return fn

        run_hooked(gen, inputs, [src[n].register_forward_hook(hook(n)) for n in names])
        for name in names:
            _solve(dst[name], src[name], normal[name], ridge)
        return names
    x, g = _batch(list(inputs))
    per_item = rows_per_item or 512
    targets = _targets(gen, keep, names, out_of, x, g, per_item)

    def pre_hook(name):
        def fn(mod, args):                              # fitted on what the pruned generator feeds it, then run
            rows = _rows(_out_length(mod, args[0].shape[2]), per_item)
            _solve(mod, src[name], _normal(args[0], mod, rows, targets.pop(name)), ridge)
        return fn

    run_hooked(new, [(x, g)], [dst[n].register_forward_pre_hook(pre_hook(n)) for n in names])
    return names

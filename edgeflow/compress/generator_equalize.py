"""Cross-layer equalization of a HiFi-GAN generator's channels before INT8 (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019), exact in float.

onnxruntime's QDQ convs take one activation scale per tensor. A stage's residual stream is far from balanced: on
the universal HiFi-GAN V1 the last stage's resblock outputs have per-channel peaks from 0.05 to 122 (median 2.1)
on real speech, so one uint8 scale leaves most channels a few levels. Each channel ``c`` of a stage's stream is
multiplied by ``s_c`` everywhere it is written (the stage's upsampler, every conv whose output is added to the
stream: ``convs2`` of a type-1 resblock, ``convs`` of a type-2 one) and divided back where it is read (the
resblocks' first convs, the next upsampler or ``conv_post``); LeakyReLU commutes with a positive scale, the
stage's average of resblocks is linear, so the generator computes the same function. A type-1 resblock's inner
channels (between ``convs1[j]`` and ``convs2[j]``) get their own scale the same way. ``s_c = (mean r / r_c) **
alpha`` with ``r_c`` the channel's peak on calibration inputs (written or read): ``alpha`` 1 makes every channel's
peak equal, 0 changes nothing, 0.5 (SmoothQuant's migration strength) shares the imbalance between activations
and the per-output-channel weights.

Measured with fake INT8 (uint8 per-tensor activations on every conv's input and output, int8 per-channel weights;
conv_post float) on 12 held-out recordings (2026-12-04): universal V1, every conv INT8: DNSMOS P.808 3.58 -> 3.73
(float 3.90); joe-medium's decoder with its last stage float: 3.89 -> 3.93 (float 4.01), MCD 1.18 -> 1.11 dB.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch import nn

from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.hifigan import Generator, ResBlock1

#: the smallest channel peak used, relative to the largest (a dead channel would otherwise get an infinite scale).
FLOOR = 1e-3


def _run(gen: Generator, inputs: Iterable[Any]) -> List[torch.Tensor]:
    """The generator's outputs on ``inputs`` (x or (x, g) items)."""
    outs = []
    with torch.no_grad():
        for item in inputs:
            x, g = item if isinstance(item, (tuple, list)) else (item, None)
            outs.append(gen(x, g))
    return outs


def _peaks(gen: Generator, inputs: Iterable[Any], groups: Dict[str, Tuple[List[nn.Module], List[nn.Module]]]):
    """({group: per-channel peak |value| [C] of what its written modules output and its read modules take in},
    the generator's outputs), in one run over ``inputs``."""
    peak: Dict[str, torch.Tensor] = {}

    def keep(key: str, t: torch.Tensor) -> None:
        a = t.detach().abs().amax(dim=(0, 2))
        peak[key] = a if key not in peak else torch.maximum(peak[key], a)

    hooks = []
    for key, (written, read) in groups.items():
        hooks += [m.register_forward_hook(lambda mod, i, o, key=key: keep(key, o)) for m in written]
        hooks += [m.register_forward_pre_hook(lambda mod, i, key=key: keep(key, i[0])) for m in read]
    try:
        outs = _run(gen, inputs)
    finally:
        for h in hooks:
            h.remove()
    return peak, outs


def _scales(peak: torch.Tensor, alpha: float) -> torch.Tensor:
    r = peak.double().clamp_min(float(peak.max()) * FLOOR + 1e-12)
    return ((r.mean() / r) ** alpha).float()


def _scale_out(conv: nn.Module, s: torch.Tensor) -> None:
    """Multiply a conv's output channels by ``s`` (weight and bias)."""
    dim = 1 if isinstance(conv, nn.ConvTranspose1d) else 0
    shape = [1, 1, 1]
    shape[dim] = -1
    conv.weight.mul_(s.view(shape))
    if conv.bias is not None:
        conv.bias.mul_(s)


def _scale_in(conv: nn.Module, s: torch.Tensor) -> None:
    """Divide what a conv reads on each input channel by ``s`` (its weight's input dimension)."""
    dim = 0 if isinstance(conv, nn.ConvTranspose1d) else 1
    shape = [1, 1, 1]
    shape[dim] = -1
    conv.weight.div_(s.view(shape))


def _stage(gen: Generator, i: int) -> Tuple[List[nn.Module], List[nn.Module], List[nn.Module]]:
    """(writers, readers, resblocks) of stage ``i``'s residual stream."""
    k = gen.num_kernels
    blocks = list(gen.resblocks[i * k:(i + 1) * k])
    nxt = gen.ups[i + 1] if i + 1 < len(gen.ups) else gen.conv_post
    if isinstance(blocks[0], ResBlock1):
        writers = [c for b in blocks for c in b.convs2]
        readers = [c for b in blocks for c in b.convs1]
    else:
        writers = readers = [c for b in blocks for c in b.convs]
    return [gen.ups[i]] + writers, readers + [nxt], blocks


def _groups(gen: Generator, inner: bool) -> Dict[str, Tuple[List[nn.Module], List[nn.Module]]]:
    """{name: (writers, readers)}: each stage's residual stream ("stage<i>") and, with ``inner``, each type-1
    resblock pair's inner channels ("inner<b>.<j>"). Rescaling one group leaves every other group's values as
    they were (a reader absorbs its writer's scale), so all peaks come from one run."""
    groups = {}
    for i in range(len(gen.ups)):
        writers, readers, blocks = _stage(gen, i)
        groups[f"stage{i}"] = (writers, readers)
        if inner and isinstance(blocks[0], ResBlock1):
            first = i * gen.num_kernels
            for b, blk in enumerate(blocks):
                for j, (c1, c2) in enumerate(zip(blk.convs1, blk.convs2)):
                    groups[f"inner{first + b}.{j}"] = ([c1], [c2])
    return groups


def _apply(writers: List[nn.Module], readers: List[nn.Module], s: torch.Tensor) -> None:
    """Scale a group's channels by ``s`` where written, back where read."""
    for w in writers:
        if isinstance(w, nn.Conv1d) and w in readers:              # a type-2 resblock conv reads and writes
            _scale_in(w, s)
        _scale_out(w, s)
    for r in readers:
        if r not in writers:
            _scale_in(r, s)


@torch.no_grad()
def equalize_generator(gen: Generator, inputs: List[Any], alpha: float = 0.5, inner: bool = True) -> Dict[str, Any]:
    """Equalize every stage's residual stream (and type-1 resblocks' inner channels) of ``gen``, in place.

    Weight norm is folded first. Two runs over ``inputs``: the peaks (and the output), then the check that the
    result computes the same audio to float32 rounding.

    Args:
        gen: the generator, eval mode.
        inputs: calibration inputs: mel or latent windows [B, C_in, F] (or (x, g) pairs), a few batches.
        alpha: migration strength in [0, 1].
        inner: also equalize type-1 resblocks' inner channels.

    Returns:
        {"alpha", "inner", "stages": {"stage<i>": [peak spread before, after]} (largest / smallest channel peak
        of the stream), "max_rel_error": the largest |after - before| / peak |before| over the inputs}.

    Raises:
        ConfigError: alpha outside [0, 1], no inputs, or an equalized generator that drifts (a bug).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"equalize: alpha must be in [0, 1], got {alpha}")
    if not inputs:
        raise ConfigError("equalize: needs calibration inputs")
    gen.eval()
    remove_weight_norm(gen)
    groups = _groups(gen, inner)
    peaks, before = _peaks(gen, inputs, groups)
    spread: Dict[str, List[float]] = {}
    for key, (writers, readers) in groups.items():
        s = _scales(peaks[key], alpha)
        _apply(writers, readers, s)
        if key.startswith("stage"):
            p = peaks[key].clamp_min(1e-12)
            spread[key] = [round(float(p.max() / p.min()), 1), round(float((p * s).max() / (p * s).min()), 1)]
    after = _run(gen, inputs)
    err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(after, before))
    if err > 1e-3:
        raise ConfigError(f"equalize: the equalized generator differs from the original by {err:.2g} (relative)")
    return {"alpha": alpha, "inner": inner, "stages": spread, "max_rel_error": float(f"{err:.3g}")}

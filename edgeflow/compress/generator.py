"""Structured channel pruning of a HiFi-GAN :class:`edgeflow.models.hifigan.Generator` (VITS's decoder and the
stand-alone vocoder), resblock "1" or "2", with or without speaker conditioning, weight norm present or folded.

Channel groups move together; the generator's config declares them (:func:`edgeflow.models.hifigan.channel_groups`):

* ``pre``: conv_pre (and the speaker ``cond``) output = ups.0 input;
* ``stage{i}``: the residual stream of stage i = ups.i output, every conv of the stage's resblocks (the stream is
  added to after each one, so their inputs and outputs are one set), ups.{i+1} or conv_post input;
* ``inner{b}.{j}`` (resblock "1"): the inner channels of pair j of block b (convs1.j out = convs2.j in).

Importance of channel c of a group: what it feeds into the rest of the network,
``score(c) = sum over the group's readers r of E|x_r[c]| * ||W_r[:, c]||_2``, where x_r is the reader's input
(after its leaky ReLU; mean |.| over calibration inputs, batch and time) and W_r the reader's weights applied to
channel c (all its outputs and taps). A conv's response to channel c is bounded by this product, so a channel
that is exactly zero everywhere scores 0 and goes first (and its removal leaves the output unchanged). Without
calibration inputs the activation term is 1 (a weight-only score). Forward passes only, deterministic.

Optionally (``refit``) the kept readers (Conv1d; a ConvTranspose1d upsampler whose input group is pruned) are
then refitted by least squares to reproduce the unpruned convs' outputs on the calibration inputs
(:mod:`edgeflow.compress.generator_refit`, sequentially on the pruned generator's own features by default); on
joe-medium at ratio 0.5 the independent refit lowered the distance to the teacher before any distillation step
from 5.69 to 4.17 (log-mel L1 + MR-STFT, 2026-12-02).

The result is a dense, smaller ``Generator`` whose config carries the widths (``channels``, ``inner_channels``),
so checkpoints, the cost model (``decoder_flops_per_frame``) and export see it as any generator.

Example::

    small, info = prune_generator(gen, ratio=0.5, inputs=[z_windows])     # z_windows [B, C, F]
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from edgeflow.compress.generator_refit import REFIT_MODES, assign_weight, run_hooked, refit_readers
from edgeflow.compress.prune import check_ratio, kept_channels
from edgeflow.core.errors import ConfigError
from edgeflow.models.hifigan import Generator, channel_groups

SCORE = "E|reader input| x reader weight L2, summed over the group's readers"


def _conv_axes(mod: nn.Module) -> Tuple[int, int]:
    """(output axis, input axis) of a conv's weight."""
    if isinstance(mod, nn.ConvTranspose1d):
        return 1, 0
    if isinstance(mod, nn.Conv1d):
        return 0, 1
    raise ConfigError(f"generator pruning: unexpected module {type(mod).__name__} (upsamplers already in "
                      "polyphase form? prune before the export rewrite)")


def _read_norm(mod: nn.Module) -> torch.Tensor:
    """||W[:, c]||_2 over everything but the input axis: [C_in] (float64)."""
    w = mod.weight.detach().double()
    _, ax = _conv_axes(mod)
    return w.pow(2).sum(dim=[d for d in range(w.dim()) if d != ax]).sqrt()


def _readers(gen: Generator) -> Dict[str, nn.Module]:
    mods = dict(gen.named_modules())
    return {r: mods[r] for grp in channel_groups(gen.config) for r in grp["readers"]}


def input_magnitudes(gen: Generator, inputs: Iterable[Any]) -> Dict[str, torch.Tensor]:
    """Mean |input| per channel [C_in] (float64) of every reader conv over ``inputs``.

    Args:
        inputs: tensors x [B, in_channels, F], or (x, g) pairs with speaker conditioning g [B, gin, 1].
    """
    readers = _readers(gen)
    sums = {name: None for name in readers}
    counts = dict.fromkeys(readers, 0)

    def hook(name):
        def fn(_mod, args):
            x = args[0].detach().double()
            s = x.abs().sum(dim=(0, 2))
            sums[name] = s if sums[name] is None else sums[name] + s
            counts[name] += x.shape[0] * x.shape[2]
        return fn

    run_hooked(gen, inputs, [m.register_forward_pre_hook(hook(n)) for n, m in readers.items()])
    if any(c == 0 for c in counts.values()):
        raise ConfigError("generator pruning: no calibration inputs reached the generator")
    return {n: sums[n] / counts[n] for n in readers}


def channel_scores(gen: Generator, inputs: Optional[Iterable[Any]] = None) -> Dict[str, torch.Tensor]:
    """Importance of every channel of every group (see the module docstring): {group name: [width] float64}."""
    readers = _readers(gen)
    mags = input_magnitudes(gen, inputs) if inputs is not None else None
    scores = {}
    for grp in channel_groups(gen.config):
        total = None
        for r in grp["readers"]:
            s = _read_norm(readers[r]) * (mags[r] if mags is not None else 1.0)
            total = s if total is None else total + s
        scores[grp["name"]] = total
    return scores


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores in ascending channel order (ties keep the lower index)."""
    return torch.sort(torch.argsort(-score, stable=True)[:k]).values


def _select(cfg, key: str, groups: Dict[str, int]) -> Optional[List[str]]:
    """Group names a ``widths`` key selects: a group name; ``stage{i}`` or ``inner@stage{i}`` (the inner groups of
    stage i's resblocks), with i < 0 counted from the last stage (``stage-1``). ``inner@stage{i}`` may select
    nothing (resblock "2" has no inner widths); None: the key is not a group here nor a valid pattern."""
    name, at, stage = key.rpartition("@") if "@" in key else (key, "", "")
    n_stages, nk = len(cfg.upsample_rates), len(cfg.resblock_kernel_sizes)
    if not at and key.startswith("stage") and key[5:].lstrip("-").isdigit():
        i = int(key[5:])
        return [f"stage{i % n_stages}"] if -n_stages <= i < n_stages else None
    if at and name == "inner" and stage.startswith("stage") and stage[5:].lstrip("-").isdigit():
        i = int(stage[5:])
        if not -n_stages <= i < n_stages:
            return None
        blocks = range((i % n_stages) * nk, (i % n_stages + 1) * nk)
        return [g for g in groups if g.startswith("inner") and int(g[5:].split(".")[0]) in blocks]
    return [key] if key in groups else None


def plan_widths(gen: Generator, ratio: float = 0.0, widths: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    """Width kept per group: ``ratio`` of every group removed, or the ``widths`` of selected groups.

    ``widths`` keys: a group name (``stage3``, ``inner4.1``), ``stage-1`` (the last stage's residual stream) or
    ``inner@stage{i}`` (every inner group of stage i's resblocks; i may be negative); values: channels kept (an
    int) or a fraction of the group's width in (0, 1] (a float, rounded, at least 1). A pattern that matches no
    group on this generator (``inner@...`` on resblock "2") changes nothing.
    """
    check_ratio(ratio)
    groups = {g["name"]: int(g["width"]) for g in channel_groups(gen.config)}
    out = {name: kept_channels(ratio, w) for name, w in groups.items()}
    for key, w in (widths or {}).items():
        names = _select(gen.config, key, groups)
        if names is None:
            raise ConfigError(f"generator pruning: unknown channel group {key} (groups: {', '.join(groups)}; "
                              f"or stage-1, inner@stage{{i}})")
        for name in names:
            if isinstance(w, float) and 0.0 < w <= 1.0:
                out[name] = max(1, round(w * groups[name]))
            elif isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= groups[name]:
                out[name] = w
            else:
                raise ConfigError(f"generator pruning: group {name} keeps {w!r} of {groups[name]} channels "
                                  f"(a count or a fraction in (0, 1])")
    return out


@torch.no_grad()
def slice_generator(gen: Generator, keep: Dict[str, torch.Tensor]) -> Generator:
    """A dense generator with the channels ``keep[group]`` (ascending indices) of every group."""
    cfg, groups = gen.config, channel_groups(gen.config)
    ch = [len(keep["pre"])] + [len(keep[f"stage{i}"]) for i in range(len(cfg.upsample_rates))]
    inner = None
    if cfg.resblock == "1":
        inner = [[len(keep[f"inner{b}.{j}"]) for j in range(len(cfg.inner_widths(b)))]
                 for b in range(len(gen.resblocks))]
    new = Generator(cfg.replace(channels=ch, inner_channels=inner))
    p = next(gen.parameters())
    new.to(device=p.device, dtype=p.dtype)
    out_of = {w: g["name"] for g in groups for w in g["writers"]}
    in_of = {r: g["name"] for g in groups for r in g["readers"]}
    src_mods = dict(gen.named_modules())
    for name, dst in list(new.named_modules()):
        if not isinstance(dst, nn.Conv1d | nn.ConvTranspose1d) or name not in src_mods:
            continue
        src = src_mods[name]
        o_ax, i_ax = _conv_axes(src)
        w, b = src.weight.detach(), None if src.bias is None else src.bias.detach()
        if name in out_of:
            idx = keep[out_of[name]].to(w.device)
            w, b = w.index_select(o_ax, idx), None if b is None else b.index_select(0, idx)
        if name in in_of:
            w = w.index_select(i_ax, keep[in_of[name]].to(w.device))
        assign_weight(dst, src, w, b)
    new.train(gen.training)
    return new


def parameter_count(gen: nn.Module) -> int:
    """Weights of a generator, weight norm counted as its folded weight (its ``g`` vectors left out)."""
    return sum(t.numel() for k, t in gen.state_dict().items() if not k.endswith("original0"))


def prune_generator(gen: Generator, ratio: float = 0.0, widths: Optional[Dict[str, Any]] = None,
                    inputs: Optional[Iterable[Any]] = None, refit: bool = False,
                    refit_mode: str = "sequential") -> Tuple[Generator, Dict[str, Any]]:
    """Prune a HiFi-GAN generator to a dense smaller one (the source is not changed).

    Args:
        gen: the generator (weight norm present or folded; ConvTranspose upsamplers, not polyphase).
        ratio: fraction of the channels of every group removed, in [0, 1).
        widths: {group or selector: width kept, or a fraction} overriding ``ratio`` (see :func:`plan_widths`).
        inputs: calibration inputs x [B, in_channels, F] (or (x, g) pairs) for the activation term;
            None: a weight-only score.
        refit: least-squares refit of the readers on ``inputs`` (:func:`refit_readers`: the Conv1d ones, and the
            ConvTranspose1d upsamplers whose input group is pruned).
        refit_mode: "sequential" (on the pruned generator's own features, in forward order) or "independent"
            (on the unpruned generator's); see :mod:`edgeflow.compress.generator_refit`.

    Returns:
        (new generator, info {"groups": {name: [from, to]}, "score", "params": [before, after], "refit",
        "refit_mode"}).
    """
    if refit_mode not in REFIT_MODES:
        raise ConfigError(f"generator pruning: refit_mode must be one of {', '.join(REFIT_MODES)}, "
                          f"got {refit_mode!r}")
    want = plan_widths(gen, ratio, widths)
    inputs = list(inputs) if inputs is not None else None
    scores = channel_scores(gen, inputs)
    keep = {name: _top(scores[name], k) for name, k in want.items()}
    new = slice_generator(gen, keep)
    if refit:
        if inputs is None:
            raise ConfigError("generator pruning: refit needs calibration inputs")
        refit_readers(new, gen, keep, inputs, mode=refit_mode)
    info = {"groups": {g["name"]: [int(g["width"]), want[g["name"]]] for g in channel_groups(gen.config)},
            "widths": new.config.widths(), "score": SCORE if inputs is not None else "reader weight L2",
            "params": [parameter_count(gen), parameter_count(new)], "refit": bool(refit),
            "refit_mode": refit_mode if refit else None}
    return new, info


def stage_summary(info: Dict[str, Any]) -> List[str]:
    """One line per group that changed: ``name from -> to``."""
    return [f"{n} {a} -> {b}" for n, (a, b) in info["groups"].items() if a != b]

"""Fewer flows, a smaller WaveFlow height, fewer layers: a smaller model carrying over the teacher's weights.

* WaveFlow flows: keep a subset of flows (``last`` k, ``first`` k, or an even ``spread``) with their
  weights and their row orders (stored in the config's ``row_orders``).
* WaveGlow flows: the early-output structure is kept (same number of early outputs, hence the same
  channel count in every stage); each stage keeps some of its flows (first / last / spread) and
  ``n_early_every`` shrinks accordingly. Flow counts that cannot keep the structure are refused.
* WaveFlow height: the 2-D nets' weights do not depend on h and are reused as they are; the row
  orders are recomputed for the new height (the same pattern: identity, reversal, half-reversals).
* Layers: each flow keeps its first L' layers (dilations 1..2^(L'-1) unchanged); the skip sum's
  1/sqrt(L) scaling is compensated in the end conv.

Every result is an exact flow (invertible, exact logdet); quality is recovered by distillation.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from edgeflow.compress.layers import copy_conv_, family_of, finish_like, nets, rebuild, waveglow_flows
from edgeflow.core.errors import ConfigError
from edgeflow.flows.waveflow import WaveFlowNet
from edgeflow.models.waveflow import row_orders

KEEP_MODES = ("spread", "last", "first")


def pick(n: int, k: int, mode: str = "spread") -> List[int]:
    """Indices of the k of n items to keep: ``spread`` (evenly, both ends kept), ``last`` or ``first``."""
    if mode not in KEEP_MODES:
        raise ConfigError(f"reduce_flows: keep must be one of {', '.join(KEEP_MODES)}, got {mode!r}")
    if mode == "first":
        return list(range(k))
    if mode == "last" or k == 1:
        return list(range(n - k, n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def _orders_of(model) -> List[List[int]]:
    return [blk.permute.perm.tolist() for blk in model.flows.blocks]


def _waveglow_plan(cfg, n_new: int) -> Tuple[int, List[List[int]], List[int]]:
    """(new n_early_every, old flow indices of each stage, flows kept per stage): the same early outputs."""
    n, e = cfg.n_flows, cfg.n_early_every
    if not 0 < e < n:
        return e, [list(range(n))], [n_new]
    stages = [list(range(s, min(s + e, n))) for s in range(0, n, e)]
    for e_new in range(1, e + 1):
        last = n_new - e_new * (len(stages) - 1)
        if 1 <= last <= min(e_new, len(stages[-1])):
            return e_new, stages, [e_new] * (len(stages) - 1) + [last]
    valid = [str(k) for k in range(1, n + 1) if any(
        1 <= k - en * (len(stages) - 1) <= min(en, len(stages[-1])) for en in range(1, e + 1))]
    raise ConfigError(f"reduce_flows: {n_new} flows cannot keep the early-output structure of {n} flows "
                      f"(an early output every {e}); valid counts: {', '.join(valid)}")


def flow_counts(model) -> List[int]:
    """The flow counts :func:`keep_flows` accepts for this model."""
    n = model.config.n_flows
    if family_of(model) == "waveflow":
        return list(range(1, n + 1))
    ok = []
    for k in range(1, n + 1):
        try:
            _waveglow_plan(model.config, k)
            ok.append(k)
        except ConfigError:
            pass
    return ok


def count_for_fraction(model, fraction: float) -> int:
    """The accepted flow count nearest to ``fraction * n_flows`` (ties: the larger), at least 1."""
    want = max(1.0, fraction * model.config.n_flows)
    return min(flow_counts(model), key=lambda k: (abs(k - want), -k))


def keep_flows(model, n_flows: int, keep: str = "spread") -> Tuple[Any, Dict[str, Any]]:
    """A model with ``n_flows`` of the model's flows (weights carried over). Returns (model, info)."""
    fam = family_of(model)
    n = model.config.n_flows
    if not 1 <= n_flows <= n:
        raise ConfigError(f"reduce_flows: n_flows must be in [1, {n}], got {n_flows}")
    if n_flows == n:
        return model, {"kept": list(range(n))}
    if fam == "waveflow":
        kept = pick(n, n_flows, keep)
        orders = [_orders_of(model)[i] for i in kept]
        default = row_orders(model.config.height, n_flows)
        new = rebuild(model, n_flows=n_flows, row_orders=None if orders == default else orders)
        new.upsample.load_state_dict(model.upsample.state_dict())
        for j, i in enumerate(kept):
            new.flows.blocks[j].inner.load_state_dict(model.flows.blocks[i].inner.state_dict())
        return finish_like(new, model), {"kept": kept}
    e_new, stages, sizes = _waveglow_plan(model.config, n_flows)
    kept = [st[i] for st, s in zip(stages, sizes) for i in pick(len(st), s, keep)]
    new = rebuild(model, n_flows=n_flows, n_early_every=e_new)
    new.upsample.load_state_dict(model.upsample.state_dict())
    old_pairs = waveglow_flows(model)
    for (conv, coup), i in zip(waveglow_flows(new), kept):
        conv.load_state_dict(old_pairs[i][0].state_dict())
        coup.load_state_dict(old_pairs[i][1].state_dict())
    return finish_like(new, model), {"kept": kept, "n_early_every": e_new}


def _pattern(order: List[int], height: int) -> Optional[int]:
    """Which of (identity, reversal, half-reversals, both) an order is at this height, else None."""
    for i, cand in enumerate(_patterns(height)):
        if cand == list(order):
            return i
    return None


def _patterns(h: int) -> List[List[int]]:
    ident = list(range(h))
    rev = ident[::-1]
    half = h // 2
    bip = list(range(half - 1, -1, -1)) + list(range(h - 1, half - 1, -1))
    return [ident, rev, bip, [rev[j] for j in bip]]


def set_height(model, height: int) -> Tuple[Any, Dict[str, Any]]:
    """WaveFlow with a smaller height h (re-folded; weights reused; row orders recomputed)."""
    if family_of(model) != "waveflow":
        raise ConfigError("reduce_flows: height applies to WaveFlow models only")
    cfg = model.config
    if not 2 <= height <= cfg.height:
        raise ConfigError(f"reduce_flows: height must be in [2, {cfg.height}], got {height}")
    if height == cfg.height:
        return model, {"height": height}
    pats = [_pattern(o, cfg.height) for o in _orders_of(model)]
    orders = None
    if all(p is not None for p in pats):
        orders = [_patterns(height)[p] for p in pats]
        orders = None if orders == row_orders(height, cfg.n_flows) else orders
    dil = cfg.height_dilations()
    new = rebuild(model, height=height, row_orders=orders, dilations_h=dil)
    if new.config.replace(dilations_h=None).height_dilations() == dil:
        new = rebuild(model, height=height, row_orders=orders, dilations_h=None)
    new.load_state_dict(model.state_dict())
    return finish_like(new, model), {"height": height, "row_orders": "pattern kept" if all(
        p is not None for p in pats) else "default for the new height"}


def drop_layers(model, n_layers: int) -> Tuple[Any, Dict[str, Any]]:
    """Each flow keeps its first ``n_layers`` layers (end conv rescaled for the skip-sum normalisation)."""
    fam = family_of(model)
    key = "n_layers" if fam == "waveflow" else "wn_layers"
    L = getattr(model.config, key)
    if not 1 <= n_layers <= L:
        raise ConfigError(f"student {key} must be in [1, {L}], got {n_layers}")
    if n_layers == L:
        return model, {key: L}
    changes: Dict[str, Any] = {key: n_layers}
    if fam == "waveflow" and model.config.dilations_h is not None:
        changes["dilations_h"] = list(model.config.dilations_h[:n_layers])
    new = rebuild(model, **changes)
    sd = new.state_dict()
    new.load_state_dict({k: v for k, v in model.state_dict().items() if k in sd and sd[k].shape == v.shape},
                        strict=False)
    with torch.no_grad():
        for dst, src in zip(nets(new), nets(model)):
            if isinstance(src, WaveFlowNet):
                copy_conv_(dst.end, src.end, scale=math.sqrt(n_layers / L))
                continue
            c = src.channels
            copy_conv_(dst.cond_layer, src.cond_layer, out_idx=torch.arange(2 * c * n_layers))
            last = n_layers - 1
            copy_conv_(dst.res_skip_layers[last], src.res_skip_layers[last],
                       out_idx=torch.arange(c, 2 * c) if last < L - 1 else None)
    return finish_like(new, model), {key: n_layers}

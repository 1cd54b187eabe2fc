"""Prosody evaluation of an fmtts model: does the flow over-smooth less than the L2 predictor?

What arXiv 2307.16679 reports, on phone-level features (log-duration in frames, mean log-f0): the standard
deviation of the generated features against the recordings' (``spread`` = std_generated / std_recorded;
below 1: over-smoothed) and the Jensen-Shannon divergence (base 2, in [0, 1]) between the histograms of the
generated and the recorded features. The recorded features come from the model's own monotonic alignment of
each recording (as in training); the generated ones from the same texts, the flow at each temperature tau
and the L2 predictor, their durations rounded to whole frames as the model uses them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from edgeflow.data.fmtts import Item
from edgeflow.models.alignment import maximum_path
from edgeflow.models.fmtts.model import PROSODY_SEED_OFFSET, seeded_normal
from edgeflow.models.fmtts.prosody import N_FEATURES, phone_features
from edgeflow.train.fmtts import gaussian_log_likelihood

FEATURES = ("log_duration", "log_f0")


def js_divergence(a: np.ndarray, b: np.ndarray, bins: int = 30) -> float:
    """Jensen-Shannon divergence (base 2) between the histograms of samples a and b on shared bins."""
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    p = np.histogram(a, edges)[0].astype(np.float64) + 1e-12
    q = np.histogram(b, edges)[0].astype(np.float64) + 1e-12
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))


def _as_used(raw: torch.Tensor) -> torch.Tensor:
    """Generated phone features [B, 2, N] as the model uses them: the log-duration of the rounded frame count
    (:meth:`FmTts.durations`, at least one frame), so it is compared with the recordings' integer counts on
    equal terms (a continuous sample against log-integers would inflate the divergence)."""
    frames = torch.round(torch.exp(raw[:, :1])).clamp_min(1.0)
    return torch.cat([torch.log(frames), raw[:, 1:]], 1)


@torch.no_grad()
def phone_sets(model, items: List[Item], taus: Sequence[float], seed: int = 0) -> Dict[str, np.ndarray]:
    """Phone features [M, 2] (raw: log frames, log Hz) of the recordings ("recorded"), the L2 predictor ("l2")
    and the flow at each tau ("flow@TAU"), over every valid phone of ``items``."""
    from edgeflow.train.fmtts_trainer import collate

    model.eval()
    out: Dict[str, List[np.ndarray]] = {"recorded": [], "l2": [], **{f"flow@{t:g}": [] for t in taus}}
    for k, item in enumerate(items):
        b = collate([item], model.config, seed)
        h, mu_x, x_mask = model.encode(b["ids"], b["id_lens"])
        y = model.normalize_mel(b["mel"])
        attn = maximum_path(gaussian_log_likelihood(y, mu_x), x_mask.transpose(1, 2) * b["y_mask"])
        raw, _ = phone_features(attn, b["lf0"], b["voiced"])
        keep = x_mask[0, 0].bool()
        out["recorded"].append(raw[0][:, keep].T.numpy())
        out["l2"].append(_as_used(model.denormalize_prosody(model.prosody_l2(h, x_mask)))[0][:, keep].T.numpy())
        z = seeded_normal(seed + k + PROSODY_SEED_OFFSET, 1, N_FEATURES, h.shape[-1])
        for t in taus:
            f = _as_used(model.denormalize_prosody(model.prosody_flow.sample(h, x_mask, z, t)))
            out[f"flow@{t:g}"].append(f[0][:, keep].T.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def prosody_report(model, items: List[Item], taus: Sequence[float] = (0.0, 0.333, 0.667, 1.0),
                   seed: int = 0) -> Dict[str, Any]:
    """{system: {feature: {"std", "spread", "jsd"}}} for the recordings, the L2 predictor and the flow at each tau
    (see the module docstring), plus "phones": the number of phones compared."""
    sets = phone_sets(model, items, taus, seed)
    ref = sets["recorded"]
    report: Dict[str, Any] = {"phones": int(len(ref))}
    for name, feats in sets.items():
        report[name] = {f: {"std": float(feats[:, i].std()),
                            "spread": float(feats[:, i].std() / max(ref[:, i].std(), 1e-9)),
                            "jsd": js_divergence(feats[:, i], ref[:, i])} for i, f in enumerate(FEATURES)}
    return report

"""The graphs of an fmtts bundle as modules, and their parity check against PyTorch (:mod:`edgeflow.export.fmtts`).

* :class:`TextGraph`: encoder + prosody + durations (``model.onnx``);
* :class:`FieldGraph`: one evaluation of the vector field (``field.onnx``, the solver loop in the runtime);
* :class:`UnrolledGraph`: the whole ODE for a fixed step count and solver (``ode_<solver><nfe>.onnx``), its time
  grid a graph input ``steps`` [S, 3] = (t_k, dt_k, t_k + dt_k / 2) in float32 computed in float64 as
  :func:`edgeflow.core.ode.solve` does, so the sway coefficient stays a run-time choice.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from edgeflow.core.ode import step_table
from edgeflow.models.fmtts.model import PROSODY_SEED_OFFSET, FmTts, seeded_normal
from edgeflow.models.fmtts.prosody import N_FEATURES

TOLERANCE = 1e-4
VALIDATION_PHONEMES = (5, 23, 61)


class TextGraph(nn.Module):
    """Encoder + prosody (the flow at tau = scales[2] on the noise input, or the L2 predictor) + durations."""

    def __init__(self, model: FmTts, prosody: str):
        super().__init__()
        self.model, self.prosody = model, prosody

    def forward(self, ids, lengths, scales, noise_p):
        """ids [1, N] int64, lengths [1], scales [3], noise_p [1, 2, N] -> (mu_x [1, n_mels, N], normalized phone
        log-f0 [1, 1, N], durations [1, N] int64)."""
        m = self.model
        h, mu_x, mask = m.encode(ids, lengths)
        if self.prosody == "flow":
            feats, _ = m.prosody_flow.flow.inverse(noise_p * scales[2] * mask, m.prosody_flow.cond(h, mask))
        else:                                   # the input stays in the graph (the runtime always feeds it)
            feats = m.prosody_l2(h, mask) + noise_p[:, :, :1] * 0.0
        feats = feats * mask
        return mu_x, feats[:, 1:2], m.durations(feats, mask, scales[1]).long()


class FieldGraph(nn.Module):
    """One evaluation of the U-Net vector field."""

    def __init__(self, model: FmTts):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, x, cond, mask, t):
        return self.decoder(x, cond, mask, t)


class UnrolledGraph(nn.Module):
    """``n_steps`` Euler or midpoint steps of the field: (x0 [1, C, F], cond, mask, steps [S, 3]) -> y (masked)."""

    def __init__(self, model: FmTts, n_steps: int, solver: str):
        super().__init__()
        self.decoder, self.n_steps, self.solver = model.decoder, n_steps, solver

    def forward(self, x0, cond, mask, steps):
        """x0 [1, C, F], cond [1, C + 1, F], mask [1, 1, F], steps [S, 3] -> x(1) [1, C, F]."""
        x = x0
        for k in range(self.n_steps):
            t, dt, t_mid = steps[k, 0:1], steps[k, 1], steps[k, 2:3]
            v = self.decoder(x, cond, mask, t)
            if self.solver == "midpoint":
                v = self.decoder(x + v * (dt / 2.0), cond, mask, t_mid)
            x = x + v * dt
        return x * mask


def ode_steps(nfe: int, solver: str, sway: float) -> np.ndarray:
    """The ``steps`` input of an :class:`UnrolledGraph`: float32 [S, 3] rows (t, dt, t + dt / 2)."""
    return step_table(nfe, solver, sway)


def example_ids(cfg, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, n]).integers(0, cfg.num_symbols, size=(1, n)).astype(np.int64)


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-6))


def validate_parity(text, field, model: FmTts, prosody: str, scales=(0.667, 1.0, 0.667),
                    seed: int = 0) -> Dict[str, Any]:
    """onnxruntime vs PyTorch per graph: the text graph at several phoneme counts (equal durations, mu_x and f0
    within :data:`TOLERANCE` relative) and the field at several frame counts and times (half-masked batch 2)."""
    cfg, sc, cases = model.config, np.asarray(scales, dtype=np.float32), []
    for n in VALIDATION_PHONEMES:
        ids = example_ids(cfg, n, seed)
        z = seeded_normal(seed + PROSODY_SEED_OFFSET, 1, N_FEATURES, n)
        mu, f0, dur = text.run(None, {"input": ids, "input_lengths": np.array([n], np.int64), "scales": sc,
                                      "noise_p": z.numpy()})
        with torch.no_grad():
            h, r_mu, mask = model.encode(torch.from_numpy(ids), torch.tensor([n]))
            feats = model.predict_prosody(h, mask, prosody, float(sc[2]), z) * mask
            r_dur = model.durations(feats, mask, float(sc[1]))
        same = bool(np.array_equal(dur, r_dur.long().numpy()))
        err = max(_rel(mu, r_mu.numpy()), _rel(f0, feats[:, 1:2].numpy())) if same else float("inf")
        cases.append({"graph": "text", "phonemes": n, "durations_equal": same, "rel_err": err})
    cases += field_parity(field, model, seed)
    worst = max(c["rel_err"] for c in cases)
    return {"tolerance": TOLERANCE, "measure": "max abs error / max abs reference", "rel_err": worst,
            "passed": bool(worst <= TOLERANCE), "scales": [round(float(s), 6) for s in sc], "cases": cases}


def field_parity(field, model: FmTts, seed: int = 0) -> List[Dict[str, Any]]:
    """onnxruntime session ``field`` vs ``model.decoder`` at two frame counts and three times (a half-masked
    batch of 2): one case {graph "field", frames, t, rel_err} each."""
    cfg, cases, rng = model.config, [], np.random.default_rng(seed)
    for frames in (cfg.frame_multiple * 4, cfg.frame_multiple * 25):
        x = rng.standard_normal((2, cfg.n_mels, frames)).astype(np.float32)
        cond = rng.standard_normal((2, cfg.n_mels + 1, frames)).astype(np.float32)
        mask = np.ones((2, 1, frames), np.float32)
        mask[1, :, frames // 2 + 1:] = 0.0
        for t in (0.0, 0.37, 1.0):
            tt = np.full(2, t, np.float32)
            v = field.run(None, {"x": x, "cond": cond, "mask": mask, "t": tt})[0]
            with torch.no_grad():
                ref = model.decoder(*(torch.from_numpy(a) for a in (x, cond, mask, tt))).numpy()
            cases.append({"graph": "field", "frames": frames, "t": t, "rel_err": _rel(v, ref)})
    return cases


def validate_unrolled(session, model: FmTts, nfe: int, solver: str, seed: int = 0) -> Dict[str, Any]:
    """The unrolled graph vs ``model.sample_ode`` on random inputs (half-masked), at sway -1, 0 and 0.5."""
    cfg, rng, cases = model.config, np.random.default_rng(seed), []
    for frames in (cfg.frame_multiple * 4, cfg.frame_multiple * 25):
        x0 = rng.standard_normal((1, cfg.n_mels, frames)).astype(np.float32)
        cond = rng.standard_normal((1, cfg.n_mels + 1, frames)).astype(np.float32)
        mask = np.ones((1, 1, frames), np.float32)
        mask[..., frames // 2 + 1:] = 0.0
        for sway in (-1.0, 0.0, 0.5):
            y = session.run(None, {"x0": x0, "cond": cond, "mask": mask, "steps": ode_steps(nfe, solver, sway)})[0]
            with torch.no_grad():
                ref = model.sample_ode(*(torch.from_numpy(a) for a in (x0, cond, mask)), nfe, solver, sway).numpy()
            cases.append({"graph": "unrolled", "frames": frames, "sway": sway, "rel_err": _rel(y, ref)})
    worst = max(c["rel_err"] for c in cases)
    return {"nfe": nfe, "solver": solver, "rel_err": worst, "passed": bool(worst <= TOLERANCE), "cases": cases}

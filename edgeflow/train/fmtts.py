"""The flow-matching TTS objective (Matcha-TTS's losses, Mehta et al. 2024) on the one training loop.

Per batch::

    h, mu_x = text encoder(ids)                                   (mu_x: normalized-mel space, per phone)
    path    = MAS on log N(y | mu_x, I)  (no gradient)            (edgeflow.models.alignment)
    prior   = mean over valid frames and bands of 0.5 ((y - mu_x expanded)^2 + log 2 pi)
    prosody = flow NLL + L2 MSE of the phone features (log-duration from the path, mean log-f0 of the
              recordings over each phone's frames), both on h detached
    cfm     = OT-CFM on the decoder window: t ~ U(0, 1), z ~ N(0, I),
              y_t = (1 - (1 - sigma_min) t) z + t y,  u = y - (1 - sigma_min) z,
              mean over valid frames and bands of (v(y_t, cond, t) - u)^2, with the conditioning
              (mu_x expanded, phone log-f0 expanded) zeroed for a ``cfg_dropout`` fraction of items
    loss    = cfm + prior + prosody_flow + prosody_l2

All randomness of a step (t, z, decoder windows, guidance dropout) is in the batch (drawn from the step's
seed by the trainer), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import torch

from edgeflow.models.alignment import maximum_path
from edgeflow.models.fmtts.model import pad_frames
from edgeflow.models.fmtts.prosody import phone_features
from edgeflow.train.recipe import TrainConfig
from edgeflow.train.vits import slice_segments

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass
class FmTtsTrainConfig(TrainConfig):
    """Training settings of an fmtts recipe: :class:`TrainConfig` (``batch_size`` counts utterances;
    ``segment_length`` / ``valid_segment`` unused) plus ``max_seconds`` (longer utterances are left out),
    ``ckpt_minutes`` (also checkpoint when this many minutes passed since the last one; 0: off) and ``init``
    (an fmtts model.pt of the same architecture to warm-start a new run from, e.g. on a larger corpus of the
    same voice: ``--set init=MODEL.pt``; "" for none; ignored when resuming) and ``ema`` (decay of an
    exponential moving average of the weights, which validation scores and model.pt / best.pt hold; 0: none;
    0.998 averages over about the last 500 steps), ``init_fresh`` (comma-separated top-level modules, e.g.
    "decoder", that keep their fresh init in a warm start, so a new vector field can be trained on a warm
    encoder and prosody model) and ``max_minutes`` (stop, with a checkpoint, after this much training time
    counted across resumes; 0: no cap)."""

    batch_size: int = 16
    lr: float = 1e-4
    grad_clip: float = 1.0
    max_seconds: float = 12.0
    ckpt_minutes: float = 5.0
    init: str = ""
    ema: float = 0.0
    init_fresh: str = ""
    max_minutes: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not (self.max_seconds > 0 and self.ckpt_minutes >= 0 and 0 <= self.ema < 1 and self.max_minutes >= 0):
            raise ValueError(f"need max_seconds > 0, ckpt_minutes >= 0, max_minutes >= 0 and 0 <= ema < 1, got "
                             f"max_seconds={self.max_seconds!r}, ckpt_minutes={self.ckpt_minutes!r}, "
                             f"max_minutes={self.max_minutes!r}, ema={self.ema!r}")

    @property
    def fresh_modules(self) -> tuple:
        """``init_fresh`` as a tuple of module names."""
        return tuple(n.strip() for n in self.init_fresh.split(",") if n.strip())


def gaussian_log_likelihood(y: Tensor, mu_x: Tensor) -> Tensor:
    """log N(y[:, :, t] | mu_x[:, :, i], I) summed over bands: [B, N, F] (y [B, C, F], mu_x [B, C, N])."""
    c = y.shape[1]
    return (-0.5 * c * LOG_2PI - 0.5 * (y ** 2).sum(1).unsqueeze(1) + torch.matmul(mu_x.transpose(1, 2), y)
            - 0.5 * (mu_x ** 2).sum(1).unsqueeze(-1))


def dequantize(raw: Tensor, dur: Tensor, u) -> Tensor:
    """Phone features [B, 2, N] with the log-duration dequantized for the flow's likelihood: log(d - 0.5 + u),
    u [B, N] uniform in [0, 1) (the batch's ``dur_u``), so a continuous density models integer frame counts
    (without it the flow's NLL of log-integers falls without bound and its gradient swamps the others under
    one clipping norm); rounding, as :meth:`FmTts.durations` does, maps every dequantized value back to d.
    ``u`` None: unchanged."""
    if u is None:
        return raw
    logd = torch.log((dur - 0.5 + u[:, :dur.shape[1]]).clamp_min(0.5))
    return torch.cat([logd.unsqueeze(1), raw[:, 1:]], 1)


def cfm_loss(model, y: Tensor, cond: Tensor, mask: Tensor, t: Tensor, z: Tensor) -> Tensor:
    """OT-CFM loss (mean over valid frames and bands). y, z [B, C, S], cond [B, C + 1, S], mask [B, 1, S], t [B]."""
    s = model.config.sigma_min
    tt = t.view(-1, 1, 1)
    y_t = (1 - (1 - s) * tt) * z + tt * y
    u = y - (1 - s) * z
    v = model.decoder(y_t * mask, cond, mask, t)
    return ((v - u) ** 2 * mask).sum() / (mask.sum() * y.shape[1])


class FmTtsObjective:
    """The loop's objective: :meth:`loss` (see the module docstring). Batch keys: see
    :func:`edgeflow.train.fmtts_trainer.collate`."""

    @staticmethod
    def aligned(model, b: Dict[str, Any]) -> Dict[str, Tensor]:
        """The batch's whole utterances on the MAS path: h, x_mask, y (normalized mel), y_mask, raw / feats
        (phone features, raw and normalized), dur, cond [B, n_mels + 1, F] (the decoder's conditioning) and
        prior (the encoder's loss, a scalar)."""
        h, mu_x, x_mask = model.encode(b["ids"], b["id_lens"])
        y_mask = b["y_mask"]
        y = model.normalize_mel(b["mel"]) * y_mask
        with torch.no_grad():
            attn = maximum_path(gaussian_log_likelihood(y, mu_x), x_mask.transpose(1, 2) * y_mask)   # [B, N, F]
        raw, dur = phone_features(attn, b["lf0"], b["voiced"])
        feats = model.normalize_prosody(raw) * x_mask
        cond = model.expand(mu_x, feats[:, 1:2], attn)
        prior = (0.5 * ((y - cond[:, :-1]) ** 2 + LOG_2PI) * y_mask).sum() / (y_mask.sum() * model.config.n_mels)
        return {"h": h, "x_mask": x_mask, "y": y, "y_mask": y_mask, "raw": raw, "feats": feats, "dur": dur,
                "cond": cond, "prior": prior}

    def terms(self, model, b: Dict[str, Any]) -> Dict[str, Tensor]:
        """Every loss term (scalars) and the alignment's durations."""
        a = self.aligned(model, b)
        h, x_mask, y, y_mask, raw, dur, cond = (a[k] for k in ("h", "x_mask", "y", "y_mask", "raw", "dur", "cond"))
        deq = model.normalize_prosody(dequantize(raw, dur, b.get("dur_u"))) * x_mask
        flow_nll = model.prosody_flow.nll(h.detach(), x_mask, deq)
        l2 = model.prosody_l2.loss(h.detach(), x_mask, a["feats"])
        prior = a["prior"]
        seg = b["z"].shape[-1]
        y_s, cond_s, m_s = (slice_segments(v, b["seg_start"], seg) for v in (y, cond, y_mask))
        cond_s = cond_s * b["keep_cond"].view(-1, 1, 1)
        cfm = cfm_loss(model, y_s, cond_s, m_s, b["t"], b["z"])
        return {"cfm": cfm, "prior": prior, "flow_nll": flow_nll, "l2": l2, "durations": dur}

    def loss(self, model, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, float]]:
        out = self.terms(model, batch)
        total = out["cfm"] + out["prior"] + out["flow_nll"] + out["l2"]
        return total, {k: float(out[k].detach()) for k in ("cfm", "prior", "flow_nll", "l2")}


def window_frames(config, longest: int) -> int:
    """Decoder window of a batch whose longest utterance has ``longest`` frames (a multiple of the U-Net's)."""
    seg = config.segment_frames or longest
    return pad_frames(min(seg, longest) if config.segment_frames else seg, config.frame_multiple)

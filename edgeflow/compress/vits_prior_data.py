"""Distillation data of a VITS voice's prior flow and duration model, made by the teacher itself.

Text: the ``distillation`` sentences of :mod:`edgeflow.data.tts_text` plus ``generated`` sentences of
:func:`edgeflow.data.text.generate_sentences` (any that equal an evaluation sentence are dropped), phonemized
as the runtime does (espeak-ng, or the text's own codepoints for ``phoneme_type`` "text") into Piper ids.
Utterance ``i`` uses seed ``seed + i`` for all its noise (:func:`edgeflow.models.vits.model.duration_noise`,
``prior_noise``), exactly as synthesis would draw it, so a student sees the teacher's noise and durations.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from edgeflow.core.errors import ConfigError
from edgeflow.models.vits.flows import FlowCond
from edgeflow.models.vits.model import Vits, duration_noise, prior_noise

Tensor = torch.Tensor


def distillation_texts(generated: int, seed: int = 0) -> List[str]:
    """The distillation sentences, then ``generated`` generated ones; never an evaluation sentence."""
    from edgeflow.data.text import generate_sentences
    from edgeflow.data.tts_text import sentences

    held = set(sentences("evaluation"))
    return [t for t in sentences("distillation") + generate_sentences(max(0, int(generated)), seed) if t not in held]


def phoneme_ids(model: Vits, texts: Sequence[str], max_ids: int = 400) -> List[List[int]]:
    """Piper id sequences, one per sentence of ``texts`` (the runtime's front-end), longer than 3 ids and
    at most ``max_ids`` long (longer sentences are dropped).

    Raises:
        ConfigError: the model has no phoneme_id_map.
    """
    from edgeflow import text as frontend

    c = model.config
    if not c.phoneme_id_map:
        raise ConfigError("this VITS model has no phoneme_id_map (its text front-end is unknown)")
    out: List[List[int]] = []
    for t in texts:
        if c.phoneme_type == "text":
            cleaned = unicodedata.normalize("NFD", frontend.clean_text(t).casefold())
            sents = [list(cleaned)] if cleaned.strip() else []
        else:
            sents = frontend.phonemize_iter(t, c.espeak_voice)
        for ph in sents:
            ids = frontend.phonemes_to_ids(ph, c.phoneme_id_map)
            if 3 < len(ids) <= max_ids:
                out.append(ids)
    return out


@dataclasses.dataclass
class Utterance:
    """One sentence through the teacher.

    Attributes:
        ids: phoneme ids [N]. seed: its noise seed.
        hidden: text encoder hidden states [H, N] (the duration models' input).
        noise_w_z: duration noise [2, N] (unscaled). logw: the teacher's log durations [N] at noise_w.
        z_p: prior sample [C, F] (m + noise * exp(logs) * noise_scale). z: teacher flow's inverse of z_p [C, F].
    """

    ids: Tensor
    seed: int
    hidden: Tensor
    noise_w_z: Tensor
    logw: Tensor
    z_p: Optional[Tensor] = None
    z: Optional[Tensor] = None


@torch.no_grad()
def teacher_utterances(teacher: Vits, ids: Sequence[Sequence[int]], seed: int = 0, prior: bool = True,
                       progress: Optional[Callable[[int, int], None]] = None) -> List[Utterance]:
    """Run the teacher on every sentence at its default scales with the seeded noise of synthesis.

    Args:
        teacher: the VITS model (eval mode is set on a float32 CPU copy's modules as used).
        ids: id sequences. seed: utterance i uses ``seed + i``.
        prior: also compute z_p and the teacher's z (frames; skipped for duration-only data).
        progress: called with (done, total) after each sentence.
    """
    teacher = teacher.eval()
    c = teacher.config
    out = []
    for i, seq in enumerate(ids):
        s = seed + i
        x = torch.tensor([list(seq)], dtype=torch.long)
        n = x.shape[1]
        nwz = torch.from_numpy(duration_noise(s, n))
        h, _, _, x_mask = teacher.enc_p(x, torch.tensor([n]))
        utt = Utterance(ids=x[0], seed=s, hidden=h[0].clone(), noise_w_z=nwz[0], logw=torch.zeros(n))
        if c.use_sdp:
            utt.logw = teacher.dp.sample_logw(h, x_mask, nwz * c.noise_w)[0, 0]
        else:
            utt.logw = teacher.dp(h, x_mask)[0, 0]
        if prior:
            m, logs, _, y_mask = teacher.encode_text(x, torch.tensor([n]), nwz, c.length_scale, c.noise_w)
            nz = torch.from_numpy(prior_noise(s, 0, m.shape[2], c.inter_channels))
            utt.z_p = (m + nz * torch.exp(logs) * c.noise_scale)[0]
            utt.z = teacher.flow.inverse(utt.z_p[None], FlowCond(y_mask))[0][0]
        out.append(utt)
        if progress is not None:
            progress(i + 1, len(ids))
    return out


def split(utts: List[Utterance], held_out: float, seed: int) -> tuple:
    """(train, held-out) utterances: a seeded ``held_out`` fraction (at least 1, and 1 left to train)."""
    if len(utts) < 2:
        raise ConfigError(f"need at least 2 distillation sentences, got {len(utts)}")
    order = np.random.default_rng([seed, 7]).permutation(len(utts))
    k = min(len(utts) - 1, max(1, int(round(held_out * len(utts)))))
    return [utts[i] for i in order[k:]], [utts[i] for i in order[:k]]


def frame_windows(utts: Sequence[Utterance], picks: Sequence[tuple], window: int, margin: int):
    """A padded batch of prior windows: per pick (utterance index, start frame) the frames
    [start - margin, start + window + margin) clipped to the sentence.

    Returns:
        (z_p [B, C, W'], z [B, C, W'], mask [B, 1, W'] (valid frames), loss_mask [B, 1, W'] (the window's own
        frames, not its context margin)).
    """
    pieces = []
    for u, a in picks:
        f = utts[u].z_p.shape[1]
        lo, hi = max(0, a - margin), min(f, a + window + margin)
        pieces.append((utts[u], lo, hi, a - lo, min(f, a + window) - lo))
    width = max(hi - lo for _, lo, hi, _, _ in pieces)
    c = pieces[0][0].z_p.shape[0]
    zp, z = torch.zeros(len(pieces), c, width), torch.zeros(len(pieces), c, width)
    mask, lmask = torch.zeros(len(pieces), 1, width), torch.zeros(len(pieces), 1, width)
    for b, (u, lo, hi, a, e) in enumerate(pieces):
        zp[b, :, :hi - lo], z[b, :, :hi - lo] = u.z_p[:, lo:hi], u.z[:, lo:hi]
        mask[b, :, :hi - lo] = 1
        lmask[b, :, a:e] = 1
    return zp, z, mask, lmask


def random_picks(utts: Sequence[Utterance], n: int, window: int, rng: np.random.Generator) -> List[tuple]:
    """``n`` (utterance, start) picks: utterances uniformly, a start uniform over the sentence's windows."""
    out = []
    for u in rng.integers(0, len(utts), size=n):
        f = utts[int(u)].z_p.shape[1]
        out.append((int(u), int(rng.integers(0, max(1, f - window + 1)))))
    return out


def padded_hidden(utts: Sequence[Utterance]):
    """(hidden [B, H, N], noise_w_z [B, 2, N], logw [B, 1, N], mask [B, 1, N]) padded to the longest."""
    n = max(u.ids.shape[0] for u in utts)
    hch = utts[0].hidden.shape[0]
    h, nwz = torch.zeros(len(utts), hch, n), torch.zeros(len(utts), 2, n)
    logw, mask = torch.zeros(len(utts), 1, n), torch.zeros(len(utts), 1, n)
    for b, u in enumerate(utts):
        k = u.ids.shape[0]
        h[b, :, :k], nwz[b, :, :k], logw[b, 0, :k], mask[b, 0, :k] = u.hidden, u.noise_w_z, u.logw, 1
    return h, nwz, logw, mask

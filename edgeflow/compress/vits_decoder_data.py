"""Distillation pairs for a VITS decoder: (latent z windows of the current model, the teacher's audio windows).

For every sentence (the "distillation" sentences of :mod:`edgeflow.data.tts_text`, then generated ones from
:func:`edgeflow.data.text.generate_sentences`; never the "evaluation" sentences) and each of several noise seeds:

1. the sentence's phoneme ids through the model's own front-end (espeak-ng phonemes -> Piper ids, as the
   runtime and :class:`edgeflow.validate.tts_systems.TorchVoice` do);
2. the TEACHER (the unoptimized model) runs :meth:`Vits.encode_text` with the duration noise of the seed
   (:func:`edgeflow.models.vits.model.duration_noise`) -> durations; then :meth:`Vits.decode_frames` with the
   prior noise of the seed (:func:`edgeflow.models.vits.model.prior_noise`) -> the teacher's audio;
3. the CURRENT model (the one whose decoder is trained; an earlier pass may have changed its text encoder or
   prior flow) runs its text encoder, expands it with the teacher's durations (:func:`generate_path`), draws
   z_p with the SAME prior noise and inverts its own prior flow -> its latent z [1, C, F];
4. aligned windows of ``window_frames`` frames (half-overlapping) with ``margin`` context frames each side are
   cut: z[:, :, a - M:a + W + M] and audio[a * hop:(a + W) * hop].

So the decoder learns to map what the current model's flow produces to what the teacher says. The target is the
whole-utterance teacher audio; the margin (cut off before the loss) gives the student the context the teacher
had, so the window's zero padding does not make the target unreachable (VITS training itself skips this).
"""

from __future__ import annotations

import math
import time
import unicodedata
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from edgeflow.compress.generator_distill import GeneratorWindows
from edgeflow.core.errors import ConfigError
from edgeflow.models.vits.flows import FlowCond
from edgeflow.models.vits.model import Vits, duration_noise, prior_noise
from edgeflow.models.vits.modules import generate_path


def distillation_texts(n: int, seed: int = 0) -> List[str]:
    """``n`` training sentences: the "distillation" part first, then generated sentences (``seed``); any sentence
    equal to an "evaluation" one is skipped."""
    from edgeflow.data.text import generate_sentences
    from edgeflow.data.tts_text import sentences

    held_out = set(sentences("evaluation"))
    out = [t for t in sentences("distillation") if t not in held_out][:n]
    k = max(0, n - len(out))
    extra = [t for t in dict.fromkeys(generate_sentences(2 * k + 8, seed)) if t not in held_out and t not in out]
    return out + extra[:k]


def sentence_ids(model: Vits, text: str) -> List[List[int]]:
    """Phoneme id sequences of ``text``, one per sentence, with the model's front-end (its phoneme map)."""
    from edgeflow import text as frontend

    c = model.config
    if not c.phoneme_id_map:
        raise ConfigError("decoder distillation: the model has no phoneme_id_map to turn text into ids")
    if c.phoneme_type == "text":
        cleaned = unicodedata.normalize("NFD", frontend.clean_text(text).casefold())
        sents = [list(cleaned)] if cleaned.strip() else []
    else:
        sents = frontend.phonemize_iter(text, c.espeak_voice)
    return [frontend.phonemes_to_ids(p, c.phoneme_id_map) for p in sents]


@torch.no_grad()
def utterance_pair(teacher: Vits, current: Vits, ids: Sequence[int], seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z [1, C, F] of the current model, teacher audio [1, 1, F * hop]) for one id sequence and noise seed,
    at the teacher's default scales."""
    c = teacher.config
    x = torch.as_tensor(list(ids), dtype=torch.long).reshape(1, -1)
    lengths = torch.tensor([x.shape[1]])
    nwz = torch.from_numpy(duration_noise(seed, x.shape[1]))
    m_t, logs_t, dur, y_mask = teacher.encode_text(x, lengths, nwz, c.length_scale, c.noise_w)
    frames = m_t.shape[2]
    nz = torch.from_numpy(prior_noise(seed, 0, frames, c.inter_channels))
    audio = teacher.decode_frames(m_t, logs_t, nz, c.noise_scale, y_mask)
    _, m_p, logs_p, x_mask = current.enc_p(x, lengths)
    attn = generate_path(dur[:, None, :].to(m_p.dtype), x_mask.unsqueeze(2) * y_mask.unsqueeze(-1)).squeeze(1)
    m_f = torch.matmul(attn, m_p.transpose(1, 2)).transpose(1, 2)
    logs_f = torch.matmul(attn, logs_p.transpose(1, 2)).transpose(1, 2)
    z_p = m_f + nz * torch.exp(logs_f) * current.config.noise_scale
    z, _ = current.flow.inverse(z_p, FlowCond(y_mask, None))
    return z * y_mask, audio


def cut_windows(z: torch.Tensor, audio: torch.Tensor, window: int, hop: int, margin: int = 0
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Half-overlapping windows of ``window`` centre frames with ``margin`` context frames each side:
    (z [K, C, W + 2 M], audio [K, 1, W * hop] of the centre frames); K = 0 if the utterance is too short."""
    frames, span = z.shape[2], window + 2 * margin
    starts = list(range(0, frames - span + 1, max(1, window // 2)))
    if not starts:
        return z.new_zeros(0, z.shape[1], span), audio.new_zeros(0, 1, window * hop)
    zs = torch.cat([z[:, :, a:a + span] for a in starts])
    ys = torch.cat([audio[:, :, (a + margin) * hop:(a + margin + window) * hop] for a in starts])
    return zs, ys


def decoder_windows(teacher: Vits, current: Vits, texts: Sequence[str], seeds_per_sentence: int = 2,
                    window_frames: int = 32, seed: int = 0, valid_fraction: float = 0.1, margin: int = 4,
                    log: Optional[Callable[[str], None]] = print) -> Tuple[GeneratorWindows, GeneratorWindows]:
    """(train, valid) windows for the current model's decoder (``margin`` context frames each side of the
    ``window_frames`` centre frames); the last ``valid_fraction`` of the sentences (at least one) are held out whole.

    Raises:
        ConfigError: a multi-speaker model, mismatched hop / latent channels, or no window at all.
    """
    if teacher.config.n_speakers > 1 or current.config.n_speakers > 1:
        raise ConfigError("decoder distillation: multi-speaker VITS models are not supported yet")
    if (teacher.config.hop_length, teacher.config.inter_channels) != \
            (current.config.hop_length, current.config.inter_channels):
        raise ConfigError("decoder distillation: the teacher and the current model differ in hop or latent channels")
    teacher, current = teacher.eval(), current.eval()
    hop, n_valid = current.config.hop_length, max(1, int(round(len(texts) * valid_fraction)))
    parts = {"train": ([], []), "valid": ([], [])}
    t0 = time.time()
    for k, text in enumerate(texts):
        part = parts["valid" if k >= len(texts) - n_valid else "train"]
        for i, ids in enumerate(sentence_ids(teacher, text)):
            for j in range(seeds_per_sentence):
                z, audio = utterance_pair(teacher, current, ids, seed * 1_000_003 + 1000 * k + 10 * i + j)
                zs, ys = cut_windows(z, audio, window_frames, hop, margin)
                part[0].append(zs)
                part[1].append(ys)
        if log is not None and (k + 1) % max(1, len(texts) // 5) == 0:
            el = time.time() - t0
            log(f"decoder data: {k + 1}/{len(texts)} sentences, {el:.0f} s, about "
                f"{math.ceil(el / (k + 1) * (len(texts) - k - 1))} s left")
    out = []
    for name in ("train", "valid"):
        zs, ys = parts[name]
        z, y = (torch.cat(zs), torch.cat(ys)) if zs else (None, None)
        if z is None or z.shape[0] == 0:
            raise ConfigError(f"decoder distillation: no {name} window of {window_frames} frames (sentences too short or "
                              "too few)")
        out.append(GeneratorWindows(z.contiguous(), y.contiguous(), margin=margin))
    return out[0], out[1]

"""Spectral losses in torch (distillation and vocoder training): waveform L1, log-mel L1 and a differentiable
multi-resolution STFT distance.

The STFT distance follows :func:`edgeflow.validate.metrics.mr_stft_distance` (same resolutions,
centred frames with reflect padding, periodic Hann window, spectral convergence + mean |log-magnitude
difference| with magnitudes floored at 1e-7), so the training loss and the reported metric agree.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

#: (n_fft, hop, win): those of :data:`edgeflow.validate.metrics.RESOLUTIONS` (not imported: validate is a
#: later layer; a test keeps the two equal).
RESOLUTIONS: Tuple[Tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
_MAG_FLOOR = 1e-7


def usable_resolutions(length: int, resolutions: Sequence[Tuple[int, int, int]] = RESOLUTIONS
                       ) -> List[Tuple[int, int, int]]:
    """The resolutions whose FFT fits a segment of ``length`` samples (at least one, scaled down if needed)."""
    keep = [r for r in resolutions if r[0] <= length]
    if keep:
        return keep
    n = 1 << max(3, (max(length, 16) // 2).bit_length() - 1)      # largest power of two <= length / 2
    return [(n, n // 4, n)]


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """|STFT| of x [B, T] -> [B, n_fft // 2 + 1, frames] (centred, reflect padding, periodic Hann)."""
    window = torch.hann_window(win, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return spec.abs()


def mr_stft_loss(pred: torch.Tensor, target: torch.Tensor,
                 resolutions: Sequence[Tuple[int, int, int]] = RESOLUTIONS, sc: bool = True) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + log-magnitude L1 (a scalar; 0 for equal inputs).

    Args:
        pred, target: waveforms [B, T] (computed in float32 at least).
        resolutions: (n_fft, hop, win) triples; those longer than T are replaced by one that fits.
        sc: include the spectral-convergence term (False: log-magnitude L1 alone, which does not reward
            a quieter output when the target's fine structure cannot be matched).
    """
    pred, target = pred.float(), target.float()
    total = pred.new_zeros(())
    res = usable_resolutions(pred.shape[-1], resolutions)
    for n_fft, hop, win in res:
        p, t = stft_magnitude(pred, n_fft, hop, win), stft_magnitude(target, n_fft, hop, win)
        total = total + (torch.log(t.clamp_min(_MAG_FLOOR)) - torch.log(p.clamp_min(_MAG_FLOOR))).abs().mean()
        if sc:
            den = torch.linalg.vector_norm(t, dim=(1, 2)).clamp_min(1e-8)
            total = total + (torch.linalg.vector_norm(t - p, dim=(1, 2)) / den).mean()
    return total / len(res)


def waveform_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute sample difference (a scalar)."""
    return (pred.float() - target.float()).abs().mean()


def log_mel_l1(logmel: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |log-mel(pred) - log-mel(target)| with the model's front-end ``logmel`` (a scalar).

    Args:
        logmel: an :class:`edgeflow.audio.mel_torch.LogMel` (waveform [B, T] -> [B, n_mels, T / hop]).
        pred, target: waveforms [B, T].
    """
    return (logmel(pred.float()) - logmel(target.float())).abs().mean()

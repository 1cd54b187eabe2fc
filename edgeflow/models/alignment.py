"""Monotonic alignment search (MAS, Glow-TTS / VITS / Matcha-TTS): the hard monotonic path between text
tokens and frames that maximises the summed log-likelihood, by dynamic programming.

Model-agnostic: it takes any log-likelihood matrix ``log_p[b, i, t]`` (token i explains frame t) and a
mask of the valid cells. A path assigns every frame t of an item to exactly one token, token indices
never decrease over t, it starts at token 0 on frame 0, ends at the last token on the last frame and
gives every token at least one frame (so it needs ``T_mel >= T_text`` per item).

The recursion (Glow-TTS's ``maximum_path``), over frames t with the tokens of every item in one vector::

    Q[i, 0] = log_p[i, 0] if i == 0 else -inf
    Q[i, t] = log_p[i, t] + max(Q[i, t-1], Q[i-1, t-1])       (cells a full path can cross; -inf elsewhere)

and the path is traced back from (T_text - 1, T_mel - 1), moving to the previous token when that is
forced (i == t) or strictly better (ties stay on the current token, as Glow-TTS does). O(T_text * T_mel)
work per item, one vectorised step per frame; torch only (no numba / cython), no gradient.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def maximum_path(log_p: Tensor, mask: Tensor) -> Tensor:
    """The most likely monotonic alignment.

    Args:
        log_p: log-likelihoods [B, T_text, T_mel] (any float dtype, any device).
        mask: [B, T_text, T_mel], nonzero on the valid cells: item b's valid block is its first
            ``n_text[b]`` rows by its first ``n_mel[b]`` columns (the outer product of a text and a frame mask).

    Returns:
        path [B, T_text, T_mel] with log_p's dtype and device: 1.0 on the path, 0.0 elsewhere
        (all zeros for an item with no text or no frames). ``path.sum(-1)`` are the token durations.

    Raises:
        ValueError: wrong shapes, or an item with more tokens than frames.
    """
    if log_p.dim() != 3 or mask.shape != log_p.shape:
        raise ValueError(f"maximum_path needs log_p and mask of the same shape [B, T_text, T_mel], "
                         f"got {tuple(log_p.shape)} and {tuple(mask.shape)}")
    with torch.no_grad():
        valid = mask.bool()
        n_text = valid.any(2).sum(1)                      # [B]
        n_mel = valid.any(1).sum(1)                       # [B]
        if bool(((n_mel < n_text) & (n_text > 0)).any()):
            raise ValueError("monotonic alignment needs at least as many frames as tokens in every item")
        return _search(log_p.detach().double(), n_text, n_mel).to(log_p.dtype)


def _band(n_text: Tensor, n_mel: Tensor, t_text: int, t: int) -> Tensor:
    """[B, T_text] bool: the cells (i, t) a complete monotonic path can pass through."""
    i = torch.arange(t_text, device=n_text.device).unsqueeze(0)
    nt, nm = n_text.unsqueeze(1), n_mel.unsqueeze(1)
    return (i <= t) & (i < nt) & (t < nm) & (i >= nt - (nm - t))


def _search(log_p: Tensor, n_text: Tensor, n_mel: Tensor) -> Tensor:
    """Forward recursion then vectorised backtracking (see the module docstring)."""
    b, t_text, t_mel = log_p.shape
    neg_inf = torch.tensor(float("-inf"), dtype=log_p.dtype, device=log_p.device)
    value = torch.full_like(log_p, float("-inf"))
    best = torch.full((b, t_text), float("-inf"), dtype=log_p.dtype, device=log_p.device)
    best[:, 0] = 0.0                                      # frame 0: the path enters at token 0
    for t in range(t_mel):
        if t:
            prev = value[:, :, t - 1]
            best = torch.maximum(prev, torch.cat([neg_inf.expand(b, 1), prev[:, :-1]], 1))
        value[:, :, t] = torch.where(_band(n_text, n_mel, t_text, t), log_p[:, :, t] + best, neg_inf)
    path = torch.zeros_like(log_p)
    rows = torch.arange(b, device=log_p.device)
    index = (n_text - 1).clamp_min(0)
    for t in range(t_mel - 1, -1, -1):
        active = (t < n_mel) & (n_text > 0)
        path[rows, index, t] = active.to(path.dtype)
        if t == 0:
            break
        here = value[rows, index, t - 1]
        before = value[rows, (index - 1).clamp_min(0), t - 1]
        step_back = active & (index > 0) & ((index == t) | (here < before))
        index = index - step_back.long()
    return path


def durations(path: Tensor) -> Tensor:
    """Frames per token [B, T_text] of a path [B, T_text, T_mel]."""
    return path.sum(-1)

"""Volume-preserving reshapes and permutations (logdet 0): squeeze/fold, early outputs, permutations."""

from __future__ import annotations

from typing import Sequence

import torch

from edgeflow.flows.base import InvertibleModule, zero_logdet


class Squeeze1d(InvertibleModule):
    """Group ``factor`` consecutive samples into channels: [B, C, T] <-> [B, C * factor, T / factor].

    Output channel ``c * factor + k`` at step ``j`` holds input channel c at time ``j * factor + k``
    (WaveGlow's grouping of 8 samples).
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x, cond=None):
        b, c, t = x.shape
        if t % self.factor:
            raise ValueError(f"Squeeze1d: length {t} is not a multiple of {self.factor}")
        z = x.reshape(b, c, t // self.factor, self.factor).permute(0, 1, 3, 2).reshape(b, c * self.factor, -1)
        return z, zero_logdet(x)

    def inverse(self, z, cond=None):
        b, cf, n = z.shape
        c = cf // self.factor
        x = z.reshape(b, c, self.factor, n).permute(0, 1, 3, 2).reshape(b, c, n * self.factor)
        return x, zero_logdet(z)


class Fold2d(InvertibleModule):
    """WaveFlow's fold: [B, C, T] <-> [B, C, h, T / h], adjacent samples in the same column.

    ``y[b, c, i, j] = x[b, c, j * h + i]``: row i holds every h-th sample starting at i.
    """

    def __init__(self, height: int):
        super().__init__()
        self.height = height

    def forward(self, x, cond=None):
        b, c, t = x.shape
        if t % self.height:
            raise ValueError(f"Fold2d: length {t} is not a multiple of {self.height}")
        return x.reshape(b, c, t // self.height, self.height).transpose(2, 3), zero_logdet(x)

    def inverse(self, z, cond=None):
        b, c, h, w = z.shape
        return z.transpose(2, 3).reshape(b, c, h * w), zero_logdet(z)


class Permute(InvertibleModule):
    """A fixed permutation along one dimension: ``z = x.index_select(dim, perm)``."""

    def __init__(self, perm: Sequence[int], dim: int = 1):
        super().__init__()
        perm = [int(i) for i in perm]
        if sorted(perm) != list(range(len(perm))):
            raise ValueError("Permute: not a permutation")
        inv = sorted(range(len(perm)), key=perm.__getitem__)
        self.dim = dim
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("inv_perm", torch.tensor(inv, dtype=torch.long), persistent=False)

    @classmethod
    def reverse(cls, n: int, dim: int = 1) -> "Permute":
        return cls(list(range(n - 1, -1, -1)), dim)

    def forward(self, x, cond=None):
        return x.index_select(self.dim, self.perm), zero_logdet(x)

    def inverse(self, z, cond=None):
        return z.index_select(self.dim, self.inv_perm), zero_logdet(z)


class EarlySplit(InvertibleModule):
    """Early output (WaveGlow, Glow multi-scale): the first ``n_early`` channels go straight to z,
    the rest pass through ``inner``.

    forward: x [B, C, T] -> cat(x[:, :n_early], inner(x[:, n_early:])).
    """

    def __init__(self, n_early: int, inner: InvertibleModule):
        super().__init__()
        self.n_early = n_early
        self.inner = inner

    def forward(self, x, cond=None):
        z_rest, ld = self.inner(x[:, self.n_early:], cond)
        return torch.cat([x[:, :self.n_early], z_rest], dim=1), ld

    def inverse(self, z, cond=None):
        x_rest, ld = self.inner.inverse(z[:, self.n_early:], cond)
        return torch.cat([z[:, :self.n_early], x_rest], dim=1), ld


class Conjugate(InvertibleModule):
    """Run ``inner`` in a permuted order along ``dim``: P^-1 . inner . P, permuting x and cond alike.

    WaveFlow uses this to make each flow autoregressive over the rows in a different order
    (reversed, or each half reversed) while z stays in the data's row order.
    """

    def __init__(self, inner: InvertibleModule, perm: Sequence[int], dim: int = 2):
        super().__init__()
        self.inner = inner
        self.permute = Permute(perm, dim)

    def _cond(self, cond):
        return None if cond is None else cond.index_select(self.permute.dim, self.permute.perm)

    def forward(self, x, cond=None):
        y, _ = self.permute(x)
        y, ld = self.inner(y, self._cond(cond))
        return self.permute.inverse(y)[0], ld

    def inverse(self, z, cond=None):
        y, _ = self.permute(z)
        y, ld = self.inner.inverse(y, self._cond(cond))
        return self.permute.inverse(y)[0], ld

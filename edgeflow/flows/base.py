"""The invertible contract every flow block follows.

Sign rule (as in nflows and FrEIA):

* ``forward(x, cond) -> (z, logdet)`` maps data to latent; ``logdet`` is
  ``log |det dz/dx|`` per batch item, shape [B].
* ``inverse(z, cond) -> (x, logdet)`` maps latent to data; ``logdet`` is
  ``log |det dx/dz|`` per batch item, shape [B], i.e. the *negative* of forward's logdet at
  the corresponding point.

Blocks implement both directions once. Compositions (:class:`Sequential`, :class:`Inverse`)
are built from these two methods only; there is never a hand-written second reverse path.
``cond`` is the conditioning tensor (an upsampled mel, say) or None; blocks that do not use it
pass it through untouched.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import nn

Tensor = torch.Tensor


def zero_logdet(x: Tensor) -> Tensor:
    """A [B] zero logdet in x's dtype and device."""
    return x.new_zeros(x.shape[0])


class InvertibleModule(nn.Module):
    """Base of every invertible block. Subclasses implement :meth:`forward` and :meth:`inverse`."""

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Data -> latent. Returns (z, log|det dz/dx|) with logdet of shape [B]."""
        raise NotImplementedError

    def inverse(self, z: Tensor, cond: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent -> data. Returns (x, log|det dx/dz|) with logdet of shape [B]."""
        raise NotImplementedError


class Sequential(InvertibleModule):
    """Composition: forward applies the blocks in order, inverse in reverse order."""

    def __init__(self, blocks: Iterable[InvertibleModule]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, cond=None):
        total = zero_logdet(x)
        for block in self.blocks:
            x, ld = block(x, cond)
            total = total + ld
        return x, total

    def inverse(self, z, cond=None):
        total = zero_logdet(z)
        for block in reversed(self.blocks):
            z, ld = block.inverse(z, cond)
            total = total + ld
        return z, total

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return self.blocks[i]


class Inverse(InvertibleModule):
    """Swap the directions of a block: forward is its inverse and vice versa."""

    def __init__(self, block: InvertibleModule):
        super().__init__()
        self.block = block

    def forward(self, x, cond=None):
        return self.block.inverse(x, cond)

    def inverse(self, z, cond=None):
        return self.block(z, cond)

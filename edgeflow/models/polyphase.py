"""HiFi-GAN's ConvTranspose1d upsamplers rewritten as one Conv1d over a polyphase split ("phase form").

A transposed convolution with stride ``s``, kernel ``k`` and padding ``p`` is, before cropping,
``u[q*s + r] = sum_m x[q - m] . W[:, :, m*s + r]`` for each phase ``r`` in ``0..s-1``: ``s`` ordinary causal
convolutions with kernels of ``M = ceil(k / s)`` taps over the *input* rate. :class:`PolyphaseConvTranspose1d`
stacks them as one ``Conv1d(C_in, s * C_out, M, padding=M-1)`` and interleaves the phases
(Reshape/Transpose) before the crop ``[p, p + L_out)``. The output equals the ConvTranspose1d's (float
rounding aside), and the graph holds a plain ``Conv`` that INT8 tooling quantizes (onnxruntime's QDQ
``ConvTranspose`` is left float on x86), with no zero-insertion multiplies.

Used on a copy of the model before export: the VITS decoder (``edgeflow.passes.tts_quantize``) and the
stand-alone HiFi-GAN vocoder (the "hifigan" family's ``fuse`` hook); weight norm must be removed first
(:func:`edgeflow.flows.coupling.remove_weight_norm`). Here, in the models layer, so a family's export hook can
use it; :mod:`edgeflow.export.vits_polyphase` re-exports it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PolyphaseConvTranspose1d(nn.Module):
    """The phase form of a ``ConvTranspose1d`` (groups 1, dilation 1).

    Args:
        ct: the transposed convolution (weight [C_in, C_out, k], weight norm removed).
    """

    def __init__(self, ct: nn.ConvTranspose1d):
        super().__init__()
        if ct.groups != 1 or ct.dilation[0] != 1 or ct.padding_mode != "zeros":
            raise ValueError("phase form needs groups=1, dilation=1, zero padding")
        w = ct.weight.detach()                                         # [C_in, C_out, k]
        c_in, c_out, k = w.shape
        s, self.pad, self.out_pad = ct.stride[0], ct.padding[0], ct.output_padding[0]
        taps = math.ceil(k / s)
        w = torch.nn.functional.pad(w, (0, taps * s - k))               # [C_in, C_out, taps*s]
        w = w.reshape(c_in, c_out, taps, s).flip(2)                     # [.., d, r] = W[.., (taps-1-d)*s + r]
        weight = w.permute(3, 1, 0, 2).reshape(s * c_out, c_in, taps)   # out channel r*C_out + o
        self.stride, self.kernel, self.c_out = s, k, c_out
        self.conv = nn.Conv1d(c_in, s * c_out, taps, padding=taps - 1, bias=ct.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if ct.bias is not None:
                self.conv.bias.copy_(ct.bias.detach().repeat(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, L] -> [B, C_out, (L-1)*s - 2p + k + output_padding]."""
        b, _, length = x.shape
        u = self.conv(x)                                                # [B, s*C_out, L + taps - 1]
        q = u.shape[2]
        u = u.reshape(b, self.stride, self.c_out, q).permute(0, 2, 3, 1).reshape(b, self.c_out, q * self.stride)
        out_len = (length - 1) * self.stride - 2 * self.pad + self.kernel + self.out_pad
        return u[:, :, self.pad:self.pad + out_len]


def to_phase_form(module: nn.Module) -> int:
    """Replace every ``ConvTranspose1d`` under ``module`` by its :class:`PolyphaseConvTranspose1d`, in place.

    Returns:
        how many were replaced.

    Raises:
        ValueError: one still carries a weight-norm parametrization (remove it first).
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ConvTranspose1d):
            if hasattr(child, "parametrizations"):
                raise ValueError(f"{name}: remove weight norm before the phase-form rewrite")
            setattr(module, name, PolyphaseConvTranspose1d(child))
            count += 1
        else:
            count += to_phase_form(child)
    return count

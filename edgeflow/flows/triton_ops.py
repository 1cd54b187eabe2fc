"""Launchers of the Triton kernels (:mod:`edgeflow.flows.triton_kernels`) and the switch that routes flow layers
through them.

``set_engine(model, "triton")`` marks every layer that has a Triton path (WaveFlow couplings, WaveGlow's
affine couplings, VITS's residual couplings); their ``forward`` / ``inverse`` keep the one invertible contract
and call :func:`wn_coupling` / :func:`waveflow_inverse` here for the network and the update. Inference only
(no autograd through the kernels). On a CUDA device the kernels compile for the GPU; on the CPU they run in
Triton's interpreter (``TRITON_INTERPRET=1``, set before ``triton`` is first imported), which is how the
tests check them against PyTorch on a machine without a GPU.

Shapes follow the layers': WN input [B, C, T]; WaveFlow z [B, 1, h, w] with conditioning [B, n_mels, h, w].
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

Tensor = torch.Tensor
ENGINES = ("torch", "triton")


def _kernels():
    try:
        from edgeflow.flows import triton_kernels
    except ImportError as e:          # pragma: no cover - depends on the environment
        raise RuntimeError("the triton engine needs the 'triton' package (pip install 'edgeflow[gpu]')") from e
    return triton_kernels


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def set_engine(model: nn.Module, engine: str) -> int:
    """Route every flow layer of ``model`` with a Triton path through ``engine`` ("torch" or "triton").

    Returns:
        The number of layers switched.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    n = 0
    for m in model.modules():
        if hasattr(m, "kernel_engine"):
            m.kernel_engine = engine
            n += 1
    return n


def wn_stack(h: Tensor, wn: nn.Module, cond: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
    """A WaveNet stack (WaveGlow's / VITS's WN) through the gate and res/skip kernels.

    Args:
        h: [B, C, T] the stack's input (after the start / pre conv).
        wn: the stack: its ``in_layers`` (dilated convs [2C, C, K]) and ``res_skip_layers`` (1x1 convs, 2C
            outputs, C in the last layer: all skip).
        cond: [B, 2C * L, T] or [B, 2C * L, 1] (broadcast over time), or None.
        mask: [B, T] or None; the residual stream is multiplied by it after each update (VITS).

    Returns:
        skip sum [B, C, T] (not masked).
    """
    k = _kernels()
    b, c, t = h.shape
    h = h.contiguous().clone()
    skip = torch.zeros_like(h)
    g = torch.empty_like(h)
    m = mask.contiguous() if mask is not None else h
    bc, bt, bk = min(32, _pow2(c)), 64, min(32, _pow2(c))
    layers = [(conv.weight, conv.bias, conv.dilation[0], rs.weight, rs.bias)
              for conv, rs in zip(wn.in_layers, wn.res_skip_layers)]
    for i, (w_in, b_in, dil, w_rs, b_rs) in enumerate(layers):
        kk = w_in.shape[-1]
        cs = cond[:, i * 2 * c:(i + 1) * 2 * c] if cond is not None else h
        if cond is not None and cs.shape[-1] == 1:
            cs = cs.expand(-1, -1, t)
        k.wn_gate[(b, triton_cdiv(c, bc), triton_cdiv(t, bt))](
            h, w_in.contiguous(), b_in.contiguous(), cs, g, c, t, dil, dil * (kk - 1) // 2,
            cs.stride(0), cs.stride(1), cs.stride(2), K=kk, HAS_COND=cond is not None, BC=bc, BT=bt, BK=bk)
        out = w_rs.shape[0]
        res = c if i < len(layers) - 1 else 0
        k.wn_res_skip[(b, triton_cdiv(out, bc), triton_cdiv(t, bt))](
            g, w_rs.reshape(out, c).contiguous(), b_rs.contiguous(), h, skip, m, c, t, out, res,
            HAS_MASK=mask is not None, BO=bc, BT=bt, BK=bk)
    return skip


def coupling_update(skip: Tensor, w_shift: Tensor, b_shift: Tensor, w_logs: Optional[Tensor],
                    b_logs: Optional[Tensor], z: Tensor, mask: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor]:
    """The end (post) conv fused with the coupling update.

    Args:
        skip: [B, C, T] the WN's skip sum. w_shift / w_logs: [NB, C] (1x1 conv weights), b_*: [NB];
            ``w_logs`` None: mean-only.
        z: [B, NB, T] the half being transformed. mask: [B, T] or None.
        reverse: inverse ((z - shift) exp(-log s)) or forward (z exp(log s) + shift).

    Returns:
        (out [B, NB, T], sum of log s over channels and time [B]).
    """
    k = _kernels()
    b, c, t = skip.shape
    nb = z.shape[1]
    bt, bk = 64, min(32, _pow2(c))
    nt = triton_cdiv(t, bt)
    z = z.contiguous()
    out = torch.empty(z.shape, dtype=z.dtype, device=z.device)    # not empty_like: it keeps a view's strides
    ld = torch.zeros(b, nt, dtype=z.dtype, device=z.device)
    mean_only = w_logs is None
    wl = w_shift if mean_only else w_logs
    bl = b_shift if mean_only else b_logs
    k.coupling_update[(b, nt)](
        skip.contiguous(), w_shift.reshape(nb, c).contiguous(), b_shift.contiguous(), wl.reshape(nb, c).contiguous(),
        bl.contiguous(), z, out, ld, mask.contiguous() if mask is not None else z, c, t, nb, nt,
        REVERSE=reverse, MEAN_ONLY=mean_only, HAS_MASK=mask is not None, BN=_pow2(nb), BT=bt, BK=bk)
    return out, ld.sum(1)


def triton_cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def waveflow_inverse(coupling, z: Tensor, cond: Tensor) -> Tuple[Tensor, Tensor]:
    """WaveFlow's cached inverse (one flow) through :func:`waveflow_row_step`: h rows x L layer launches.

    Args:
        coupling: a :class:`edgeflow.flows.waveflow.WaveFlowCoupling`.
        z: [B, 1, h, w]; cond: [B, n_mels, h, w].

    Returns:
        (x [B, 1, h, w], log|det dx/dz| [B]).
    """
    k = _kernels()
    net = coupling.net
    b, _, hgt, w = z.shape
    c = net.start.weight.shape[0]
    n = len(net.layers)
    z = z.contiguous()
    caches = [torch.zeros(b, c, hgt, w, dtype=z.dtype, device=z.device) for _ in range(n)]
    st_w, st_b = net.start.weight.reshape(c).contiguous(), net.start.bias.contiguous()
    caches[0][:, :, 0] = st_b[None, :, None]                           # start(zero row)
    cps = [layer.cond_conv(cond).contiguous() for layer in net.layers]  # [B, 2C, h, w] each
    skip_w, skip_b = (list(map(torch.Tensor.contiguous, v)) for v in net.folded_skip())
    weights = [(layer.conv.weight.contiguous(), layer.conv.bias.contiguous(),
                layer.res_conv.weight.reshape(c, c).contiguous(), layer.res_conv.bias.contiguous())
               for layer in net.layers]
    skip = torch.empty(b, 2, w, dtype=z.dtype, device=z.device)
    x = torch.empty_like(z)
    logs = torch.empty_like(z)
    bw = 32
    grid = (b, triton_cdiv(w, bw))
    for row in range(hgt):
        for li, layer in enumerate(net.layers):
            last = li == n - 1
            wc, bcv, wr, br = weights[li]
            k.waveflow_row_step[grid](
                caches[li], caches[0] if last else caches[li + 1], wc, bcv, cps[li], wr, br, skip_w[li],
                skip_b[li], skip, z, x, logs, st_w, st_b, row, c, hgt, w, layer.dh, layer.dw,
                K=layer.k, CP=_pow2(c), BW=bw, FIRST=li == 0, LAST=last)
    return x, -logs.flatten(1).sum(1)


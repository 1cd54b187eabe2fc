"""Triton kernels of the flows' fused steps (the ``gpu`` target): WaveNet coupling and the WaveFlow row step.

Imported only through :mod:`edgeflow.flows.triton_ops`, which launches them; this module needs ``triton``.
All tensors are float32, contiguous along time / width (the launchers make them so), and the dots run in
IEEE float32 (``input_precision="ieee"``) so the kernels match PyTorch to float rounding. ``tanh`` is written
as ``2 sigmoid(2a) - 1`` (one exp, available in every Triton version).

Kernels:

* :func:`wn_gate`: one WaveNet layer's dilated conv + bias + conditioning + tanh x sigmoid gate, a channel
  block x a time block per program -> g [B, C, T].
* :func:`wn_res_skip`: the layer's residual/skip 1x1 conv fused with the residual update (masked) and the
  skip accumulation (in place).
* :func:`coupling_update`: the coupling's end (post) conv fused with the affine or mean-only update of the
  transformed half and the log-det partial sums (per batch item and time block).
* :func:`waveflow_row_step`: one layer of WaveFlow's cached inverse for one row: the height-causal dilated
  K x K conv over the layer's cached rows, conditioning, gate, residual and the (end-folded) skip conv; the
  last layer also does the affine update of the row and the next row's start conv.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gate(a_t, a_s):
    return (2.0 * tl.sigmoid(2.0 * a_t) - 1.0) * tl.sigmoid(a_s)


@triton.jit
def wn_gate(h_ptr, w_ptr, b_ptr, c_ptr, g_ptr, C, T, dil, pad, c_sb, c_sc, c_st,
            K: tl.constexpr, HAS_COND: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """h [B, C, T], w [2C, C, K], b [2C], cond (strides c_sb, c_sc, c_st; c_st = 0 broadcasts) -> g [B, C, T]."""
    pb, pc, pt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    oc = pc * BC + tl.arange(0, BC)
    t = pt * BT + tl.arange(0, BT)
    ocm = oc < C
    acc_t = tl.zeros((BC, BT), dtype=tl.float32)
    acc_s = tl.zeros((BC, BT), dtype=tl.float32)
    for k in tl.static_range(K):
        tt = t + k * dil - pad
        tm = (tt >= 0) & (tt < T)
        for c0 in range(0, C, BK):
            ic = c0 + tl.arange(0, BK)
            icm = ic < C
            x = tl.load(h_ptr + pb * C * T + ic[:, None] * T + tt[None, :], mask=icm[:, None] & tm[None, :], other=0.0)
            wm = ocm[:, None] & icm[None, :]
            wt = tl.load(w_ptr + oc[:, None] * C * K + ic[None, :] * K + k, mask=wm, other=0.0)
            ws = tl.load(w_ptr + (oc[:, None] + C) * C * K + ic[None, :] * K + k, mask=wm, other=0.0)
            acc_t += tl.dot(wt, x, input_precision="ieee")
            acc_s += tl.dot(ws, x, input_precision="ieee")
    acc_t += tl.load(b_ptr + oc, mask=ocm, other=0.0)[:, None]
    acc_s += tl.load(b_ptr + C + oc, mask=ocm, other=0.0)[:, None]
    om = ocm[:, None] & (t < T)[None, :]
    if HAS_COND:
        cp = c_ptr + pb * c_sb + t[None, :] * c_st
        acc_t += tl.load(cp + oc[:, None] * c_sc, mask=om, other=0.0)
        acc_s += tl.load(cp + (oc[:, None] + C) * c_sc, mask=om, other=0.0)
    tl.store(g_ptr + pb * C * T + oc[:, None] * T + t[None, :], _gate(acc_t, acc_s), mask=om)


@triton.jit
def wn_res_skip(g_ptr, w_ptr, b_ptr, h_ptr, s_ptr, m_ptr, C, T, OUT, RES,
                HAS_MASK: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """rs = w [OUT, C] @ g + b; rows < RES: h = (h + rs) * mask; rows >= RES: skip[row - RES] += rs (in place)."""
    pb, po, pt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o = po * BO + tl.arange(0, BO)
    t = pt * BT + tl.arange(0, BT)
    tm = t < T
    acc = tl.zeros((BO, BT), dtype=tl.float32)
    for c0 in range(0, C, BK):
        ic = c0 + tl.arange(0, BK)
        icm = ic < C
        g = tl.load(g_ptr + pb * C * T + ic[:, None] * T + t[None, :], mask=icm[:, None] & tm[None, :], other=0.0)
        w = tl.load(w_ptr + o[:, None] * C + ic[None, :], mask=(o < OUT)[:, None] & icm[None, :], other=0.0)
        acc += tl.dot(w, g, input_precision="ieee")
    acc += tl.load(b_ptr + o, mask=o < OUT, other=0.0)[:, None]
    res_m = (o < RES)[:, None] & tm[None, :]
    hp = h_ptr + pb * C * T + o[:, None] * T + t[None, :]
    h_new = tl.load(hp, mask=res_m, other=0.0) + acc
    if HAS_MASK:
        h_new = h_new * tl.load(m_ptr + pb * T + t, mask=tm, other=0.0)[None, :]
    tl.store(hp, h_new, mask=res_m)
    sk_m = ((o >= RES) & (o < OUT))[:, None] & tm[None, :]
    sp = s_ptr + pb * C * T + (o[:, None] - RES) * T + t[None, :]
    tl.store(sp, tl.load(sp, mask=sk_m, other=0.0) + acc, mask=sk_m)


@triton.jit
def coupling_update(s_ptr, wm_ptr, bm_ptr, wl_ptr, bl_ptr, z_ptr, o_ptr, ld_ptr, m_ptr, C, T, NB, NT,
                    REVERSE: tl.constexpr, MEAN_ONLY: tl.constexpr, HAS_MASK: tl.constexpr,
                    BN: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """shift = wm [NB, C] @ skip + bm, log s = wl @ skip + bl (0 if MEAN_ONLY), both masked; z [B, NB, T] ->
    out = (z - shift) exp(-log s) (REVERSE) or z exp(log s) + shift, masked; ld[b, t-block] = sum log s."""
    pb, pt = tl.program_id(0), tl.program_id(1)
    n = tl.arange(0, BN)
    t = pt * BT + tl.arange(0, BT)
    nm, tm = n < NB, t < T
    acc_m = tl.zeros((BN, BT), dtype=tl.float32)
    acc_l = tl.zeros((BN, BT), dtype=tl.float32)
    for c0 in range(0, C, BK):
        ic = c0 + tl.arange(0, BK)
        icm = ic < C
        s = tl.load(s_ptr + pb * C * T + ic[:, None] * T + t[None, :], mask=icm[:, None] & tm[None, :], other=0.0)
        wmask = nm[:, None] & icm[None, :]
        acc_m += tl.dot(tl.load(wm_ptr + n[:, None] * C + ic[None, :], mask=wmask, other=0.0), s,
                        input_precision="ieee")
        if not MEAN_ONLY:
            acc_l += tl.dot(tl.load(wl_ptr + n[:, None] * C + ic[None, :], mask=wmask, other=0.0), s,
                            input_precision="ieee")
    om = nm[:, None] & tm[None, :]
    acc_m += tl.load(bm_ptr + n, mask=nm, other=0.0)[:, None]
    if not MEAN_ONLY:
        acc_l += tl.load(bl_ptr + n, mask=nm, other=0.0)[:, None]
    if HAS_MASK:
        mk = tl.load(m_ptr + pb * T + t, mask=tm, other=0.0)[None, :]
        acc_m, acc_l = acc_m * mk, acc_l * mk
    acc_l = tl.where(om, acc_l, 0.0)
    zp = pb * NB * T + n[:, None] * T + t[None, :]
    z = tl.load(z_ptr + zp, mask=om, other=0.0)
    if REVERSE:
        out = (z - acc_m) * tl.exp(-acc_l)
    else:
        out = z * tl.exp(acc_l) + acc_m
    if HAS_MASK:
        out = out * mk
    tl.store(o_ptr + zp, out, mask=om)
    tl.store(ld_ptr + pb * NT + pt, tl.sum(tl.sum(acc_l, axis=1), axis=0))


@triton.jit
def waveflow_row_step(hin_ptr, hout_ptr, w_ptr, b_ptr, cp_ptr, wr_ptr, br_ptr, ws_ptr, bs_ptr, skip_ptr,
                      z_ptr, x_ptr, logs_ptr, st_w_ptr, st_b_ptr, row, C, H, W, dh, dw,
                      K: tl.constexpr, CP: tl.constexpr, BW: tl.constexpr, FIRST: tl.constexpr,
                      LAST: tl.constexpr):
    """One WaveFlow layer at row ``row`` for a block of BW columns, all channels.

    hin/hout [B, C, H, W] (this layer's and the next layer's cached input rows), w [2C, C, K, K], b [2C],
    cp [B, 2C, H, W] (the layer's projected conditioning), wr [C, C], br [C], ws [2, C] / bs [2] (the skip
    conv folded with the end conv), skip [B, 2, W] (the row's (log s, t), accumulated over layers; FIRST
    overwrites). LAST: x[b, row] = (z[b, row] - t) exp(-log s), logs[b, row] = log s, and, below the last
    row, hin_0 row + 1 = start(x row) (st_w, st_b [C]; ``hout_ptr`` is then layer 0's cache).
    """
    pb, pw = tl.program_id(0), tl.program_id(1)
    c = tl.arange(0, CP)
    w = pw * BW + tl.arange(0, BW)
    cm, wm = c < C, w < W
    acc_t = tl.zeros((CP, BW), dtype=tl.float32)
    acc_s = tl.zeros((CP, BW), dtype=tl.float32)
    base = hin_ptr + pb * C * H * W
    for kh in tl.static_range(K):
        r = row - (K - 1 - kh) * dh
        for kw in tl.static_range(K):
            ww = w + (kw - (K - 1) // 2) * dw
            xm = cm[:, None] & ((ww >= 0) & (ww < W) & (w * 0 + r >= 0))[None, :]   # r: a scalar row
            x = tl.load(base + c[:, None] * H * W + r * W + ww[None, :], mask=xm, other=0.0)
            wp = w_ptr + c[:, None] * C * K * K + c[None, :] * K * K + kh * K + kw
            wmk = cm[:, None] & cm[None, :]
            acc_t += tl.dot(tl.load(wp, mask=wmk, other=0.0), x, input_precision="ieee")
            acc_s += tl.dot(tl.load(wp + C * C * K * K, mask=wmk, other=0.0), x, input_precision="ieee")
    om = cm[:, None] & wm[None, :]
    cpp = cp_ptr + pb * 2 * C * H * W + c[:, None] * H * W + row * W + w[None, :]
    acc_t += tl.load(b_ptr + c, mask=cm, other=0.0)[:, None] + tl.load(cpp, mask=om, other=0.0)
    acc_s += tl.load(b_ptr + C + c, mask=cm, other=0.0)[:, None] + tl.load(cpp + C * H * W, mask=om, other=0.0)
    g = tl.where(om, _gate(acc_t, acc_s), 0.0)
    wr = tl.load(wr_ptr + c[:, None] * C + c[None, :], mask=cm[:, None] & cm[None, :], other=0.0)
    res = tl.dot(wr, g, input_precision="ieee") + tl.load(br_ptr + c, mask=cm, other=0.0)[:, None]
    cur = tl.load(base + c[:, None] * H * W + row * W + w[None, :], mask=om, other=0.0)
    if not LAST:
        tl.store(hout_ptr + pb * C * H * W + c[:, None] * H * W + row * W + w[None, :],
                 (cur + res) * 0.7071067811865476, mask=om)
    ws = tl.load(ws_ptr + c[:, None] * C + c[None, :], mask=(c < 2)[:, None] & cm[None, :], other=0.0)
    sk = tl.dot(ws, g, input_precision="ieee") + tl.load(bs_ptr + c, mask=c < 2, other=0.0)[:, None]
    sp = skip_ptr + pb * 2 * W + c[:, None] * W + w[None, :]
    sm = (c < 2)[:, None] & wm[None, :]
    if not FIRST:
        sk += tl.load(sp, mask=sm, other=0.0)
    if LAST:
        log_s = tl.sum(tl.where((c == 0)[:, None], sk, 0.0), axis=0)
        shift = tl.sum(tl.where((c == 1)[:, None], sk, 0.0), axis=0)
        rp = pb * H * W + row * W + w
        x = (tl.load(z_ptr + rp, mask=wm, other=0.0) - shift) * tl.exp(-log_s)
        tl.store(x_ptr + rp, x, mask=wm)
        tl.store(logs_ptr + rp, log_s, mask=wm)
        if row + 1 < H:
            nxt = tl.load(st_w_ptr + c, mask=cm, other=0.0)[:, None] * x[None, :] \
                + tl.load(st_b_ptr + c, mask=cm, other=0.0)[:, None]
            tl.store(hout_ptr + pb * C * H * W + c[:, None] * H * W + (row + 1) * W + w[None, :], nxt, mask=om)
    else:
        tl.store(sp, sk, mask=sm)

"""One WaveNet affine coupling's weights in the native flow format (:mod:`edgeflow.runtime.native.wn`). No torch.

Shared by the packers of VITS's prior flow (from a decoder graph's initializers) and WaveGlow's couplings (from a
frozen model): both give plain numpy weights (weight norm already folded) and get the engine's arrays, each
layer's skip conv pre-multiplied by the coupling's end conv (float64, exact up to rounding) and the end conv's
bias added to the first layer's statistics bias.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

#: One WN layer: in-conv weight [2H, H, k], its bias plus any conditioning bias [2H], the conditioning weight
#: [2H, M] (M may be 0), the res/skip conv weight [R, H] and bias [R] (R = 2H: residual rows first; the last
#: layer R = H: skip only).
Layer = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def fold_coupling(prefix: str, pre: Tuple[np.ndarray, np.ndarray], layers: Sequence[Layer],
                  post: Tuple[np.ndarray, np.ndarray]) -> Dict[str, np.ndarray]:
    """The native arrays of one coupling, named ``{prefix}pre.weight`` ... (``prefix`` e.g. ``"flow.0."``).

    Args:
        prefix: the coupling's name prefix in the flow file.
        pre: the start conv (weight [H, half], bias [H]).
        layers: the WN layers in order (:data:`Layer`).
        post: the end conv (weight [S, H], bias [S]), its rows in the engine's statistic order: m, then logs
            (affine couplings).

    Returns:
        float32 arrays ``pre.weight``, ``pre.bias`` and per layer l ``layer.{l}.in.weight``, ``.in.bias``,
        ``.cond.weight``, ``.rs.weight`` [R_l, H] (residual rows, then post @ skip rows), ``.rs.bias``.
    """
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    hidden = int(np.shape(pre[0])[0])
    pw, pb = (np.asarray(a, np.float64) for a in post)
    out = {prefix + "pre.weight": f32(pre[0]), prefix + "pre.bias": f32(pre[1])}
    for lay, (in_w, in_b, cond_w, rs_w, rs_b) in enumerate(layers):
        p, last = f"{prefix}layer.{lay}.", lay == len(layers) - 1
        w, b = np.asarray(rs_w, np.float64), np.asarray(rs_b, np.float64)
        res_w, res_b = (w[:0], b[:0]) if last else (w[:hidden], b[:hidden])
        skip_w, skip_b = (w, b) if last else (w[hidden:], b[hidden:])
        stat_b = pw @ skip_b + (pb if lay == 0 else 0.0)
        out[p + "in.weight"], out[p + "in.bias"], out[p + "cond.weight"] = f32(in_w), f32(in_b), f32(cond_w)
        out[p + "rs.weight"] = f32(np.concatenate([res_w, pw @ skip_w]))
        out[p + "rs.bias"] = f32(np.concatenate([res_b, stat_b]))
    return out

"""The native engine's weight file (``kernels.npz`` beside a bundle's ``model.onnx``): write, read, check. No torch.

A numpy ``.npz`` (read with ``allow_pickle=False``: loading it never runs code) of named float32 / int32 arrays,
WaveFlow weights already folded the way the exported graph uses them (weight norm removed, each net's end conv
folded into its layers' skip convs, the upsampler in phase form, the dilated conv's and the conditioning conv's
biases summed). Shapes (C channels, k kernel, M mels, h rows, L layers, F flows):

* ``format`` [1] (= :data:`FORMAT`), ``config`` [7]: n_flows, n_layers, C, k, M, h, n_up (int32)
* ``up_factors`` [n_up], ``dilations_h`` [L], ``dilations_w`` [L], ``row_orders`` [F, h] (int32)
* ``up.{u}.phase`` [s, 3, 3], ``up.{u}.bias`` [1]: upsampler layer u (phase form, leaky ReLU 0.4 after it)
* ``flow.{f}.start.weight`` / ``.bias`` [C]: the 1 -> C start conv of flow f (model order)
* ``flow.{f}.layer.{l}.conv.weight`` [2C, C, k, k], ``.cond.weight`` [2C, M], ``.in.bias`` [2C],
  ``.res.weight`` [C, C], ``.res.bias`` [C], ``.skip.weight`` [2, C], ``.skip.bias`` [2] (log s, t rows)

The C library takes ``config`` as one int vector and the floats as one blob in this order (:func:`blob`).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, short_reason
from edgeflow.core.io import atomic_write_bytes

#: Version of the file layout (and of the C library's cfg vector).
FORMAT = 1
#: The weight file's name inside a bundle.
KERNELS_FILE = "kernels.npz"
_LAYER = ("conv.weight", "cond.weight", "in.bias", "res.weight", "res.bias", "skip.weight", "skip.bias")


def expected_shapes(cfg: np.ndarray, up_factors: np.ndarray) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every float array, from ``config`` and ``up_factors``."""
    n_flows, n_layers, c, k, m = (int(v) for v in cfg[:5])
    shapes: Dict[str, Tuple[int, ...]] = {}
    for u, s in enumerate(up_factors):
        shapes[f"up.{u}.phase"], shapes[f"up.{u}.bias"] = (int(s), 3, 3), (1,)
    layer = dict(zip(_LAYER, ((2 * c, c, k, k), (2 * c, m), (2 * c,), (c, c), (c,), (2, c), (2,))))
    for f in range(n_flows):
        shapes[f"flow.{f}.start.weight"] = shapes[f"flow.{f}.start.bias"] = (c,)
        for lay in range(n_layers):
            shapes.update({f"flow.{f}.layer.{lay}.{n}": s for n, s in layer.items()})
    return shapes


def save(path: str | Path, arrays: Dict[str, np.ndarray]) -> None:
    """Check ``arrays`` (see :func:`check`) and write them as an .npz, atomically."""
    arrays = check(arrays, str(path))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str | Path) -> Dict[str, np.ndarray]:
    """Read and check a weight file (BundleError naming the problem if it is not one)."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: unreadable native weight file ({short_reason(exc)})") from None
    return check(arrays, str(path))


def check(arrays: Dict[str, np.ndarray], where: str = "kernels") -> Dict[str, np.ndarray]:
    """The arrays as contiguous float32 / int32, checked for names, shapes and finite values.

    Raises:
        BundleError: a missing, extra, misshapen or non-finite array, or a bad configuration.
    """
    def ints(name, shape=None):
        a = np.asarray(arrays.get(name, np.zeros(0)))
        if a.dtype.kind not in "iu" or (shape is not None and a.shape != shape):
            raise BundleError(f"{where}: native weight file field {name} is missing or malformed")
        return np.ascontiguousarray(a, dtype=np.int32)

    if int(ints("format", (1,))[0]) != FORMAT:
        raise BundleError(f"{where}: native weight file format {arrays['format'][0]} (this edgeflow reads {FORMAT})")
    cfg = ints("config", (7,))
    n_flows, n_layers, c, k, m, h, n_up = (int(v) for v in cfg)
    if min(n_flows, n_layers, c, k, m, h, n_up) < 1 or k % 2 == 0:
        raise BundleError(f"{where}: native weight file has a bad config {cfg.tolist()}")
    out = {"format": ints("format", (1,)), "config": cfg, "up_factors": ints("up_factors", (n_up,)),
           "dilations_h": ints("dilations_h", (n_layers,)), "dilations_w": ints("dilations_w", (n_layers,)),
           "row_orders": ints("row_orders", (n_flows, h))}
    if any(sorted(o) != list(range(h)) for o in out["row_orders"].tolist()) or out["up_factors"].min() < 1 \
            or min(out["dilations_h"].min(), out["dilations_w"].min()) < 1:
        raise BundleError(f"{where}: native weight file has bad row orders, factors or dilations")
    shapes = expected_shapes(cfg, out["up_factors"])
    extra = sorted(set(arrays) - set(shapes) - set(out))
    if extra:
        raise BundleError(f"{where}: native weight file has unknown fields {', '.join(extra[:3])}")
    for name, shape in shapes.items():
        a = np.asarray(arrays.get(name, np.zeros(0)))
        if a.shape != shape or a.dtype.kind != "f" or not np.all(np.isfinite(a)):
            raise BundleError(f"{where}: native weight file field {name} is missing, misshapen or not finite "
                              f"(expected float {list(shape)})")
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def blob(arrays: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The C library's (cfg int32 vector, float32 weight blob) of checked arrays."""
    cfg = np.concatenate([[FORMAT], arrays["config"], arrays["up_factors"], arrays["dilations_h"],
                          arrays["dilations_w"], arrays["row_orders"].ravel()]).astype(np.int32)
    names = expected_shapes(arrays["config"], arrays["up_factors"])
    return cfg, np.ascontiguousarray(np.concatenate([arrays[n].ravel() for n in names]), dtype=np.float32)

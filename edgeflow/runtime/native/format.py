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
* INT8 (format 2, optional, per layer and conv): ``flow.{f}.layer.{l}.conv.qweight`` int8 [2C, C, k, k] with
  ``.conv.qscale`` float32 [2C], ``.cond.qweight`` int8 [2C, M] with ``.cond.qscale`` [2C]: the dilated /
  conditioning conv in INT8 (weights symmetric per output channel, zero point 0; w ~= qweight * qscale). The
  float weights stay in the file; the engine runs a conv in INT8 where its pair is present.

The C library takes ``config`` as one int vector and the floats as one blob in this order (:func:`blob`); the INT8
pairs separately (:func:`int8_parts`). Format 1 files (float only) still load.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, short_reason
from edgeflow.core.io import atomic_write_bytes

#: Version of the file layout (and of the C library's cfg vector). 2: optional INT8 layers.
FORMAT = 2
#: File versions this edgeflow reads.
READS = (1, 2)
#: The weight file's name inside a bundle.
KERNELS_FILE = "kernels.npz"
_LAYER = ("conv.weight", "cond.weight", "in.bias", "res.weight", "res.bias", "skip.weight", "skip.bias")
_Q8 = ("conv", "cond")


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


def write_npz(path: str | Path, arrays: Dict[str, np.ndarray]) -> None:
    """Write checked ``arrays`` as an .npz, atomically (temp file, then rename)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str | Path, what: str) -> Dict[str, np.ndarray]:
    """The arrays of an .npz (no pickles), unchecked; BundleError "unreadable ``what``" if it is not one."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: unreadable {what} ({short_reason(exc)})") from None


def save(path: str | Path, arrays: Dict[str, np.ndarray]) -> None:
    """Check ``arrays`` (see :func:`check`) and write them as an .npz, atomically."""
    write_npz(path, check(arrays, str(path)))


def load(path: str | Path) -> Dict[str, np.ndarray]:
    """Read and check a weight file (BundleError naming the problem if it is not one)."""
    return check(read_npz(path, "native weight file"), str(path))


def check(arrays: Dict[str, np.ndarray], where: str = "kernels") -> Dict[str, np.ndarray]:
    """The arrays as contiguous float32 / int32, checked for names, shapes and finite values.

    Raises:
        BundleError: a missing, extra, misshapen or non-finite array, or a bad configuration.
    """
    what = f"{where}: native weight file"
    ints = lambda name, shape: int_field(arrays, name, shape, what)  # noqa: E731
    version = file_version(arrays, READS, what, "kernels")
    cfg = ints("config", (7,))
    n_flows, n_layers, c, k, m, h, n_up = (int(v) for v in cfg)
    if min(n_flows, n_layers, c, k, m, h, n_up) < 1 or k % 2 == 0:
        raise BundleError(f"{where}: native weight file has a bad config {cfg.tolist()}")
    out = {"format": np.array([FORMAT], np.int32), "config": cfg, "up_factors": ints("up_factors", (n_up,)),
           "dilations_h": ints("dilations_h", (n_layers,)), "dilations_w": ints("dilations_w", (n_layers,)),
           "row_orders": ints("row_orders", (n_flows, h))}
    if any(sorted(o) != list(range(h)) for o in out["row_orders"].tolist()) or out["up_factors"].min() < 1 \
            or min(out["dilations_h"].min(), out["dilations_w"].min()) < 1:
        raise BundleError(f"{where}: native weight file has bad row orders, factors or dilations")
    shapes = expected_shapes(cfg, out["up_factors"])
    qnames = check_int8(arrays, shapes, version, where, out)
    extra = sorted(set(arrays) - set(shapes) - set(out) - qnames)
    if extra:
        raise BundleError(f"{where}: native weight file has unknown fields {', '.join(extra[:3])}")
    return float_fields(arrays, shapes, out, f"{where}: native weight file")


def int_field(arrays: Dict[str, np.ndarray], name: str, shape: Tuple[int, ...], what: str) -> np.ndarray:
    """Field ``name`` of ``arrays`` as contiguous int32 of ``shape`` (BundleError "``what`` field NAME is missing
    or malformed" otherwise)."""
    a = np.asarray(arrays.get(name, np.zeros(0)))
    if a.dtype.kind not in "iu" or a.shape != tuple(shape):
        raise BundleError(f"{what} field {name} is missing or malformed")
    return np.ascontiguousarray(a, dtype=np.int32)


def file_version(arrays: Dict[str, np.ndarray], reads: Sequence[int], what: str, pass_name: str) -> int:
    """The ``format`` field of a weight file, one of ``reads`` (BundleError naming the pass that rebuilds it
    otherwise)."""
    version = int(int_field(arrays, "format", (1,), what)[0])
    if version not in reads:
        raise BundleError(f"{what} format {version} (this edgeflow reads {', '.join(map(str, reads))}; rebuild it "
                          f"with the {pass_name} pass)")
    return version


def float_fields(arrays: Dict[str, np.ndarray], shapes: Dict[str, tuple], out: Dict[str, np.ndarray],
                 what: str) -> Dict[str, np.ndarray]:
    """``out`` plus every field of ``shapes`` from ``arrays`` as contiguous float32, each checked for its
    shape, a float dtype and finite values (BundleError "``what`` field NAME ..." otherwise)."""
    for name, shape in shapes.items():
        a = np.asarray(arrays.get(name, np.zeros(0)))
        if a.shape != shape or a.dtype.kind != "f" or not np.all(np.isfinite(a)):
            raise BundleError(f"{what} field {name} is missing, misshapen or not finite "
                              f"(expected float {list(shape)})")
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def check_int8(arrays: Dict[str, np.ndarray], shapes: Dict[str, Tuple[int, ...]], version: int, where: str,
               out: Dict[str, np.ndarray], kinds: Sequence[str] = _Q8) -> set:
    """Check the INT8 pairs ``BASE.qweight`` (int8, the shape of ``BASE.weight``) / ``BASE.qscale`` (float, >= 0,
    one per output channel) into ``out``, BASE ending in one of ``kinds``; returns the names seen."""
    seen = {n for n in arrays if n.endswith((".qweight", ".qscale"))}
    if seen and version < 2:
        raise BundleError(f"{where}: native weight file format {version} cannot hold INT8 layers")
    for name in sorted(seen):
        base = name.rsplit(".", 1)[0]
        fshape = shapes.get(base + ".weight")
        if fshape is None or base.rsplit(".", 1)[1] not in kinds:
            raise BundleError(f"{where}: native weight file has unknown fields {name}")
        q, s = np.asarray(arrays.get(base + ".qweight", np.zeros(0))), np.asarray(arrays.get(base + ".qscale",
                                                                                          np.zeros(0)))
        if q.dtype != np.int8 or q.shape != fshape or s.dtype.kind != "f" or s.shape != fshape[:1] \
                or not np.all(np.isfinite(s)) or np.any(s < 0):
            raise BundleError(f"{where}: native weight file INT8 pair {base}.qweight / .qscale is incomplete or "
                              f"malformed (expected int8 {list(fshape)} and float [{fshape[0]}] >= 0)")
        out[base + ".qweight"], out[base + ".qscale"] = np.ascontiguousarray(q), np.ascontiguousarray(s, np.float32)
    return seen


def int8_parts(arrays: Dict[str, np.ndarray], kinds: Sequence[str] = _Q8
               ) -> List[Tuple[int, int, int, np.ndarray, np.ndarray]]:
    """The INT8 convs of checked arrays: (flow, layer, part 0 dilated / 1 conditioning, qweight, qscale); ``kinds``:
    the two convs' names in a layer (WaveFlow's ``conv`` / ``cond``, the WaveNet flows' ``in`` / ``cond``)."""
    n_flows, n_layers = int(arrays["config"][0]), int(arrays["config"][1])
    return [(f, lay, part, arrays[p + ".qweight"], arrays[p + ".qscale"])
            for f in range(n_flows) for lay in range(n_layers) for part, name in enumerate(kinds)
            for p in [f"flow.{f}.layer.{lay}.{name}"] if p + ".qweight" in arrays]


def precision(arrays: Dict[str, np.ndarray]) -> str:
    """"int8" when any conv of checked arrays is INT8, else "float32"."""
    return "int8" if int8_parts(arrays) else "float32"


def blob(arrays: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The C library's (cfg int32 vector, float32 weight blob) of checked arrays."""
    cfg = np.concatenate([[FORMAT], arrays["config"], arrays["up_factors"], arrays["dilations_h"],
                          arrays["dilations_w"], arrays["row_orders"].ravel()]).astype(np.int32)
    names = expected_shapes(arrays["config"], arrays["up_factors"])
    return cfg, np.ascontiguousarray(np.concatenate([arrays[n].ravel() for n in names]), dtype=np.float32)

"""The native engine's WaveNet-coupling flow (VITS's prior flow): its weight file and a session. No torch.

The C side (``ef_wn.c``) runs the inverse of a stack of WaveNet affine couplings over a whole chunk in one call
(see that file). Its weights (packed from a voice bundle's ``decoder.onnx`` at load since 2026-12-05,
:func:`edgeflow.runtime.native.vits_graph.flow_from_bundle`; before, the ``tts_kernels`` pass wrote them to
``vits_flow.npz``) are numpy arrays (an ``.npz`` is read with ``allow_pickle=False``), weight norm removed and each
layer's skip conv pre-multiplied by the coupling's end conv (``post``). Shapes (F couplings, L layers, C
channels, half = C/2, H hidden, k kernel, M conditioning channels, S = half (mean-only) or C statistic rows,
R_l = H + S for l < L-1, S for the last layer):

* ``format`` [1] (= :data:`FORMAT`), ``config`` [8]: F, L, C, H, k, M, mean_only, flip (int32);
  ``dilations`` [L] (int32)
* ``flow.{f}.pre.weight`` [H, half], ``.pre.bias`` [H]
* ``flow.{f}.layer.{l}.in.weight`` [2H, H, k], ``.cond.weight`` [2H, M], ``.in.bias`` [2H] (tanh rows first),
  ``.rs.weight`` [R_l, H], ``.rs.bias`` [R_l] (residual rows first, then the statistics m [, logs])

* INT8 (format 2, optional, per layer): ``flow.{f}.layer.{l}.in.qweight`` int8 [2H, H, k] with ``.in.qscale``
  float32 [2H], and (when M > 0, then required with it) ``.cond.qweight`` int8 [2H, M] with ``.cond.qscale`` [2H]:
  the layer's dilated and conditioning convs in INT8 (weights symmetric per output channel, w ~= qweight *
  qscale; activations quantized at run time, ``ef_wn_q8.c``); on its own, ``.rs.qweight`` int8 [R_l, H] with
  ``.rs.qscale`` [R_l]: the residual / statistics conv in INT8 (the gate output quantized per block). The float
  weights stay in the file.

``flip``: each coupling is followed by a channel flip (forward direction), as VITS's ``Flip``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, DependencyError, InputError
from edgeflow.runtime.native.format import (check_int8, file_version, float_fields, int8_parts, int_field, read_npz,
                                             write_npz)

#: Version of the file layout. 2: optional INT8 layers (format 1 files still load).
FORMAT = 2
#: File versions this edgeflow reads.
READS = (1, 2)
#: Version of the C library's cfg vector (``ef_wn_version``).
CFG_VERSION = 1
#: The INT8 convs of a layer (:func:`edgeflow.runtime.native.format.int8_parts`'s kinds; the C library's part
#: numbers): dilated, conditioning, residual / statistics.
Q8_KINDS = ("in", "cond", "rs")
#: The weight file's name inside a voice bundle.
FLOW_FILE = "vits_flow.npz"
_CONFIG = ("n_flows", "n_layers", "channels", "hidden", "kernel", "n_cond", "mean_only", "flip")


def expected_shapes(cfg: np.ndarray) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every float array, from ``config``."""
    n_flows, n_layers, c, h, k, m, mean_only, _ = (int(v) for v in cfg)
    half, s = c // 2, (c // 2 if mean_only else c)
    shapes: Dict[str, Tuple[int, ...]] = {}
    for f in range(n_flows):
        shapes[f"flow.{f}.pre.weight"], shapes[f"flow.{f}.pre.bias"] = (h, half), (h,)
        for lay in range(n_layers):
            p, r = f"flow.{f}.layer.{lay}.", (h if lay < n_layers - 1 else 0) + s
            shapes.update({p + "in.weight": (2 * h, h, k), p + "cond.weight": (2 * h, m), p + "in.bias": (2 * h,),
                           p + "rs.weight": (r, h), p + "rs.bias": (r,)})
    return shapes


def check(arrays: Dict[str, np.ndarray], where: str = "flow") -> Dict[str, np.ndarray]:
    """The arrays as contiguous float32 / int32, checked for names, shapes and finite values.

    Raises:
        BundleError: a missing, extra, misshapen or non-finite array, or a bad configuration.
    """
    what = f"{where}: native flow file"
    ints = lambda name, shape: int_field(arrays, name, shape, what)  # noqa: E731
    version = file_version(arrays, READS, what, "tts_kernels")
    cfg = ints("config", (len(_CONFIG),))
    n_flows, n_layers, c, h, k, m = (int(v) for v in cfg[:6])
    if min(n_flows, n_layers, c, h, k) < 1 or m < 0 or c % 2 or k % 2 == 0:
        raise BundleError(f"{where}: native flow file has a bad config {cfg.tolist()}")
    out = {"format": np.array([FORMAT], np.int32), "config": cfg,
           "dilations": ints("dilations", (n_layers,))}
    if out["dilations"].min() < 1:
        raise BundleError(f"{where}: native flow file has bad dilations {out['dilations'].tolist()}")
    shapes = expected_shapes(cfg)
    qnames = check_int8(arrays, shapes, version, where, out, Q8_KINDS)
    extra = sorted(set(arrays) - set(shapes) - set(out) - qnames)
    if extra:
        raise BundleError(f"{where}: native flow file has unknown fields {', '.join(extra[:3])}")
    for f in range(n_flows):
        for lay in range(n_layers):
            p = f"flow.{f}.layer.{lay}."
            has_in, has_cond = p + "in.qweight" in out, p + "cond.qweight" in out
            if (has_cond and m == 0) or (m > 0 and has_in != has_cond):
                raise BundleError(f"{where}: native flow file layer {p[:-1]} needs INT8 in and cond convs together "
                                  f"(and no cond conv without conditioning)")
    return float_fields(arrays, shapes, out, f"{where}: native flow file")


def save(path: str | Path, arrays: Dict[str, np.ndarray]) -> None:
    """Check ``arrays`` and write them as an .npz, atomically."""
    write_npz(path, check(arrays, str(path)))


def load(path: str | Path) -> Dict[str, np.ndarray]:
    """Read and check a flow weight file (BundleError naming the problem if it is not one)."""
    return check(read_npz(path, "native flow file"), str(path))


def quantize_weights(arrays: Dict[str, np.ndarray], layers: Optional[set] = None,
                     res_skip: bool = False) -> Dict[str, np.ndarray]:
    """``arrays`` plus INT8 pairs made from their own float weights (symmetric per output channel, max |w| / 127:
    onnxruntime's weight scheme) for the layers ``{(flow, layer)}`` (None: every layer), the in and cond convs
    together where the flow has conditioning, and with ``res_skip`` the residual / statistics conv too. For flows
    whose graph keeps them float (the VITS prior flow)."""
    out = dict(arrays, format=np.array([FORMAT], np.int32))
    n_flows, n_layers, n_cond = int(arrays["config"][0]), int(arrays["config"][1]), int(arrays["config"][5])
    kinds = [k for k in Q8_KINDS if (k != "cond" or n_cond) and (k != "rs" or res_skip)]
    for f in range(n_flows):
        for lay in range(n_layers):
            if layers is not None and (f, lay) not in layers:
                continue
            for kind in kinds:
                w = np.asarray(arrays[f"flow.{f}.layer.{lay}.{kind}.weight"], np.float32)
                scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / np.float32(127.0)
                safe = np.where(scale > 0, scale, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
                out[f"flow.{f}.layer.{lay}.{kind}.qweight"] = np.clip(np.round(w / safe), -127, 127).astype(np.int8)
                out[f"flow.{f}.layer.{lay}.{kind}.qscale"] = scale.astype(np.float32)
    return out


def blob(arrays: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The C library's (cfg int32 vector, float32 weight blob) of checked arrays (``ef_wn_create``'s order)."""
    cfg = np.concatenate([[CFG_VERSION], arrays["config"], arrays["dilations"]]).astype(np.int32)
    n_flows, n_layers = int(arrays["config"][0]), int(arrays["config"][1])
    names = []
    for f in range(n_flows):
        names += [f"flow.{f}.pre.weight", f"flow.{f}.pre.bias"]
        names += [f"flow.{f}.layer.{lay}.{n}" for lay in range(n_layers)
                  for n in ("in.weight", "cond.weight", "in.bias", "rs.weight", "rs.bias")]
    return cfg, np.ascontiguousarray(np.concatenate([arrays[n].ravel() for n in names]), dtype=np.float32)


def winograd_f45() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AT [4, 8], G [8, 5], BT [8, 8]) of Winograd F(4, 5) at the points 0, +-1, +-2, +-1/2 and infinity:
    y[i] = sum_j g[j] d[i + j] (i < 4, j < 5) = AT ((G g) * (BT d)) for d [8]. AT and G from the points (Toom-Cook);
    BT solved from that identity (float64; its entries are multiples of 1/4, exact in float32)."""
    pts = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5]
    at, g = np.zeros((4, 8)), np.zeros((8, 5))
    for k, a in enumerate(pts):
        f = np.prod([a - b for j, b in enumerate(pts) if j != k])
        at[:, k], g[k] = [a ** i for i in range(4)], [a ** j / f for j in range(5)]
    at[3, 7], g[7, 4] = 1.0, 1.0
    eqs = np.einsum("ik,kj,ml->ijlkm", at, g, np.eye(8)).reshape(4 * 5 * 8, 64)
    rhs = np.array([[[1.0 if l == i + j else 0.0 for l in range(8)] for j in range(5)] for i in range(4)]).ravel()
    bt = np.linalg.lstsq(eqs, rhs, rcond=None)[0].reshape(8, 8)
    return at, g, np.round(bt * 4) / 4


def winograd_weights(arrays: Dict[str, np.ndarray]) -> List[Tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(flow, layer, U [8, 2H, H], AT [4, 8], BT [8, 8]) float32 for every layer that runs as Winograd F(4, 5):
    kernel 5, dilation 1, a flow without conditioning (``ef_wn_set_winograd``'s arguments)."""
    n_flows, n_layers, _, _, k, n_cond = (int(v) for v in arrays["config"][:6])
    if k != 5 or n_cond:
        return []
    at, g, bt = winograd_f45()
    at, bt = (np.ascontiguousarray(a, dtype=np.float32) for a in (at, bt))
    jobs = []
    for f in range(n_flows):
        for lay in range(n_layers):
            if int(arrays["dilations"][lay]) != 1:
                continue
            w = arrays[f"flow.{f}.layer.{lay}.in.weight"].astype(np.float64)           # [2H, H, 5]
            u = np.ascontiguousarray(np.einsum("pj,ocj->poc", g, w), dtype=np.float32)   # [8, 2H, H]
            jobs.append((f, lay, u, at, bt))
    return jobs


def library() -> ctypes.CDLL:
    """The C library with its WaveNet-coupling functions bound (DependencyError, one line, when unavailable)."""
    from edgeflow.runtime.native import bind

    f32, i = ctypes.POINTER(ctypes.c_float), ctypes.c_int
    lib = bind({"ef_wn_version": ([], i),
                "ef_wn_create": ([ctypes.POINTER(i), i, f32, ctypes.c_longlong], ctypes.c_void_p),
                "ef_wn_free": ([ctypes.c_void_p], None),
                "ef_wn_run": ([ctypes.c_void_p, f32, i, f32, f32, i], i),
                "ef_wn_set_winograd": ([ctypes.c_void_p, i, i, f32, f32, f32], i),
                "ef_wn_set_q8": ([ctypes.c_void_p, i, i, i, ctypes.POINTER(ctypes.c_int8), f32], i)},
               "WaveNet-coupling kernels")
    if lib.ef_wn_version() != CFG_VERSION:
        raise DependencyError(f"the native engine's WaveNet-coupling kernels are version {lib.ef_wn_version()}, "
                              f"this edgeflow needs {CFG_VERSION}")
    return lib


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class NativeFlow:
    """A flow weight file packed in the C library: ``run(x)`` = the flow's inverse. Thread-safe (a call reads
    the packed weights only and allocates its own buffers; ctypes releases the GIL during it).

    Args:
        path: the weight file (or ``arrays``: checked arrays, for tests).
        threads: threads per call (None or 0: OpenMP's default).
        winograd: run the kernel-5, dilation-1 convs of a flow without conditioning as Winograd F(4, 5) (2.5x fewer
            multiplies in those convs; float32 error a few 1e-7 relative). False: direct convolution everywhere.

    Attributes:
        winograd_layers: how many layers run as Winograd.
        int8_layers: how many layers run their dilated (and conditioning) conv in INT8 (the file's INT8 pairs;
            they take precedence over Winograd).
        int8_res_skip: how many layers run their residual / statistics conv in INT8.
    """

    def __init__(self, path: Optional[str | Path] = None, threads: Optional[int] = None,
                 arrays: Optional[Dict[str, np.ndarray]] = None, winograd: bool = True):
        self._lib = library()
        arrays = load(path) if arrays is None else check(arrays)
        cfg, weights = blob(arrays)
        handle = self._lib.ef_wn_create(cfg.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), len(cfg), _ptr(weights),
                                        weights.size)
        if not handle:
            raise BundleError(f"{path}: the native engine refused the flow weights (inconsistent sizes)")
        self._handle = handle
        self.channels, self.n_cond = int(arrays["config"][2]), int(arrays["config"][5])
        self.threads = int(threads or 0)
        parts = self._set_int8(arrays, path)
        self.int8_layers, self.int8_res_skip = (sum(p == part for p in parts) for part in (0, 2))
        self.winograd_layers = self._set_winograd(arrays) if winograd else 0

    def _set_int8(self, arrays: Dict[str, np.ndarray], path) -> List[int]:
        parts = int8_parts(arrays, Q8_KINDS)
        for f, lay, part, q, scale in parts:
            q = np.ascontiguousarray(q, dtype=np.int8)
            scale = np.ascontiguousarray(scale, dtype=np.float32)
            if self._lib.ef_wn_set_q8(self._handle, f, lay, part, q.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
                                      _ptr(scale)) != 0:
                raise BundleError(f"{path}: the native engine refused the INT8 weights of coupling {f} layer {lay}")
        return [part for _, _, part, _, _ in parts]

    def _set_winograd(self, arrays: Dict[str, np.ndarray]) -> int:
        jobs = [j for j in winograd_weights(arrays) if f"flow.{j[0]}.layer.{j[1]}.in.qweight" not in arrays]
        for f, lay, u, at, bt in jobs:
            if self._lib.ef_wn_set_winograd(self._handle, f, lay, _ptr(u), _ptr(at), _ptr(bt)) != 0:
                raise BundleError("the native engine refused the Winograd weights (out of memory)")
        return len(jobs)

    def run(self, x: np.ndarray, cond: Optional[np.ndarray] = None) -> np.ndarray:
        """x [B, C, T] (prior side) -> the flow's inverse [B, C, T]; cond [B, M, T] when the flow has one."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[1] != self.channels:
            raise InputError(f"native flow: x {x.shape} does not fit [B, {self.channels}, T]")
        if self.n_cond and (cond is None or cond.shape != (x.shape[0], self.n_cond, x.shape[2])):
            raise InputError(f"native flow: needs cond [B, {self.n_cond}, T]")
        out = np.empty_like(x)
        if x.size == 0:
            return out
        c = None if not self.n_cond else np.ascontiguousarray(cond, dtype=np.float32)
        for b in range(x.shape[0]):
            rc = self._lib.ef_wn_run(self._handle, _ptr(x[b]), x.shape[2], None if c is None else _ptr(c[b]),
                                     _ptr(out[b]), self.threads)
            if rc != 0:
                raise InputError(f"native flow: {'out of memory' if rc == -3 else f'error {rc}'}")
        return out

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.ef_wn_free(handle)

"""The waveform-rate stage of a HiFi-GAN decoder in INT8 with block-scaled activations (``ef_hq8.c``).

A VITS voice's decoder (Piper's) ends in an upsampling stage at the audio rate whose resblocks are most of the
decoder's time, and a QDQ graph cannot take them in INT8 (one activation scale per tensor costs the voice 0.2-0.5
DNSMOS P.808, bench/results/tts_optimize.md). The C kernel gives every conv's input one u8 scale per tile of
128 output samples (the tile's input window), so the quantization noise follows the signal's local level.

The stage is described by numpy arrays (:func:`pack_stage`; a pass writes them into a bundle):

- ``spec`` int32 [n_convs, 7]: resblock, in channels, out channels, kernel, dilation, mode (0: ``s + conv(lrelu(s))``;
  1: ``t = conv(lrelu(s))``; 2: ``s + conv(lrelu(t))``: HiFi-GAN resblock type "2" is all mode 0, type "1" pairs
  modes 1 and 2), activation planes (1: u8; 2: u8 and its rounding error in a second u8 plane, about 16-bit
  activations at twice the dot products: for the convs the audio is most sensitive to);
- ``conv.{i}.q`` int8 [out, in, k], ``conv.{i}.scale`` float32 [out] (symmetric per output channel),
  ``conv.{i}.bias`` float32 [out];
- ``post.weight`` float32 [C, kp] (conv_post, one output channel), ``post.bias`` float32 [1]; kp = 0 (since
  2026-12-05): no conv_post, an earlier upsampling stage whose run gives the resblocks' mean [C, T] (the next
  stage's input);
- ``slopes`` float32 [2]: the resblocks' leaky-ReLU slope, then the one before conv_post;
- optionally the last upsampler ahead of the stage (since 2026-12-05): ``up.q`` int8 [u C, cin, k] and ``up.scale``,
  ``up.bias`` float32 [u C]: the ConvTranspose of stride u in its merged phase form (:func:`merge_upsampler`; row
  r C + o is output channel o's phase r), ``up.spec`` int32 [4]: cin, u, k, planes, ``up.slope`` float32 [1]: the
  leaky ReLU before it. The stage then takes the upsampler's input [cin, T] and gives audio [u T].

Example::

    stage = WaveStage(pack_stage(convs, post_w, 0.0, 0.1, 0.01), threads=1)
    audio = stage.run(x)          # x [C, T]: the last upsampler's output -> audio [T] in [-1, 1]
"""

from __future__ import annotations

import ctypes
from typing import Dict, List, Optional, Sequence

import numpy as np

from edgeflow.core.errors import BundleError, InputError

#: The modes of a conv in ``spec`` (see the module docstring).
MODES = ("residual", "inner", "residual-from-inner")


def quantize_conv(w: np.ndarray):
    """(int8 q, float32 scale [out]) of float conv weights [out, in, k]: symmetric per output channel."""
    w = np.asarray(w, np.float32)
    scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None, None]), -127, 127).astype(np.int8)
    return q, scale


def merge_upsampler(weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The merged phase form [u C, cin, 2 R + 1] of a ConvTranspose1d weight [cin, C, K] (stride u, padding p, with
    K - 2 p = u: output length u x input): a centred conv whose row r C + o computes output channel o's samples
    u t + r (tap R - a holds W[:, o, u a + r + p]; taps no phase uses are 0).

    Raises:
        ValueError: K - 2 p != u.
    """
    w = np.asarray(weight, np.float32)
    cin, c, k = w.shape
    u, p = int(stride), int(padding)
    if k - 2 * p != u:
        raise ValueError(f"upsampler: kernel {k}, stride {u}, padding {p} does not give u x the input length")
    taps = [(r, a, u * a + r + p) for r in range(u) for a in range(-k, k + 1) if 0 <= u * a + r + p < k]
    radius = max(abs(a) for _, a, _ in taps)
    out = np.zeros((u * c, cin, 2 * radius + 1), np.float32)
    for r, a, j in taps:
        out[r * c:(r + 1) * c, :, radius - a] = w[:, :, j].T
    return out


def _pack_up(up: dict, channels: int) -> Dict[str, np.ndarray]:
    merged = merge_upsampler(up["weight"], up["stride"], up["padding"])
    if merged.shape[0] != int(up["stride"]) * channels:
        raise ValueError(f"upsampler: {merged.shape[0] // int(up['stride'])} output channels, the stage has {channels}")
    q, scale = quantize_conv(merged)
    bias = np.zeros(channels, np.float32) if up.get("bias") is None else np.asarray(up["bias"], np.float32)
    return {"up.q": q, "up.scale": scale, "up.bias": np.tile(bias.reshape(channels), int(up["stride"])),
            "up.spec": np.asarray([merged.shape[1], int(up["stride"]), merged.shape[2], int(up.get("planes", 1))],
                                  np.int32),
            "up.slope": np.asarray([up["slope"]], np.float32)}


def pack_stage(convs: Sequence[dict], post_w: np.ndarray, post_b: float, slope: float,
               post_slope: float, up: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """The stage's arrays from float weights.

    Args:
        convs: in run order, each ``{"block": b, "weight": [out, in, k], "bias": [out], "dilation": d,
            "mode": 0 | 1 | 2}`` and optionally ``"planes": 2`` (default 1).
        post_w: conv_post's weight [1, C, kp] or [C, kp], or None for a stage without it (an earlier upsampling
            stage: :meth:`WaveStage.run` gives the resblocks' mean [C, T]; then ``post_b`` and ``post_slope`` are
            unused).
        post_b: conv_post's bias (0 where it has none).
        slope, post_slope: the leaky-ReLU slopes inside the resblocks and before conv_post.
        up: the last upsampler ahead of the stage, or None: ``{"weight": [cin, C, K] (ConvTranspose1d), "bias": [C]
            or None, "stride": u, "padding": p, "slope": its input's leaky-ReLU slope}`` and optionally
            ``"planes": 2``.
    """
    arrays: Dict[str, np.ndarray] = {}
    spec = []
    for i, c in enumerate(convs):
        w = np.asarray(c["weight"], np.float32)
        q, scale = quantize_conv(w)
        arrays[f"conv.{i}.q"], arrays[f"conv.{i}.scale"] = q, scale
        arrays[f"conv.{i}.bias"] = np.asarray(c["bias"], np.float32).reshape(w.shape[0])
        spec.append([int(c["block"]), w.shape[1], w.shape[0], w.shape[2], int(c["dilation"]), int(c["mode"]),
                     int(c.get("planes", 1))])
    arrays["spec"] = np.asarray(spec, np.int32).reshape(-1, 7)
    pw = np.zeros((spec[0][1], 0), np.float32) if post_w is None else np.asarray(post_w, np.float32)  # C: conv 0's in
    arrays["post.weight"] = pw.reshape(pw.shape[-2], pw.shape[-1])
    arrays["post.bias"] = np.asarray([post_b], np.float32)
    arrays["slopes"] = np.asarray([slope, post_slope], np.float32)
    if up is not None:
        arrays.update(_pack_up(up, arrays["post.weight"].shape[0]))
    return arrays


def _bound() -> ctypes.CDLL:
    from edgeflow.runtime.native import bind

    f32, i32, i8, i = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int8), \
        ctypes.c_int
    return bind({"ef_hq_create": ([i, i, i, i32, ctypes.c_float, ctypes.c_float, i, f32, ctypes.c_float],
                                  ctypes.c_void_p),
                 "ef_hq_free": ([ctypes.c_void_p], None),
                 "ef_hq_set_conv": ([ctypes.c_void_p, i, i8, f32, f32], i),
                 "ef_hq_set_up": ([ctypes.c_void_p, i, i, i, i, ctypes.c_float, i8, f32, f32], i),
                 "ef_hq_run": ([ctypes.c_void_p, f32, i, f32, i], i),
                 "ef_hq_tile": ([], i), "ef_hq_chunk_cols": ([], i), "ef_hq_chunk_len": ([i, i], i)},
                "waveform-stage kernel")


def tile_samples() -> int:
    """Output samples per tile of the C kernel: each conv's input gets one u8 scale per tile's input window."""
    return int(_bound().ef_hq_tile())


def chunk_samples() -> int:
    """The most input columns (halo included) of a chunk the C kernel runs a stage in (or 4 x its receptive half
    width where that is more; :func:`chunk_len` gives a stage's chunks)."""
    return int(_bound().ef_hq_chunk_cols())


def chunk_len(T: int, H: int) -> int:
    """Output columns per chunk the C kernel runs a stage of T output columns and receptive half width H in (equal
    chunks; an even number of them from 512 columns on, so two threads share a short sentence's stage)."""
    return int(_bound().ef_hq_chunk_len(int(T), int(H)))


def _f32(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class WaveStage:
    """The INT8 waveform-rate stage, ready to run (thread-safe: a run allocates its own buffers).

    Args:
        arrays: :func:`pack_stage`'s arrays (or a bundle's).
        threads: OpenMP threads per run (None: the library's default).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], threads: Optional[int] = None):
        self._lib = _bound()
        need = ["spec", "post.weight", "post.bias", "slopes"]
        need += [f"conv.{i}.{k}" for i in range(len(arrays.get("spec", ()))) for k in ("q", "scale", "bias")]
        missing = [k for k in need if k not in arrays]
        if missing:
            raise BundleError(f"waveform stage: arrays {', '.join(missing[:4])} missing")
        spec = np.ascontiguousarray(arrays["spec"], np.int32)
        post = np.ascontiguousarray(arrays["post.weight"], np.float32)
        slopes = np.asarray(arrays["slopes"], np.float32)
        if spec.ndim != 2 or spec.shape[1] != 7 or post.ndim != 2:
            raise BundleError("waveform stage: spec must be [n, 7] and post.weight [C, kp]")
        self.channels, self.n_blocks = int(post.shape[0]), int(spec[:, 0].max()) + 1
        self.threads = int(threads or 0)
        #: False: a stage without conv_post (:meth:`run` gives [C, T]).
        self.has_post = post.shape[1] > 0
        handle = self._lib.ef_hq_create(self.channels, self.n_blocks, len(spec),
                                        spec.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), float(slopes[0]),
                                        float(slopes[1]), post.shape[1], _f32(post) if self.has_post else None,
                                        float(np.asarray(arrays["post.bias"]).reshape(-1)[0]))
        if not handle:
            raise BundleError("waveform stage: the spec does not describe a stage (blocks in order, odd kernels, "
                              "channels matching)")
        self._handle = handle
        for i in range(len(spec)):
            q = np.ascontiguousarray(arrays[f"conv.{i}.q"], np.int8)
            scale = np.ascontiguousarray(arrays[f"conv.{i}.scale"], np.float32)
            bias = np.ascontiguousarray(arrays[f"conv.{i}.bias"], np.float32)
            if q.shape != tuple(int(v) for v in spec[i, [2, 1, 3]]) or scale.shape != (q.shape[0],) or \
                    bias.shape != (q.shape[0],):
                raise BundleError(f"waveform stage: conv {i}'s arrays do not match its spec {spec[i].tolist()}")
            if self._lib.ef_hq_set_conv(handle, i, q.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)), _f32(scale),
                                        _f32(bias)) != 0:
                raise BundleError(f"waveform stage: conv {i}'s scales are not finite and >= 0")
        #: the upsampler's stride (1: none), and the channels run() takes.
        self.stride, self.input_channels = 1, self.channels
        if "up.q" in arrays:
            self._set_up(arrays)

    def _set_up(self, arrays: Dict[str, np.ndarray]) -> None:
        try:
            cin, u, k, planes = (int(v) for v in np.asarray(arrays["up.spec"]).reshape(4))
            q = np.ascontiguousarray(arrays["up.q"], np.int8)
            scale = np.ascontiguousarray(arrays["up.scale"], np.float32)
            bias = np.ascontiguousarray(arrays["up.bias"], np.float32)
            slope = float(np.asarray(arrays["up.slope"]).reshape(-1)[0])
        except (KeyError, ValueError, TypeError):
            raise BundleError("waveform stage: the upsampler's arrays (up.spec, up.scale, up.bias, up.slope) are "
                              "missing or malformed") from None
        if u < 1 or q.shape != (u * self.channels, cin, k) or scale.shape != (q.shape[0],) or bias.shape != scale.shape:
            raise BundleError(f"waveform stage: the upsampler's arrays do not match its spec {[cin, u, k, planes]}")
        if self._lib.ef_hq_set_up(self._handle, cin, u, k, planes, slope, q.ctypes.data_as(
                ctypes.POINTER(ctypes.c_int8)), _f32(scale), _f32(bias)) != 0:
            raise BundleError("waveform stage: the upsampler's spec or scales are invalid")
        self.stride, self.input_channels = u, cin

    def run(self, x: np.ndarray) -> np.ndarray:
        """Audio [T x stride] (float32, in [-1, 1]) of the stage input x [input_channels, T] or [1, .., T] (the last
        upsampler's output, or with an upsampler its input); a stage without conv_post: the resblocks' mean
        [channels, T x stride]."""
        x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1]))
        if x.shape[0] != self.input_channels or x.shape[1] < 1:
            raise InputError(f"waveform stage: input has shape {x.shape}, expected [{self.input_channels}, T]")
        out = np.empty((self.channels, x.shape[1] * self.stride) if not self.has_post else x.shape[1] * self.stride,
                       np.float32)
        rc = self._lib.ef_hq_run(self._handle, _f32(x), x.shape[1], _f32(out), self.threads)
        if rc != 0:
            raise InputError("waveform stage: out of memory" if rc == -3 else "waveform stage: bad arguments")
        return out

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.ef_hq_free(handle)
            self._handle = None


def load_arrays(path) -> Dict[str, np.ndarray]:
    """A bundle's stage arrays (``.npz``, read without pickle; BundleError naming the problem)."""
    from edgeflow.runtime.native.format import read_npz

    return read_npz(path, "waveform-stage file")


def save_arrays(path, arrays: Dict[str, np.ndarray]) -> None:
    """Write the stage arrays to ``path`` (.npz; temp file, then rename)."""
    from edgeflow.runtime.native.format import write_npz

    write_npz(path, arrays)


def convs_of(blocks: List[List[dict]]) -> List[dict]:
    """Flatten [[conv dict per conv] per resblock] into :func:`pack_stage`'s list, setting each ``block``."""
    return [dict(c, block=b) for b, convs in enumerate(blocks) for c in convs]

"""WaveGlow through the native engine: its weight file and a session. No torch.

Each affine coupling runs in the C library as a one-coupling WaveNet flow (:class:`edgeflow.runtime.native.wn.
NativeFlow`: per-layer conditioning, affine statistics, no flip); the cheap parts run in numpy: the upsampler
(ConvTranspose1d(M, M, 4 hop, stride hop) as one GEMM over four shifted copies of the mel frames, its columns in
the squeezed order, cropped to F * hop samples as the model crops), the squeeze of the conditioning and of z
into groups of ``n_group`` samples, and the invertible 1x1 convs (their inverse matrices, computed once in
float64 at export and stored in float32, as the graph holds them). :meth:`WaveGlowSession.run` computes what the
bundle's ``model.onnx`` computes: audio = unsqueeze(inverse(squeeze(z * sigma), squeeze(upsample(mel)))), the
flows inverted last to first, flow k acting on channels ``[off_k, n_group)`` (``off_k`` = n_early_size x the
early outputs before it; the early channels pass through unchanged).

The weight file (``waveglow.npz`` beside the bundle's graph, written by the ``kernels`` pass) is a numpy ``.npz``
read with ``allow_pickle=False``. Shapes (K flows, M mels, hop samples per frame, C_k channels of flow k):

* ``format`` [1] (= :data:`FORMAT`), ``config`` [6]: n_flows, n_group, n_early_every, n_early_size, n_mels,
  hop_length (int32)
* ``up.weight`` [M, M, 4 hop], ``up.bias`` [M]: the upsampler (ConvTranspose1d layout: in, out, kernel; made
  one GEMM matrix at load, :func:`upsampler_matrix`)
* ``flow.{k}.inv`` [C_k, C_k]: the inverse of flow k's 1x1 conv matrix
* ``coupling.{k}.*``: flow k's coupling as a one-coupling native flow file (:mod:`edgeflow.runtime.native.wn`,
  config [1, L, C_k, H, kernel, M * n_group, 0, 0]; statistic rows t then log s: the inverse is
  x_b = (z_b - t) * exp(-log s))
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.core.errors import BundleError, InputError
from edgeflow.runtime.native import PROVIDER, wn
from edgeflow.runtime.native.format import file_version, float_fields, int_field, read_npz, write_npz

#: Version of this file layout.
FORMAT = 1
#: The weight file's name inside a bundle.
WAVEGLOW_FILE = "waveglow.npz"
#: The ``native`` manifest section's engine name for these kernels (float32; INT8 bundles: ``waveglow-int8``,
#: couplings whose flow files hold INT8 pairs, :mod:`edgeflow.runtime.native.wn`).
ENGINE = "waveglow-float32"
_CONFIG = ("n_flows", "n_group", "n_early_every", "n_early_size", "n_mels", "hop_length")
_PREFIX = "coupling."


def flow_channels(cfg: Any) -> List[int]:
    """Channels each flow acts on (a flow after e early outputs acts on the last n_group - e * n_early_size),
    from ``config`` (WaveGlow's ``_build``: an early output before flow k when k > 0 and k % n_early_every == 0)."""
    n_flows, n_group, every, size = (int(v) for v in cfg[:4])
    return [n_group - (k // every if every > 0 else 0) * size for k in range(n_flows)]


def check(arrays: Dict[str, np.ndarray], where: str = "waveglow") -> Dict[str, np.ndarray]:
    """The arrays as contiguous float32 / int32, checked for names, shapes and finite values (each coupling by
    :func:`edgeflow.runtime.native.wn.check`, and its config against the file's).

    Raises:
        BundleError: a missing, extra, misshapen or non-finite array, or a bad configuration (one line).
    """
    what = f"{where}: native WaveGlow file"

    file_version(arrays, (FORMAT,), what, "kernels")
    cfg = int_field(arrays, "config", (len(_CONFIG),), what)
    n_flows, n_group, _, size, n_mels, hop = (int(v) for v in cfg)
    channels = flow_channels(cfg)
    if min(n_flows, n_group, n_mels, hop) < 1 or size < 0 or min(channels) < 2 or any(c % 2 for c in channels):
        raise BundleError(f"{what} has a bad config {cfg.tolist()}")
    out = {"format": np.array([FORMAT], np.int32), "config": cfg}
    shapes = {"up.weight": (n_mels, n_mels, 4 * hop), "up.bias": (n_mels,)}
    shapes.update({f"flow.{k}.inv": (c, c) for k, c in enumerate(channels)})
    seen = set(shapes) | set(out)
    for k, c in enumerate(channels):
        p = f"{_PREFIX}{k}."
        sub = {n[len(p):]: a for n, a in arrays.items() if n.startswith(p)}
        flow = wn.check(sub, f"{where}: coupling {k}")
        got = flow["config"].tolist()
        if got[0] != 1 or got[2] != c or got[5] != n_mels * n_group or got[6:] != [0, 0]:
            raise BundleError(f"{what}: coupling {k} has config {got}, expected [1, L, {c}, H, k, "
                              f"{n_mels * n_group}, 0, 0]")
        out.update({p + n: a for n, a in flow.items()})
        seen |= {p + n for n in sub}
    extra = sorted(set(arrays) - seen)
    if extra:
        raise BundleError(f"{what} has unknown fields {', '.join(extra[:3])}")
    return float_fields(arrays, shapes, out, what)


def save(path: str | Path, arrays: Dict[str, np.ndarray]) -> None:
    """Check ``arrays`` and write them as an .npz, atomically."""
    write_npz(path, check(arrays, str(path)))


def load(path: str | Path) -> Dict[str, np.ndarray]:
    """Read and check a WaveGlow weight file (BundleError, one line, naming the problem if it is not one)."""
    return check(read_npz(path, "native WaveGlow file"), str(path))


def coupling(arrays: Dict[str, np.ndarray], k: int) -> Dict[str, np.ndarray]:
    """Flow k's coupling as native flow arrays (:mod:`edgeflow.runtime.native.wn`)."""
    p = f"{_PREFIX}{k}."
    return {n[len(p):]: a for n, a in arrays.items() if n.startswith(p)}


def upsampler_matrix(weight: np.ndarray, bias: np.ndarray, n_group: int) -> np.ndarray:
    """The upsampler ConvTranspose1d(M, M, 4 hop, stride hop) (weight [M, M, 4 hop], bias [M]) as one GEMM matrix
    [4 M + 1, M * hop] (float32): row (q, m) holds kernel taps [q hop, (q + 1) hop) of input channel m (applied to
    input frame i - q for output frame i), the last row the bias; column (c, j, r) is output channel c, sample
    r * n_group + j of the frame (``n_group`` divides hop), the order of the squeezed conditioning."""
    m, _, k = weight.shape
    hop = k // 4
    w = np.asarray(weight, np.float32).reshape(m, m, 4, hop // n_group, n_group).transpose(2, 0, 1, 4, 3)
    return np.ascontiguousarray(np.concatenate([w.reshape(4 * m, m * hop), np.repeat(bias, hop)[None]]),
                                dtype=np.float32)


def upsample_squeezed(mel: np.ndarray, matrix: np.ndarray, n_group: int) -> np.ndarray:
    """squeeze(ConvTranspose1d(mel)[:, :, :F * hop]) [B, M * n_group, F * hop / n_group] of mel [B, M, F], by
    :func:`upsampler_matrix`'s matrix (the same ``n_group``): one GEMM of the four shifted copies of the mel
    frames, then one copy into the squeezed order (channel c * n_group + j at step i: sample i * n_group + j)."""
    b, m, f = mel.shape
    hop = matrix.shape[1] // m
    x = np.zeros((b, f, 4 * m + 1), np.float32)
    mel_t = mel.transpose(0, 2, 1)
    for q in range(min(4, f)):
        x[:, q:, q * m:(q + 1) * m] = mel_t[:, :f - q]
    x[:, :, 4 * m] = 1.0
    y = np.matmul(x, matrix).reshape(b, f, m * n_group, hop // n_group)
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, m * n_group, f * hop // n_group)


def upsample(mel: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ConvTranspose1d(M, M, 4 hop, stride hop)(mel)[:, :, :F * hop]: mel [B, M, F] -> [B, M, F * hop] float32."""
    return upsample_squeezed(mel, upsampler_matrix(weight, bias, 1), 1)


class WaveGlowSession:
    """A WaveGlow weight file packed in the C library, run like an onnxruntime session (``run``, ``get_inputs``,
    ``get_providers``). Thread-safe (calls read the packed weights only).

    Args:
        path: the bundle's ``waveglow.npz`` (or ``arrays``: checked arrays, for tests).
        input_names: the graph's (mel, z, sigma) names, from the manifest.
        hop_length: samples per mel frame (checked against the weights).
        threads: threads per coupling call (None or 0: OpenMP's default). The numpy parts use numpy's BLAS
            threads.
    """

    def __init__(self, path: Optional[str | Path], input_names: List[str], hop_length: int,
                 threads: Optional[int] = None, arrays: Optional[Dict[str, np.ndarray]] = None):
        arrays = load(path) if arrays is None else check(arrays)
        n_flows, self.n_group, _, _, self.n_mels, hop = (int(v) for v in arrays["config"])
        if hop != hop_length or len(input_names) != 3:
            raise BundleError(f"{path}: native WaveGlow weights do not fit the bundle (hop {hop} vs {hop_length}, "
                              f"{len(input_names)} graph inputs)")
        self.flows = [wn.NativeFlow(arrays=coupling(arrays, k), threads=threads, winograd=False)
                      for k in range(n_flows)]
        self.inv = [arrays[f"flow.{k}.inv"] for k in range(n_flows)]
        self.offsets = [self.n_group - c for c in flow_channels(arrays["config"])]
        self.up_group = self.n_group if hop % self.n_group == 0 else 1     # else squeezed after upsampling
        self.up_matrix = upsampler_matrix(arrays["up.weight"], arrays["up.bias"], self.up_group)
        self.input_names, self.hop_length, self.threads = list(input_names), hop, int(threads or 0)

    def cond(self, mel: np.ndarray) -> np.ndarray:
        """The couplings' conditioning [B, M * n_group, F * hop / n_group] of mel [B, M, F]: upsampled, squeezed
        (channel c * n_group + j at step i holds mel channel c at sample i * n_group + j)."""
        up = upsample_squeezed(mel, self.up_matrix, self.up_group)
        if self.up_group == self.n_group:
            return up
        b, m, t = up.shape
        g = self.n_group
        return np.ascontiguousarray(up.reshape(b, m, t // g, g).transpose(0, 1, 3, 2).reshape(b, m * g, t // g))

    def run(self, output_names: Any, feeds: Dict[str, np.ndarray], prof: Optional[np.ndarray] = None
            ) -> List[np.ndarray]:
        """audio [B, F * hop] = inverse(z * sigma, mel), like the graph: feeds {mel [B, M, F], z [B, F * hop],
        sigma [1]}. ``prof`` is not supported (must be None)."""
        mel_name, z_name, sigma_name = self.input_names
        mel = np.ascontiguousarray(feeds[mel_name], dtype=np.float32)
        z = np.ascontiguousarray(feeds[z_name], dtype=np.float32)
        sigma = np.asarray(feeds[sigma_name], dtype=np.float32).reshape(-1)[:1]
        b, m, f = mel.shape
        t, g = f * self.hop_length, self.n_group
        if m != self.n_mels or z.shape != (b, t) or t % g:
            raise InputError(f"native engine: mel {mel.shape} and z {z.shape} do not fit [B, {self.n_mels}, F], "
                             f"[B, F*{self.hop_length}] (F*{self.hop_length} a multiple of {g})")
        if prof is not None:
            raise InputError("native engine: the WaveGlow kernels have no profile")
        if b == 0 or f == 0:
            return [np.zeros((b, t), np.float32)]
        cond = self.cond(mel)
        x = np.ascontiguousarray((z * sigma).reshape(b, t // g, g).transpose(0, 2, 1))        # [B, g, T/g]
        for k in range(len(self.flows) - 1, -1, -1):
            off = self.offsets[k]
            y = self.flows[k].run(x[:, off:], cond)
            x[:, off:] = np.matmul(self.inv[k], y)
        return [np.ascontiguousarray(x.transpose(0, 2, 1).reshape(b, t))]

    def get_inputs(self) -> List[Any]:
        return [SimpleNamespace(name=n) for n in self.input_names]

    def get_providers(self) -> List[str]:
        return [PROVIDER]

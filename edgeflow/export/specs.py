"""Export specs: what each model family's synthesis graph looks like, in one registry.

A spec names the graph's inputs (``mel`` [B, n_mels, T], ``z`` [B, T*hop], ``sigma`` [1]) and
output (``audio`` [B, T*hop]), the dynamic axes (B and T), the opset, the parity tolerance, the
wrapper module for the synthesis direction, and the family's receptive field in mel frames
(used to pick the streaming context). ONNX is not imported here nor in flows/ and models/.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from edgeflow.core.registry import Registry

#: Export spec per model family.
SPECS: Registry = Registry("export spec")


class SynthesisWrapper(nn.Module):
    """The synthesis direction as a module: (mel [B, n_mels, T], z [B, T*hop], sigma [1]) -> audio [B, T*hop].

    Computes ``model.inverse(z * sigma, mel)[0]`` (the logdet is dropped).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model.inverse(z * sigma, mel)[0]


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """How a family exports.

    Attributes:
        family: model family name.
        receptive_field: config -> {"left", "right"} (frames bounding the true dependence) and
            {"net_left", "net_right"} (one pass of the nets; equal to the former unless the inverse
            is autoregressive); all in mel frames.
        input_names, output_names: graph I/O names (mel, z, sigma) -> (audio).
        opset: ONNX opset.
        tolerance: max abs error allowed between onnxruntime and PyTorch audio.
        validation_frames: mel lengths the export is validated at.
        wrapper: model -> the module exported.
    """

    family: str
    receptive_field: Callable[[Any], Dict[str, int]]
    input_names: Tuple[str, ...] = ("mel", "z", "sigma")
    output_names: Tuple[str, ...] = ("audio",)
    opset: int = 18
    tolerance: float = 1e-4
    validation_frames: Tuple[int, ...] = (8, 23, 50)
    wrapper: Callable[[nn.Module], nn.Module] = SynthesisWrapper

    def dynamic_axes(self, hop: int) -> Dict[str, Dict[int, str]]:
        """Dynamic axes for torch.onnx.export: batch B and frames T (samples T*hop)."""
        mel, z, _ = self.input_names
        samples = f"T*{hop}"
        return {mel: {0: "B", 2: "T"}, z: {0: "B", 1: samples}, self.output_names[0]: {0: "B", 1: samples}}

    def io_spec(self, config: Any) -> Dict[str, Any]:
        """The manifest's io section: names, shapes with symbolic dims, dtypes, sigma default."""
        n_mels, hop = config.mel.n_mels, config.mel.hop_length
        mel, z, sigma = self.input_names
        return {
            "inputs": [{"name": mel, "shape": ["B", n_mels, "T"], "dtype": "float32"},
                       {"name": z, "shape": ["B", f"T*{hop}"], "dtype": "float32"},
                       {"name": sigma, "shape": [1], "dtype": "float32"}],
            "outputs": [{"name": self.output_names[0], "shape": ["B", f"T*{hop}"], "dtype": "float32"}],
            "sigma_default": float(config.sigma_infer),
        }

    def example_inputs(self, config: Any, frames: int, batch: int = 1, seed: int = 0) -> Tuple[torch.Tensor, ...]:
        """(mel, z, sigma) example tensors for tracing: log-mel-like values, standard normal z."""
        g = torch.Generator().manual_seed(seed)
        mel = torch.randn(batch, config.mel.n_mels, frames, generator=g) * 2.0 - 5.0
        z = torch.randn(batch, frames * config.mel.hop_length, generator=g)
        return mel, z, torch.tensor([float(config.sigma_infer)])


def _frames(samples: int, hop: int) -> int:
    return int(math.ceil(samples / hop))


def _wn_radius(kernel_size: int, n_layers: int) -> int:
    """Steps one output of a non-causal dilated stack (dilations 1, 2, 4, ...) reaches on each side."""
    return (kernel_size - 1) // 2 * (2 ** n_layers - 1)


def waveflow_field(cfg: Any) -> Dict[str, int]:
    """WaveFlow receptive field in frames.

    One net pass reaches ``r = (k-1)/2 * (2^L - 1)`` columns (of h samples) each side. In the
    inverse, row i depends on rows < i through the net, so the reach compounds over the h rows:
    ``n_flows * h * r`` columns in the worst case (``left``/``right``), versus ``n_flows * r`` for one
    pass per flow (``net_*``, what the trained nets mostly use). The transposed-conv upsampler adds
    at most 2 input steps per layer.
    """
    h, hop = cfg.height, cfg.mel.hop_length
    r = _wn_radius(cfg.kernel_size, cfg.n_layers)
    up, scale = 0.0, 1
    for s in cfg.upsample_factors:
        up += 2.0 / scale
        scale *= s
    up = int(math.ceil(up))
    strict = _frames(cfg.n_flows * h * r * h + h, hop) + up
    net = _frames(cfg.n_flows * r * h + h, hop) + up
    return {"left": strict, "right": strict, "net_left": net, "net_right": net}


def waveglow_field(cfg: Any) -> Dict[str, int]:
    """WaveGlow receptive field in frames: each coupling's WN reaches ``(k-1)/2 * (2^L - 1)`` groups
    of n_group samples each side (couplings are not autoregressive, so this bound is exact), plus
    the upsampler (kernel 4*hop, stride hop: up to 4 frames back)."""
    r = _wn_radius(cfg.wn_kernel_size, cfg.wn_layers)
    f = _frames(cfg.n_flows * r * cfg.n_group + cfg.n_group, cfg.mel.hop_length)
    return {"left": f + 4, "right": f + 1, "net_left": f + 4, "net_right": f + 1}


SPECS.register("waveflow")(ExportSpec("waveflow", waveflow_field))
SPECS.register("waveglow")(ExportSpec("waveglow", waveglow_field))


def get_spec(family: str) -> ExportSpec:
    """The export spec of ``family`` (ConfigError listing the known ones if unknown)."""
    return SPECS.get(family)


def families() -> List[str]:
    return list(SPECS)

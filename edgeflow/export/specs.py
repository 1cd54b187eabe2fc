"""Export specs: what a model family's synthesis graph looks like, built from its declaration.

A spec names the graph's inputs (``mel`` [B, n_mels, T], ``z`` [B, T*hop], ``sigma`` [1]) and
output (``audio`` [B, T*hop]), the dynamic axes (B and T), the opset, the parity tolerance, the
wrapper module for the synthesis direction, and the family's receptive field in mel frames
(used to pick the streaming context). Everything family-specific comes from the family's
:class:`edgeflow.models.family.ExportDecl`; nothing here switches on a family.
ONNX is not imported here nor in flows/ and models/.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from edgeflow.models.family import FAMILIES, get_family


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

    @property
    def has_noise(self) -> bool:
        """Whether the graph takes noise: (mel, z, sigma) inputs; False: (mel) only (a GAN vocoder)."""
        return len(self.input_names) == 3

    def dynamic_axes(self, hop: int) -> Dict[str, Dict[int, str]]:
        """Dynamic axes for torch.onnx.export: batch B and frames T (samples T*hop)."""
        samples = f"T*{hop}"
        axes = {self.input_names[0]: {0: "B", 2: "T"}, self.output_names[0]: {0: "B", 1: samples}}
        if self.has_noise:
            axes[self.input_names[1]] = {0: "B", 1: samples}
        return axes

    def io_spec(self, config: Any) -> Dict[str, Any]:
        """The manifest's io section: names, shapes with symbolic dims, dtypes, sigma default (noise only)."""
        n_mels, hop = config.mel.n_mels, config.mel.hop_length
        io = {"inputs": [{"name": self.input_names[0], "shape": ["B", n_mels, "T"], "dtype": "float32"}],
              "outputs": [{"name": self.output_names[0], "shape": ["B", f"T*{hop}"], "dtype": "float32"}]}
        if self.has_noise:
            io["inputs"] += [{"name": self.input_names[1], "shape": ["B", f"T*{hop}"], "dtype": "float32"},
                             {"name": self.input_names[2], "shape": [1], "dtype": "float32"}]
            io["sigma_default"] = float(config.sigma_infer)
        return io

    def example_inputs(self, config: Any, frames: int, batch: int = 1, seed: int = 0) -> Tuple[torch.Tensor, ...]:
        """(mel, z, sigma) example tensors for tracing (mel only without noise): log-mel-like values, standard
        normal z."""
        g = torch.Generator().manual_seed(seed)
        mel = torch.randn(batch, config.mel.n_mels, frames, generator=g) * 2.0 - 5.0
        if not self.has_noise:
            return (mel,)
        z = torch.randn(batch, frames * config.mel.hop_length, generator=g)
        return mel, z, torch.tensor([float(config.sigma_infer)])

    def reference(self, model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """PyTorch audio for example ``inputs``: ``model.inverse(z * sigma, mel)[0]``, or the wrapper's output
        for a graph without noise inputs."""
        if self.has_noise:
            mel, z, sigma = inputs
            return model.inverse(z * sigma, mel)[0]
        return self.wrapper(model)(*inputs)


def spec_of(family: Any) -> ExportSpec:
    """The export spec of a family (name, model, config or Family), from its ``export`` declaration."""
    fam = get_family(family)
    decl = fam.export
    if decl is None:
        from edgeflow.core.errors import ConfigError

        raise ConfigError(f"the {fam.name} family declares no export")
    return ExportSpec(fam.name, decl.receptive_field, input_names=tuple(decl.input_names),
                      output_names=tuple(decl.output_names), opset=decl.opset, tolerance=decl.tolerance,
                      validation_frames=tuple(decl.validation_frames), wrapper=decl.wrapper or SynthesisWrapper)


def get_spec(family: str) -> ExportSpec:
    """The export spec of ``family`` (ConfigError listing the known ones if unknown)."""
    return spec_of(family)


def families() -> List[str]:
    """Families that declare an export."""
    return [name for name, fam in FAMILIES.items() if fam.export is not None]

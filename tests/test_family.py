"""A model family defined in this file only registers, exports through the normal exporter, and goes through
compression passes using nothing but its declarations (:class:`edgeflow.models.family.Family`)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Dict

import numpy as np
import pytest
import torch

from edgeflow.core.errors import ConfigError
from edgeflow.flows.base import Sequential
from edgeflow.flows.conv1x1 import Invertible1x1Conv
from edgeflow.flows.coupling import WN, AffineCoupling
from edgeflow.flows.reshape import Squeeze1d
from edgeflow.models import build_model
from edgeflow.models.base import FlowVocoder, VocoderConfig, check_lengths
from edgeflow.models.family import (ExportDecl, Family, WidthGroup, get_family, register_family,
                                    unregister_family)
from export_helpers import MEL

NAME = "test_tiny_affine"


@dataclasses.dataclass
class TinyConfig(VocoderConfig):
    """A tiny affine-coupling vocoder: n_group samples squeezed into channels, n_flows (1x1 conv, coupling)."""

    n_flows: int = 2
    n_group: int = 4
    wn_layers: int = 2
    wn_channels: int = 8


class TinyVocoder(FlowVocoder):
    """forward(audio [B, T], mel [B, n_mels, T / hop]) -> (z [B, T], logdet [B])."""

    family = NAME

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        c = config
        self.squeeze = Squeeze1d(c.n_group)
        blocks = []
        for _ in range(c.n_flows):
            blocks += [Invertible1x1Conv(c.n_group),
                       AffineCoupling(c.n_group, c.mel.n_mels, c.wn_layers, c.wn_channels, 3)]
        self.flows = Sequential(blocks)

    @property
    def length_multiple(self) -> int:
        return int(np.lcm(self.hop_length, self.config.n_group))

    def cond(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel repeated to one column per group of n_group samples: [B, n_mels, T / n_group]."""
        return mel.repeat_interleave(self.hop_length // self.config.n_group, dim=2)

    def forward(self, audio, mel=None):
        check_lengths(audio, mel, self.hop_length)
        x, _ = self.squeeze(audio[:, None])
        z, logdet = self.flows(x, self.cond(mel))
        return self.squeeze.inverse(z)[0][:, 0], logdet

    def inverse(self, z, mel=None):
        check_lengths(z, mel, self.hop_length)
        x, _ = self.squeeze(z[:, None])
        audio, logdet = self.flows.inverse(x, self.cond(mel))
        return self.squeeze.inverse(audio)[0][:, 0], logdet


def _field(cfg: TinyConfig) -> Dict[str, int]:
    reach = cfg.n_flows * (2 ** cfg.wn_layers - 1) * cfg.n_group // cfg.mel.hop_length + 1
    return {"left": reach, "right": reach, "net_left": reach, "net_right": reach}


class TinyFamily(Family):
    name, task = NAME, "vocoder"
    config_cls, model_cls = TinyConfig, TinyVocoder
    export = ExportDecl(receptive_field=_field, validation_frames=(4, 9))
    width = WidthGroup(("wn_channels",))
    size_fields = ("n_flows", "wn_layers", "wn_channels")

    def flops_breakdown(self, c: TinyConfig) -> Dict[str, float]:
        ch, L, m = c.wn_channels, c.wn_layers, c.mel.n_mels
        per_pos = c.n_flows * (2 * c.n_group ** 2 + 2 * m * 2 * ch * L + 2 * 3 * ch * 2 * ch * L)
        return {"flows": float(per_pos * c.mel.sample_rate / c.n_group)}

    def prunable_nets(self, model):
        return [m for m in model.modules() if isinstance(m, WN)]


@pytest.fixture(scope="module")
def family():
    fam = register_family(TinyFamily())
    yield fam
    unregister_family(NAME)


@pytest.fixture()
def model(family):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = build_model(NAME, {"mel": MEL})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def _inputs(model, frames=6):
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(1, model.n_mels, frames, generator=g) - 4
    return mel, torch.randn(1, frames * model.hop_length, generator=g)


def test_registered_through_the_protocol(family, model):
    assert get_family(NAME) is family and get_family(model) is family and get_family(model.config) is family
    mel, z = _inputs(model)
    with torch.no_grad():
        x, _ = model.inverse(z, mel)
        back, _ = model(x, mel)
    assert torch.allclose(back, z, atol=1e-4)
    from edgeflow.validate.cost import flops_per_second_of_audio
    assert flops_per_second_of_audio(model) == sum(family.flops_breakdown(model.config).values()) > 0


def test_incomplete_family_is_refused():
    class NoTask(TinyFamily):
        name, task = "test_no_task", "speech-to-text"

    class BadField(TinyFamily):
        name, layers_field = "test_bad_field", "n_layers"

    with pytest.raises(ValueError, match="task"):
        register_family(NoTask())
    with pytest.raises(ValueError, match="n_layers"):
        register_family(BadField())
    with pytest.raises(ConfigError, match="unknown model family"):
        get_family("test_no_task")


def test_exports_through_the_normal_exporter(family, model, tmp_path):
    from edgeflow.export.onnx_export import export_bundle
    from edgeflow.runtime import Synthesizer

    manifest = export_bundle(model, tmp_path / "bundle")
    assert manifest["family"] == NAME and manifest["validation"]["passed"]
    assert [r["frames"] for r in manifest["validation"]["lengths"]] == [4, 9]
    assert manifest["streaming"]["context_frames"] == {"left": _field(model.config)["net_left"],
                                                       "right": _field(model.config)["net_right"]}
    assert manifest["export"]["cached"] is None                 # the family has no cached inverse
    mel, _ = _inputs(model, 8)
    audio = Synthesizer.load(tmp_path / "bundle").synthesize(mel[0].numpy(), seed=3)
    with torch.no_grad():
        ref = model.synthesize(mel, seed=3)[0].numpy()
    assert np.max(np.abs(audio - ref)) < 1e-4


def test_prune_pass_uses_only_the_declarations(family, model, tmp_path):
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    art = Artifact(model=copy.deepcopy(model), reference=model)
    record = apply_pass(art, make_config("prune", {"ratio": 0.5, "score": "weight"}), PassContext(work_dir=tmp_path))
    assert record["details"]["wn_channels"] == "8 -> 4"
    assert art.model.config.wn_channels == 4 and isinstance(art.model, TinyVocoder)
    assert all(net.channels == 4 for net in family.prunable_nets(art.model))
    assert record["details"]["after"]["gflops_per_audio_second"] < record["details"]["before"][
        "gflops_per_audio_second"]
    mel, z = _inputs(model)
    with torch.no_grad():                                     # still an exact flow
        x, _ = art.model.inverse(z, mel)
        assert torch.allclose(art.model(x, mel)[0], z, atol=1e-4)


def test_student_cut_by_declared_width_only(family, model):
    from edgeflow.compress.reduce import drop_layers, keep_flows
    from edgeflow.compress.student import make_student

    student, info = make_student(model, {"wn_channels": 4})
    assert student.config.wn_channels == 4 and [list(s) for s in info["steps"]] == [["prune"]]
    with pytest.raises(ConfigError, match="bigger than the teacher"):
        make_student(model, {"wn_channels": 16})
    with pytest.raises(ConfigError, match="cannot carry the teacher's weights over a change of wn_layers"):
        make_student(model, {"wn_layers": 1})                # no layer cut declared
    fresh, _ = make_student(model, {"wn_layers": 1}, init="fresh")
    assert fresh.config.wn_layers == 1
    with pytest.raises(ConfigError, match="no layer stack"):
        drop_layers(model, 1)
    with pytest.raises(ConfigError, match="no flow stack"):
        keep_flows(model, 1)

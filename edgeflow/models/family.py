"""A model family is one registered object: :class:`Family`.

A family declares, in one module, everything the other layers need to know about it:

* ``name``, ``task`` ("vocoder": mel -> wav; "tts": text -> wav), ``config_cls``, ``model_cls``;
* ``export``: an :class:`ExportDecl` (graph input/output names, opset, parity tolerance, validation
  lengths, receptive field), plain data and callables; :mod:`edgeflow.export.specs` builds its
  ``ExportSpec`` from it (nothing here imports the export layer);
* the cost model :meth:`Family.flops_breakdown` (FLOPs per second of audio, by part);
* what compression may cut: depth (``flows_field`` cut by :meth:`Family.keep_flows`, ``layers_field`` cut by
  :meth:`Family.drop_layers`), ``extra_cuts`` (other fields :meth:`Family.cut` reduces, e.g. WaveFlow's
  height), width (:class:`WidthGroup`: the config fields that size the channel groups of
  :meth:`Family.prunable_nets`, which move together), ``size_fields`` (a student may not exceed the teacher
  in these) and ``derived_fields`` (fields reset when others change);
* export hooks as declared methods: :meth:`Family.freeze`, :meth:`Family.fuse`, :meth:`Family.set_cached`.

Example (a complete family is :mod:`edgeflow.models.waveglow_family`)::

    class TinyFamily(Family):
        name, task = "tiny", "vocoder"
        config_cls, model_cls = TinyConfig, TinyVocoder
        export = ExportDecl(receptive_field=lambda cfg: dict.fromkeys(("left", "right", "net_left", "net_right"), 4))
        layers_field = "wn_layers"
        size_fields = ("wn_layers", "wn_channels")
        width = WidthGroup(("wn_channels",))

        def flops_breakdown(self, config): return {"wn": ...}

    register_family(TinyFamily())
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from edgeflow.core.errors import ConfigError
from edgeflow.core.registry import Registry
from edgeflow.flows.conv1x1 import Invertible1x1Conv, InvertibleLU1x1Conv
from edgeflow.flows.coupling import remove_weight_norm

#: Task kinds: what a family's model maps.
TASKS = ("vocoder", "tts")

#: name -> :class:`Family`.
FAMILIES: Registry = Registry("model family")


@dataclasses.dataclass(frozen=True)
class ExportDecl:
    """How a family's synthesis graph looks (read by :mod:`edgeflow.export.specs`).

    Attributes:
        receptive_field: config -> {"left", "right"} (frames bounding the true dependence) and
            {"net_left", "net_right"} (one pass of the nets), all in mel frames.
        input_names, output_names: graph I/O names ((mel, z, sigma) -> (audio) for vocoders).
        opset: ONNX opset.
        tolerance: max abs error allowed between onnxruntime and PyTorch audio.
        validation_frames: mel lengths the export is validated at.
        wrapper: model -> the module exported; None: the synthesis direction
            ``model.inverse(z * sigma, mel)[0]``.
    """

    receptive_field: Callable[[Any], Dict[str, int]]
    input_names: Tuple[str, ...] = ("mel", "z", "sigma")
    output_names: Tuple[str, ...] = ("audio",)
    opset: int = 18
    tolerance: float = 1e-4
    validation_frames: Tuple[int, ...] = (8, 23, 50)
    wrapper: Optional[Callable[[nn.Module], nn.Module]] = None


@dataclasses.dataclass(frozen=True)
class WidthGroup:
    """Channel groups that move together under pruning.

    Attributes:
        fields: config fields set to the new width together (e.g. ``("channels",)``).
    The channels are those of :meth:`Family.prunable_nets` (residual, gate and skip channels of each
    ``WN`` / ``WaveFlowNet`` net, pruned by :func:`edgeflow.compress.prune.prune_model`).
    """

    fields: Tuple[str, ...]


class Family:
    """One model family. Subclass, set the declarations, override what the family supports, register an
    instance with :func:`register_family`. Methods a family does not support refuse with a ConfigError."""

    name: str = ""
    task: str = "vocoder"
    config_cls: type = type(None)
    model_cls: type = type(None)
    export: Optional[ExportDecl] = None
    #: depth: the config field counting the flows (cut by :meth:`keep_flows`), and the per-flow layer
    #: depth (cut by :meth:`drop_layers`); None where the family has no such stack.
    flows_field: Optional[str] = None
    layers_field: Optional[str] = None
    #: other fields :meth:`cut` reduces with weights carried over (e.g. WaveFlow's height).
    extra_cuts: Tuple[str, ...] = ()
    width: Optional[WidthGroup] = None
    #: config fields that size a model: a student may not exceed its teacher in any of them.
    size_fields: Tuple[str, ...] = ()
    #: fields a student may change freely (no effect on the weights).
    free_fields: Tuple[str, ...] = ("sigma_infer", "sigma_train")
    #: {field: fields}: ``field`` is reset to None when a student changes any of ``fields``.
    derived_fields: Dict[str, Tuple[str, ...]] = {}
    #: whether :meth:`set_cached` chooses between two inverse algorithms.
    has_cached_inverse: bool = False

    # -- construction --------------------------------------------------------------------------------------
    def config_from_dict(self, data: Dict[str, Any]):
        """The family's config from a dict (unknown keys refused)."""
        return self.config_cls.from_dict(data)

    def build(self, config: Any = None) -> nn.Module:
        """A model from a config object, a dict, or None (defaults)."""
        if config is None:
            config = self.config_cls()
        elif isinstance(config, dict):
            config = self.config_cls.from_dict(config)
        elif not isinstance(config, self.config_cls):
            raise ConfigError(f"{self.name} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        return self.model_cls(config)

    # -- cost ----------------------------------------------------------------------------------------------
    def flops_breakdown(self, config: Any) -> Dict[str, float]:
        """FLOPs (2 x multiply-adds of every convolution) per second of audio, by part."""
        raise ConfigError(f"the {self.name} family declares no cost model")

    # -- compression ---------------------------------------------------------------------------------------
    def flow_counts(self, config: Any) -> List[int]:
        """The flow counts :meth:`keep_flows` accepts."""
        if self.flows_field is None:
            return []
        return list(range(1, getattr(config, self.flows_field) + 1))

    def choose_flows(self, config: Any, n_flows: int, pick: Callable[[int, int], List[int]]) -> List[int]:
        """Indices of the flows to keep, ``pick(n, k)`` choosing k of n (the family may pick by stage)."""
        return pick(getattr(config, self.flows_field), n_flows)

    def keep_flows(self, model: nn.Module, idx: Sequence[int]) -> Tuple[nn.Module, Dict[str, Any]]:
        """A new model with the flows ``idx`` (ascending) of ``model``, weights carried over. Returns (model, info)."""
        raise ConfigError(f"the {self.name} family cannot drop flows")

    def drop_layers(self, model: nn.Module, n_layers: int) -> Tuple[nn.Module, Dict[str, Any]]:
        """A new model whose flows keep their first ``n_layers`` layers. Returns (model, info)."""
        raise ConfigError(f"the {self.name} family cannot drop layers")

    def cut(self, model: nn.Module, field: str, value: Any) -> Tuple[nn.Module, Dict[str, Any]]:
        """A new model with ``field`` (one of :attr:`extra_cuts`) reduced to ``value``. Returns (model, info)."""
        raise ConfigError(f"the {self.name} family cannot reduce {field}")

    def prunable_nets(self, model: nn.Module) -> List[nn.Module]:
        """The conditioning nets (``WN`` / ``WaveFlowNet``) whose channels :attr:`width` sizes, in flow order."""
        return []

    def channel_groups(self, config: Any) -> Optional[List[Dict[str, Any]]]:
        """The channel groups of a HiFi-GAN-style generator that move together under structured pruning
        (``{"name", "width", "writers", "readers"}``, :func:`edgeflow.models.hifigan.channel_groups`), or None
        when the family has none (default). Module names are relative to the model."""
        return None

    # -- export hooks --------------------------------------------------------------------------------------
    def freeze(self, model: nn.Module) -> nn.Module:
        """Make ``model`` export-ready in place: weight norm folded, the invertible 1x1 convs' inverse weights
        computed once (float64) and kept as buffers (no matrix inverse in the graph), eval mode, no gradients.
        Returns it. The frozen model's ``inverse`` equals the unfrozen one's to float32 rounding (< 1e-5)."""
        remove_weight_norm(model)
        for m in model.modules():
            if isinstance(m, (Invertible1x1Conv, InvertibleLU1x1Conv)):
                m.freeze()
        model.eval()
        model.requires_grad_(False)
        return model

    def fuse(self, model: nn.Module) -> nn.Module:
        """Rewrite a frozen model's graph-only forms in place (faster, equal to float rounding). Default: none."""
        return model

    def set_cached(self, model: nn.Module, cached: bool) -> None:
        """Choose the cached inverse (True) or the plain reference one. Default: nothing to choose."""

    def __repr__(self) -> str:
        return f"<{self.task} family {self.name!r}>"


def register_family(family: Family) -> Family:
    """Register a family instance under ``family.name`` (ValueError if the declaration is incomplete)."""
    if not isinstance(family, Family) or not family.name:
        raise ValueError("register_family needs a named Family instance")
    if family.task not in TASKS:
        raise ValueError(f"family {family.name!r}: task must be one of {', '.join(TASKS)}, got {family.task!r}")
    if not (isinstance(family.config_cls, type) and isinstance(family.model_cls, type)
            and issubclass(family.model_cls, nn.Module)):
        raise ValueError(f"family {family.name!r} needs config_cls and a torch model_cls")
    for f in (family.flows_field, family.layers_field, *family.extra_cuts, *family.size_fields,
              *(family.width.fields if family.width else ())):
        if f is not None and f not in {x.name for x in dataclasses.fields(family.config_cls)}:
            raise ValueError(f"family {family.name!r} declares {f!r}, not a field of {family.config_cls.__name__}")
    FAMILIES.register(family.name)(family)
    return family


def unregister_family(name: str) -> None:
    """Remove a family (test families)."""
    FAMILIES.unregister(name)


def get_family(which: Any) -> Family:
    """The family of a name, a model (its ``family`` name) or a config object (ConfigError if unknown)."""
    if isinstance(which, Family):
        return which
    if isinstance(which, str):
        return FAMILIES.get(which)
    if isinstance(which, nn.Module) and isinstance(getattr(which, "family", None), str):
        return FAMILIES.get(which.family)
    for _, fam in FAMILIES.items():
        if type(which) is fam.config_cls:
            return fam
    known = ", ".join(FAMILIES) or "none"
    raise ConfigError(f"{type(which).__name__} is not a model or config of a registered family (known: {known})")


def families(task: Optional[str] = None) -> List[str]:
    """Registered family names (of one task kind if given)."""
    return [n for n, f in FAMILIES.items() if task is None or f.task == task]


# -- helpers for declarations ----------------------------------------------------------------------------
def frames(samples: int, hop: int) -> int:
    """Mel frames covering ``samples`` audio samples."""
    return int(math.ceil(samples / hop))


def wn_radius(kernel_size: int, n_layers: int) -> int:
    """Steps one output of a non-causal dilated stack (dilations 1, 2, 4, ...) reaches on each side."""
    return (kernel_size - 1) // 2 * (2 ** n_layers - 1)


def checked_flows(idx: Sequence[int], n_flows: int) -> List[int]:
    """``idx`` as a list of ascending, distinct flow indices in [0, n_flows), else a ConfigError."""
    kept = [int(i) for i in idx]
    if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= n_flows:
        raise ConfigError(f"keep_flows: flows to keep must be ascending distinct indices in [0, {n_flows}), "
                          f"got {list(idx)}")
    return kept

"""Freeze and fuse a model for export through its family's declared hooks (:class:`edgeflow.models.family.Family`)."""

from __future__ import annotations

import torch

from edgeflow.models.family import get_family


def freeze_model(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` export-ready, in place, and return it (:meth:`Family.freeze`): weight norm folded
    (safe on a deep copy: the original keeps its weight norm), inverse 1x1 weights precomputed in float64,
    eval mode, parameters without gradients. The frozen model's ``inverse`` equals the unfrozen one's to
    float32 rounding (< 1e-5)."""
    return get_family(model).freeze(model)


def fuse_for_export(model: torch.nn.Module) -> torch.nn.Module:
    """Rewrite a frozen model's graph-only forms, in place (:meth:`Family.fuse`; the exporter calls it on its
    own copy), e.g. WaveFlow's upsampler in phase form and each net's end conv folded into its layers' skip
    convs. The result's ``inverse`` equals the frozen model's to float32 rounding. Derived weights are not
    kept in sync with later edits: fuse last."""
    return get_family(model).fuse(model)

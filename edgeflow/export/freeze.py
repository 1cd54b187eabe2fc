"""Freeze a model for export: weight norm folded, inverse 1x1 weights precomputed, eval mode."""

from __future__ import annotations

import torch

from edgeflow.flows.coupling import remove_weight_norm


def freeze_model(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` export-ready, in place, and return it.

    * every weight-norm parametrisation is folded into a plain weight (safe on a deep copy: the
      original keeps its weight norm);
    * every module with a ``freeze()`` method (the invertible 1x1 convs) computes its inverse weight
      once in float64 and keeps it as a buffer, so the graph needs no matrix inverse;
    * eval mode, parameters without gradients.

    The frozen model's ``inverse`` equals the unfrozen one's to float32 rounding (< 1e-5).
    """
    remove_weight_norm(model)
    for m in model.modules():
        if m is not model and callable(getattr(m, "freeze", None)):
            m.freeze()
    model.eval()
    model.requires_grad_(False)
    return model


def fuse_for_export(model: torch.nn.Module) -> torch.nn.Module:
    """Rewrite a frozen model's graph-only forms, in place (the exporter calls it on its own copy).

    Every module with a ``fuse()`` method precomputes an equivalent, faster form for the exported graph:
    WaveFlow's upsampler in phase form (a plain conv instead of a 1-channel ConvTranspose) and each
    WaveFlow net's end conv folded into its layers' skip convs. The result's ``inverse`` equals the frozen
    model's to float32 rounding. Derived weights are not kept in sync with later edits: fuse last.
    """
    for m in list(model.modules()):
        if m is not model and callable(getattr(m, "fuse", None)):
            m.fuse()
    return model

"""The Triton kernels (gpu target) against the PyTorch layers, run in Triton's CPU interpreter.

``TRITON_INTERPRET=1`` makes ``triton.jit`` kernels run on numpy: the same kernel source the GPU compiles, its
index arithmetic, masks and fusion checked here without a GPU (bench/bench_triton.py compiles and times them
on one). Sizes are small and not multiples of the block sizes, so every mask is exercised.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from edgeflow.flows.coupling import AffineCoupling  # noqa: E402
from edgeflow.flows.triton_ops import set_engine  # noqa: E402
from edgeflow.flows.waveflow import WaveFlowCoupling  # noqa: E402
from edgeflow.models.vits.flows import FlowCond, PriorFlow, ResidualCouplingLayer  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="triton needs a GPU or TRITON_INTERPRET=1")


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Non-zero weights everywhere (the end/post convs start at zero, which would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p[0].numel()) ** 0.5 * 2)


def _both(module, fn):
    set_engine(module, "torch")
    ref = fn()
    assert set_engine(module, "triton") > 0
    try:
        got = fn()
    finally:
        set_engine(module, "torch")
    return ref, got


@pytest.mark.parametrize("reverse", [False, True])
def test_affine_coupling_matches_torch(reverse):
    torch.manual_seed(0)
    layer = AffineCoupling(channels=6, cond_channels=5, n_layers=3, wn_channels=20, kernel_size=3).eval()
    _randomize(layer, 1)
    x, cond = torch.randn(2, 6, 77), torch.randn(2, 5, 77)
    with torch.no_grad():
        (y0, ld0), (y1, ld1) = _both(layer, lambda: layer.inverse(x, cond) if reverse else layer(x, cond))
    assert ld0.abs().max() > 0.1                   # the weights are not the identity
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ld1, ld0, rtol=1e-4, atol=1e-4)


def test_affine_coupling_triton_inverse_reconstructs():
    layer = AffineCoupling(channels=4, cond_channels=3, n_layers=2, wn_channels=16).eval()
    _randomize(layer, 2)
    x, cond = torch.randn(1, 4, 40), torch.randn(1, 3, 40)
    with torch.no_grad():
        z, ld = layer(x, cond)
        set_engine(layer, "triton")
        back, ld_inv = layer.inverse(z, cond)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gin", [0, 7])
def test_vits_prior_flow_matches_torch(gin):
    torch.manual_seed(3)
    flow = PriorFlow(channels=8, hidden=24, kernel_size=5, dilation_rate=2, n_layers=3, n_flows=2,
                     gin_channels=gin).eval()
    _randomize(flow, 4)
    t = 50
    mask = torch.ones(2, 1, t)
    mask[1, :, 37:] = 0                            # a shorter second utterance
    cond = FlowCond(mask, torch.randn(2, gin, 1) if gin else None)
    z = torch.randn(2, 8, t) * mask
    with torch.no_grad():
        (x0, _), (x1, _) = _both(flow, lambda: flow.inverse(z, cond))
        (f0, _), (f1, _) = _both(flow, lambda: flow(z, cond))
    assert (x0 - z).abs().max() > 0.05
    torch.testing.assert_close(x1, x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f1, f0, rtol=1e-4, atol=1e-5)
    assert x1[1, :, 37:].abs().max() == 0


def test_vits_affine_coupling_logdet_matches_torch():
    layer = ResidualCouplingLayer(6, 16, 3, 1, 2, mean_only=False).eval()
    _randomize(layer, 5)
    mask = torch.ones(1, 1, 33)
    mask[..., 30:] = 0
    z = torch.randn(1, 6, 33) * mask
    with torch.no_grad():
        (x0, ld0), (x1, ld1) = _both(layer, lambda: layer.inverse(z, FlowCond(mask)))
    assert ld0.abs().max() > 0.1
    torch.testing.assert_close(x1, x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ld1, ld0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_waveflow_row_step_matches_cached_inverse(fused):
    torch.manual_seed(6)
    coupling = WaveFlowCoupling(cond_channels=5, n_layers=3, channels=12, kernel_size=3, dilations_h=[1, 2, 1]).eval()
    _randomize(coupling, 7, scale=0.5)
    if fused:
        coupling.net.fuse()
    z, cond = torch.randn(2, 1, 6, 45), torch.randn(2, 5, 6, 45)
    with torch.no_grad():
        (x0, ld0), (x1, ld1) = _both(coupling, lambda: coupling.inverse(z, cond))
        zz, ld_f = coupling(x1, cond)              # the torch forward maps the kernel's inverse back
    assert ld0.abs().max() > 0.1
    torch.testing.assert_close(x1, x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ld1, ld0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zz, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld_f, -ld1, rtol=1e-4, atol=1e-4)


def test_set_engine_rejects_unknown_engine():
    with pytest.raises(ValueError, match="engine must be one of"):
        set_engine(torch.nn.Identity(), "cuda-graphs")


@pytest.mark.slow
def test_demo_waveflow_vocoder_through_triton_matches_torch():
    """The shipped demo WaveFlow (6 flows x 6 layers, h=16, 32 channels), whole inverse, same noise (slow: 576
    interpreted launches, about 4 minutes)."""
    from pathlib import Path

    from edgeflow.models.checkpoint import load_model

    model, _ = load_model(Path(__file__).parents[1] / "models" / "waveflow-demo" / "model.pt")
    model.eval()
    mel = torch.randn(1, model.config.mel.n_mels, 6, generator=torch.Generator().manual_seed(8)) - 4
    z = torch.randn(1, 6 * model.hop_length, generator=torch.Generator().manual_seed(9)) * 0.6
    with torch.no_grad():
        (a0, ld0), (a1, ld1) = _both(model, lambda: model.inverse(z, mel))
    assert a0.abs().max() > 1e-3
    torch.testing.assert_close(a1, a0, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(ld1, ld0, rtol=1e-4, atol=1e-2)


def test_waveglow_vocoder_through_triton_matches_torch():
    from edgeflow.models.waveglow import WaveGlow, WaveGlowConfig

    model = WaveGlow(WaveGlowConfig(n_flows=5, n_early_every=2, n_early_size=2, wn_layers=3, wn_channels=16)).eval()
    for i, m in enumerate(x for x in model.modules() if isinstance(x, AffineCoupling)):
        _randomize(m, 10 + i, scale=0.1)   # the couplings only: the invertible 1x1 convs stay orthogonal
    mel = torch.randn(1, model.config.mel.n_mels, 3)
    z = torch.randn(1, 3 * model.hop_length) * 0.6
    with torch.no_grad():
        (a0, ld0), (a1, ld1) = _both(model, lambda: model.inverse(z, mel))
        (f0, _), (f1, _) = _both(model, lambda: model(a0, mel))
    assert 1e-3 < a0.abs().max() < 100
    torch.testing.assert_close(a1, a0, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(ld1, ld0, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(f1, f0, rtol=1e-3, atol=1e-5)

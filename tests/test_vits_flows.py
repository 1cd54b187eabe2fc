"""Property tests of the VITS flow layers: spline (with its linear tails), couplings, affine, log, flip.

Each layer: inverse reconstructs, forward logdet = log|det J| of the autograd Jacobian, inverse logdet =
-forward logdet. Float64, tiny sizes.
"""

import pytest
import torch

from edgeflow.flows.spline import rq_spline
from edgeflow.models.vits.duration import DurationPredictor, StochasticDurationPredictor
from edgeflow.models.vits.flows import (ConvFlow, ElementwiseAffine, Flip, FlowCond, Log, PriorFlow,
                                        ResidualCouplingLayer)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _randomize(module, std=0.3, seed=0):
    """Give zero-initialised layers (coupling outputs, spline projections) non-trivial weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _item(cond, b):
    return FlowCond(cond.mask[b:b + 1], None if cond.g is None else cond.g[b:b + 1])


def _jacobian_logdet(layer, x, cond):
    """log|det d layer(x) / dx| per batch item, by autograd on the flattened item."""
    out = []
    for b in range(x.shape[0]):
        xb, cb = x[b:b + 1], _item(cond, b)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(xb.shape), cb)[0].reshape(-1),
                                                 xb.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _spline_params(shape, k=10, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, k, generator=g) * scale, torch.randn(*shape, k, generator=g) * scale,
            torch.randn(*shape, k - 1, generator=g) * scale)


def test_spline_inverse_reconstructs_inside_and_in_tails():
    x = torch.cat([torch.linspace(-7, 7, 57), torch.tensor([-5.0, 5.0, 4.999999, -4.999999, 0.0])])
    w, h, d = _spline_params(x.shape)
    y, lad = rq_spline(x, w, h, d, tail_bound=5.0)
    back, lad_inv = rq_spline(y, w, h, d, inverse=True, tail_bound=5.0)
    assert torch.allclose(back, x, atol=1e-9)
    assert torch.allclose(lad_inv, -lad, atol=1e-9)
    tails = x.abs() > 5
    assert torch.equal(y[tails], x[tails]) and torch.all(lad[tails] == 0)
    assert torch.all((y[~tails] >= -5) & (y[~tails] <= 5))
    assert not torch.allclose(y[~tails], x[~tails], atol=1e-3)     # the spline is not the identity inside


def test_spline_logdet_matches_autograd_including_tails():
    x = torch.tensor([-6.5, -5.2, -4.9, -2.0, -0.3, 0.7, 3.3, 4.95, 5.4, 8.0], requires_grad=True)
    w, h, d = _spline_params(x.shape, seed=1)
    y, lad = rq_spline(x, w, h, d, tail_bound=5.0)
    grad = torch.autograd.grad(y.sum(), x)[0]      # elementwise map: the Jacobian is diagonal
    assert torch.allclose(lad, grad.log(), atol=1e-9)
    z = y.detach().requires_grad_(True)
    xb, lad_inv = rq_spline(z, w, h, d, inverse=True, tail_bound=5.0)
    assert torch.allclose(lad_inv, torch.autograd.grad(xb.sum(), z)[0].log(), atol=1e-9)


def test_spline_is_continuous_with_slope_one_at_the_tail_bound():
    w, h, d = _spline_params((2,), seed=2)
    eps = 1e-9
    for b in (-5.0, 5.0):
        x = torch.tensor([b - eps, b + eps])
        y, lad = rq_spline(x, w, h, d, tail_bound=5.0)
        assert abs(float(y[1] - y[0]) - 2 * eps) < 1e-12 and torch.all(lad.abs() < 1e-5)


def _cond(b, t, g_channels=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(b, g_channels, t, generator=gen) if g_channels else None
    return FlowCond(torch.ones(b, 1, t), g)


LAYERS = {
    "conv_flow": lambda: (ConvFlow(2, 8, 3, n_layers=2), 2, 8),
    "affine": lambda: (ElementwiseAffine(2), 2, 0),
    "flip": lambda: (Flip(), 4, 0),
    "coupling_mean_only": lambda: (ResidualCouplingLayer(4, 6, 3, 1, 2, mean_only=True), 4, 0),
    "coupling_affine": lambda: (ResidualCouplingLayer(4, 6, 3, 2, 2, mean_only=False), 4, 0),
    "prior_flow": lambda: (PriorFlow(4, 6, 3, 1, 2, n_flows=2), 4, 0),
    "prior_flow_speaker": lambda: (PriorFlow(4, 6, 3, 1, 2, n_flows=2, gin_channels=3), 4, -3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_flow_layer_contract(name):
    layer, c, gch = LAYERS[name]()
    _randomize(layer, seed=3).eval()
    b, t = 2, 5
    if gch < 0:   # speaker conditioning [B, gin, 1]
        cond = FlowCond(torch.ones(b, 1, t), torch.randn(b, -gch, 1, generator=torch.Generator().manual_seed(1)))
    else:
        cond = _cond(b, t, gch)
    x = torch.randn(b, c, t, generator=torch.Generator().manual_seed(4)) * 2.5
    x[..., 0], x[..., 1] = 6.0, -5.5           # the spline's linear tails (|x| > 5) are exercised too
    z, ld = layer(x, cond)
    back, ld_inv = layer.inverse(z, cond)
    assert torch.allclose(back, x, atol=1e-8)
    assert torch.allclose(ld_inv, -ld, atol=1e-8)
    assert torch.allclose(ld, _jacobian_logdet(layer, x, cond), atol=1e-6)
    if name.startswith("prior_flow") or name == "coupling_mean_only":
        assert torch.allclose(ld, torch.zeros(b))          # mean-only couplings preserve volume
    if name != "flip":
        assert not torch.allclose(z, x)


def test_log_flow_contract_on_positive_inputs():
    x = torch.rand(2, 1, 6, generator=torch.Generator().manual_seed(0)) * 5 + 0.1
    cond = _cond(2, 6)
    z, ld = Log()(x, cond)
    back, ld_inv = Log().inverse(z, cond)
    assert torch.allclose(back, x) and torch.allclose(ld_inv, -ld)
    assert torch.allclose(ld, _jacobian_logdet(Log(), x, cond), atol=1e-9)


def test_masked_positions_do_not_count():
    layer = _randomize(ConvFlow(2, 8, 3, n_layers=2), seed=5).eval()
    x = torch.randn(1, 2, 7, generator=torch.Generator().manual_seed(6))
    mask = torch.ones(1, 1, 7)
    mask[..., 5:] = 0
    z, ld = layer(x, FlowCond(mask))
    z_short, ld_short = layer(x[..., :5], FlowCond(torch.ones(1, 1, 5)))
    assert torch.all(z[..., 5:] == 0)
    assert torch.allclose(z[..., :5], z_short, atol=1e-9) and torch.allclose(ld, ld_short, atol=1e-9)


def test_stochastic_duration_predictor_nll_and_sampling():
    torch.manual_seed(0)
    dp = _randomize(StochasticDurationPredictor(8, n_flows=2), std=0.1).train()
    x = torch.randn(2, 8, 6, requires_grad=True)
    mask = torch.ones(2, 1, 6)
    w = torch.randint(1, 6, (2, 1, 6)).double()
    nll = dp.nll(x, mask, w, torch.randn(2, 2, 6))
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    nll.sum().backward()
    assert x.grad is None or torch.all(x.grad == 0)                    # the encoder output is detached
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in dp.named_parameters()
               if not n.startswith("flows.1."))
    dp.eval()
    noise = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(1))
    a, b = dp.sample_logw(x.detach(), mask, noise), dp.sample_logw(x.detach(), mask, noise)
    assert a.shape == (2, 1, 6) and torch.equal(a, b)
    assert not torch.allclose(a, dp.sample_logw(x.detach(), mask, noise * 0.5))


def test_deterministic_duration_predictor():
    dp = DurationPredictor(8, 16).eval()
    x, mask = torch.randn(1, 8, 5), torch.ones(1, 1, 5)
    assert dp(x, mask).shape == (1, 1, 5)
    assert dp.nll(x, mask, torch.full((1, 1, 5), 3.0)).shape == (1,)

"""The invertible contract, checked numerically for every flow block and both whole models.

For each block, in float64 and with every parameter perturbed away from its (identity-making)
initialisation:

* ``inverse(forward(x))`` reconstructs x;
* forward's logdet [B] equals log|det J| of the full autograd Jacobian dz/dx;
* inverse's logdet equals log|det J| of dx/dz and is minus forward's logdet at the same point.

The checks are helper functions (:func:`flow_problems`) that are themselves tested on
deliberately broken blocks, so a wrong logdet or a wrong inverse cannot pass unnoticed.
"""

from __future__ import annotations

import math
from typing import List, Optional

import pytest
import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.flows.base import Inverse, InvertibleModule, Sequential
from edgeflow.flows.conv1x1 import Invertible1x1Conv, InvertibleLU1x1Conv
from edgeflow.flows.coupling import AffineCoupling, remove_weight_norm
from edgeflow.flows.reshape import Conjugate, EarlySplit, Fold2d, Permute, Squeeze1d
from edgeflow.flows.waveflow import WaveFlowCoupling
from edgeflow.models.base import build_model

REC_TOL = 1e-9      # max |inverse(forward(x)) - x|
LOGDET_TOL = 1e-6   # max |logdet - log|det J||


# ---------------------------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------------------------

def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add ``scale * randn`` to every parameter (zero-initialised last layers would make couplings identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return module


def autograd_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| per batch item [B], from the full autograd Jacobian.

    Also checks that the map does not mix batch items (off-diagonal Jacobian blocks are zero).
    """
    b = x.shape[0]
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(b, -1), x, vectorize=True)
    n_out = jac.shape[1]
    jac = jac.reshape(b, n_out, b, -1)
    assert jac.shape[1] == jac.shape[3], f"not square: {n_out} outputs for {jac.shape[3]} inputs"
    out = []
    for i in range(b):
        for j in range(b):
            if i != j:
                assert jac[i, :, j].abs().max() == 0, f"batch item {i} depends on item {j}"
        sign, logabs = torch.linalg.slogdet(jac[i, :, i])
        assert sign != 0, "singular Jacobian"
        out.append(logabs)
    return torch.stack(out)


def flow_problems(block: InvertibleModule, x: torch.Tensor, cond: Optional[torch.Tensor] = None,
                  rec_tol: float = REC_TOL, logdet_tol: float = LOGDET_TOL) -> List[str]:
    """Check the invertible contract of ``block`` at x. Returns a list of problems (empty: all good)."""
    problems = []
    b = x.shape[0]
    z, ld_f = block(x, cond)
    x_rec, ld_i = block.inverse(z, cond)
    for name, ld in (("forward", ld_f), ("inverse", ld_i)):
        if tuple(ld.shape) != (b,):
            problems.append(f"{name} logdet has shape {tuple(ld.shape)}, expected ({b},)")
    if problems:
        return problems
    rec = (x_rec - x).abs().max().item() if x_rec.shape == x.shape else math.inf
    if not rec < rec_tol:
        problems.append(f"inverse(forward(x)) differs from x by {rec:.3g}")
    want_f = autograd_logdet(lambda t: block(t, cond)[0], x)
    err = (ld_f - want_f).abs().max().item()
    if not err < logdet_tol:
        problems.append(f"forward logdet {ld_f.tolist()} != log|det J| {want_f.tolist()} (err {err:.3g})")
    want_i = autograd_logdet(lambda t: block.inverse(t, cond)[0], z.detach())
    err = (ld_i - want_i).abs().max().item()
    if not err < logdet_tol:
        problems.append(f"inverse logdet {ld_i.tolist()} != log|det J| {want_i.tolist()} (err {err:.3g})")
    err = (ld_i + ld_f).abs().max().item()
    if not err < logdet_tol:
        problems.append(f"inverse logdet is not minus forward logdet (err {err:.3g})")
    return problems



def _rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------

B = 2
COND_C = 3


def _waveflow_coupling(cached: bool, height_dilations=(1, 2)):
    m = WaveFlowCoupling(COND_C, n_layers=len(height_dilations), channels=4, kernel_size=3,
                         dilations_h=list(height_dilations))
    m.cached = cached
    return m


def _cases():
    """name -> (block factory, x, cond)."""
    x3 = _rand(B, 4, 6)                     # [B, C, T]
    c3 = _rand(B, COND_C, 6, seed=2)
    x4 = _rand(B, 1, 5, 3)                  # [B, 1, h, w] (WaveFlow's folded layout)
    c4 = _rand(B, COND_C, 5, 3, seed=2)
    return {
        "1x1": (lambda: Invertible1x1Conv(4), x3, None),
        "1x1-frozen": (lambda: _frozen(Invertible1x1Conv(4)), x3, None),
        "1x1-2d": (lambda: Invertible1x1Conv(3), _rand(B, 3, 2, 2), None),
        "lu1x1": (lambda: InvertibleLU1x1Conv(4), x3, None),
        "lu1x1-frozen": (lambda: _frozen(InvertibleLU1x1Conv(4)), x3, None),
        "affine": (lambda: AffineCoupling(4, COND_C, n_layers=2, wn_channels=4), x3, c3),
        "affine-odd": (lambda: AffineCoupling(5, COND_C, n_layers=2, wn_channels=4), _rand(B, 5, 4),
                       _rand(B, COND_C, 4, seed=2)),
        "affine-no-wn": (lambda: _no_wn(AffineCoupling(4, COND_C, n_layers=2, wn_channels=4)), x3, c3),
        "squeeze": (lambda: Squeeze1d(3), x3, None),
        "fold": (lambda: Fold2d(3), x3, None),
        "permute": (lambda: Permute([2, 0, 3, 1]), x3, None),
        "permute-time": (lambda: Permute.reverse(6, dim=2), x3, None),
        "early-split": (lambda: EarlySplit(1, Sequential([Invertible1x1Conv(3),
                                                          AffineCoupling(3, COND_C, 2, 4)])), x3, c3),
        "conjugate": (lambda: Conjugate(_waveflow_coupling(True), [4, 3, 2, 1, 0], dim=2), x4, c4),
        "conjugate-bipartite": (lambda: Conjugate(_waveflow_coupling(True), [1, 0, 4, 3, 2], dim=2), x4, c4),
        "waveflow-cached": (lambda: _waveflow_coupling(True), x4, c4),
        "waveflow-plain": (lambda: _waveflow_coupling(False), x4, c4),
        "waveflow-cached-dil": (lambda: _waveflow_coupling(True, (2, 1, 3)), _rand(B, 1, 7, 2),
                                _rand(B, COND_C, 7, 2, seed=2)),
        "waveflow-plain-dil": (lambda: _waveflow_coupling(False, (2, 1, 3)), _rand(B, 1, 7, 2),
                               _rand(B, COND_C, 7, 2, seed=2)),
        "sequential": (lambda: Sequential([InvertibleLU1x1Conv(4), AffineCoupling(4, COND_C, 2, 4),
                                           Permute.reverse(4), Invertible1x1Conv(4),
                                           AffineCoupling(4, COND_C, 2, 4)]), x3, c3),
        "sequential-empty": (lambda: Sequential([]), x3, None),
        "inverse": (lambda: Inverse(AffineCoupling(4, COND_C, 2, 4)), x3, c3),
        "inverse-sequential": (lambda: Inverse(Sequential([Invertible1x1Conv(4),
                                                           AffineCoupling(4, COND_C, 2, 4)])), x3, c3),
    }


def _frozen(m):
    m.double()
    perturb(m)
    m.freeze()
    return m


def _no_wn(m):
    remove_weight_norm(m)
    return m


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_contract(name):
    torch.manual_seed(0)
    make, x, cond = CASES[name]
    block = make().double()
    if not name.endswith("frozen"):
        perturb(block)
    with torch.no_grad():
        z, ld = block(x, cond)
    if any(True for _ in block.parameters()):
        assert not torch.equal(z.reshape(-1), x.reshape(-1)) or ld.abs().max() > 0, "block is the identity"
    assert flow_problems(block, x, cond) == []


def test_coupling_is_not_identity_after_perturbation():
    """The contract tests mean something: the perturbed couplings really transform and have logdet != 0."""
    for name in ("affine", "waveflow-cached", "conjugate", "early-split"):
        make, x, cond = CASES[name]
        block = perturb(make().double())
        z, ld = block(x, cond)
        assert (ld.abs() > 1e-3).all(), name
        assert (z - x).abs().max() > 1e-3, name


def test_frozen_inverse_matches_unfrozen():
    for cls in (Invertible1x1Conv, InvertibleLU1x1Conv):
        m = perturb(cls(4).double())
        x = _rand(B, 4, 6)
        z, _ = m(x)
        ref, _ = m.inverse(z)
        m.freeze()
        assert m.weight_inv is not None
        frozen, _ = m.inverse(z)
        assert (frozen - ref).abs().max() < 1e-12
        m.unfreeze()
        assert m.weight_inv is None


def test_waveflow_cached_equals_plain_inverse():
    cached = perturb(_waveflow_coupling(True, (2, 1, 3)).double())
    z, cond = _rand(B, 1, 7, 4), _rand(B, COND_C, 7, 4, seed=2)
    xa, lda = cached.inverse_cached(z, cond)
    xb, ldb = cached.inverse_plain(z, cond)
    assert (xa - xb).abs().max() < 1e-12 and (lda - ldb).abs().max() < 1e-12


def test_reshape_layouts():
    x = torch.arange(12.0).reshape(1, 1, 12)
    assert Fold2d(3)(x)[0][0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]      # adjacent samples in a column
    assert Squeeze1d(4)(x)[0][0, :, 1].tolist() == [4.0, 5.0, 6.0, 7.0]  # 4 consecutive samples per step
    with pytest.raises(ValueError):
        Fold2d(5)(x)
    with pytest.raises(ValueError):
        Squeeze1d(5)(x)
    with pytest.raises(ValueError):
        Permute([0, 0, 1])


# ---------------------------------------------------------------------------------------------------------------
# The checks catch broken blocks
# ---------------------------------------------------------------------------------------------------------------

class _Broken(InvertibleModule):
    """Wraps a correct block and breaks one part of its contract."""

    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x, cond=None):
        z, ld = self.inner(x, cond)
        if self.how == "forward_logdet_plus_one":
            ld = ld + 1
        if self.how == "forward_logdet_scalar":
            ld = ld.sum()
        return z, ld

    def inverse(self, z, cond=None):
        x, ld = self.inner.inverse(z, cond)
        if self.how == "inverse_logdet_sign":
            ld = -ld
        if self.how == "inverse_off":
            x = x * (1 + 1e-6)
        return x, ld


@pytest.mark.parametrize("how, expect", [
    ("forward_logdet_plus_one", "forward logdet"),
    ("forward_logdet_scalar", "shape"),
    ("inverse_logdet_sign", "inverse logdet"),
    ("inverse_off", "inverse(forward(x)) differs"),
])
def test_checks_catch_broken_block(how, expect):
    make, x, cond = CASES["affine"]
    good = perturb(make().double())
    assert flow_problems(good, x, cond) == []
    problems = flow_problems(_Broken(good, how), x, cond)
    assert problems and any(expect in p for p in problems), problems


def test_checks_catch_monkeypatched_logdet(monkeypatch):
    """A block whose forward logdet is off by one (patched on the instance) is reported."""
    block = perturb(Invertible1x1Conv(4).double())
    x = _rand(B, 4, 6)
    assert flow_problems(block, x) == []
    orig = block.forward
    monkeypatch.setattr(block, "forward", lambda x, cond=None: (orig(x, cond)[0], orig(x, cond)[1] + 1))
    problems = flow_problems(block, x)
    assert any("forward logdet" in p for p in problems) and any("minus forward" in p for p in problems)


def test_checks_catch_wrong_logdet_scale():
    """A 1x1 conv that forgets to multiply log|det W| by the number of positions is caught."""

    class NoPositions(Invertible1x1Conv):
        def forward(self, x, cond=None):
            z, _ = super().forward(x, cond)
            return z, self.log_abs_det().to(x.dtype).expand(x.shape[0])

    block = perturb(NoPositions(4).double())
    assert abs(float(block.log_abs_det().detach())) > 1e-3
    assert any("forward logdet" in p for p in flow_problems(block, _rand(B, 4, 6)))


def test_autograd_logdet_detects_batch_mixing():
    class Mix(InvertibleModule):
        def forward(self, x, cond=None):
            return x + x.flip(0) * 0.5, x.new_zeros(x.shape[0])

        def inverse(self, z, cond=None):
            return z, z.new_zeros(z.shape[0])

    with pytest.raises(AssertionError, match="depends on item"):
        autograd_logdet(lambda t: Mix()(t)[0], _rand(B, 3))


# ---------------------------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------------------------

TINY_MEL = {"n_fft": 16, "hop_length": 8, "win_length": 16, "n_mels": 4}
FRAMES = 4   # T = 32 samples


def tiny_model(family: str, **over):
    if family == "waveflow":
        cfg = {"mel": dict(TINY_MEL), "n_flows": 3, "n_layers": 2, "height": 4, "channels": 4,
               "upsample_factors": [2, 4]}
    else:
        cfg = {"mel": dict(TINY_MEL), "n_flows": 3, "n_early_every": 2, "n_early_size": 2, "wn_layers": 2,
               "wn_channels": 4}
    cfg.update(over)
    return perturb(build_model(family, cfg).double(), seed=3)


class _AudioOnly(InvertibleModule):
    """A whole model seen as a flow on audio [B, T] with the mel fixed (passed as cond)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, cond=None):
        return self.model(x, cond)

    def inverse(self, z, cond=None):
        return self.model.inverse(z, cond)


@pytest.mark.parametrize("family, over", [
    ("waveflow", {}),
    ("waveflow", {"dilations_h": [1, 2]}),
    ("waveglow", {}),
    ("waveglow", {"lu_conv": True}),
])
def test_model_contract(family, over):
    model = tiny_model(family, **over)
    assert model.config.mel.hop_length == 8 and MelConfig.from_dict(TINY_MEL).n_mels == 4
    mel = _rand(1, 4, FRAMES, seed=5)
    audio = 0.5 * _rand(1, FRAMES * 8, seed=6)
    with torch.no_grad():
        z, ld = model(audio, mel)
    assert z.shape == audio.shape and ld.shape == (1,)
    assert (z - audio).abs().max() > 1e-3 and ld.abs().item() > 1e-3   # not the identity
    assert flow_problems(_AudioOnly(model), audio, mel) == []


@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
def test_model_batch_and_cached(family):
    """Batched round trip (B=3, items independent) and, for WaveFlow, cached == plain inverse."""
    model = tiny_model(family)
    mel = _rand(3, 4, 2 * FRAMES, seed=7)
    audio = 0.5 * _rand(3, 2 * FRAMES * 8, seed=8)
    with torch.no_grad():
        z, ld = model(audio, mel)
        rec, ld_i = model.inverse(z, mel)
        assert (rec - audio).abs().max() < REC_TOL and (ld + ld_i).abs().max() < LOGDET_TOL
        one, ld_one = model(audio[1:2], mel[1:2])
        assert (one - z[1:2]).abs().max() < 1e-12 and abs(ld_one.item() - ld[1].item()) < 1e-9
        if family == "waveflow":
            model.set_cached(False)
            plain, ld_p = model.inverse(z, mel)
            model.set_cached(True)
            assert (plain - rec).abs().max() < 1e-12 and (ld_p - ld_i).abs().max() < 1e-9
    nll = model.nll_per_dim(audio, mel)
    assert torch.isfinite(nll)

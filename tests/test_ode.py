"""ODE solvers (edgeflow.core.ode): convergence orders on closed-form fields, sway schedule, guidance."""

import math

import numpy as np
import pytest

from edgeflow.core.ode import SWAY_MAX, SWAY_MIN, guided, solve, steps_for, sway_schedule


def linear_field(a):
    return lambda x, t: a * x


def error(method, nfe, a=-1.3, sway=0.0):
    x0 = np.array([1.0, -2.0, 0.5])
    x1 = solve(linear_field(a), x0, nfe, method, sway=sway)
    return float(np.max(np.abs(x1 - x0 * math.exp(a))))


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2)])
def test_convergence_order_on_linear_ode(method, order):
    errs = [error(method, nfe) for nfe in (8, 16, 32, 64)]
    ratios = [math.log2(e0 / e1) for e0, e1 in zip(errs, errs[1:])]
    assert all(abs(r - order) < 0.25 for r in ratios), ratios
    assert errs[-1] < (2e-2 if order == 1 else 5e-4)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_time_dependent_field_with_sway(method):
    # dx/dt = cos(3t) x  ->  x(1) = x0 exp(sin(3) / 3); sway moves the grid, the limit stays the same
    field = lambda x, t: math.cos(3 * t) * x                                  # noqa: E731
    exact = 2.0 * math.exp(math.sin(3.0) / 3.0)
    for s in (-1.0, 0.0, 0.5):
        coarse = abs(solve(field, np.array(2.0), 8, method, sway=s) - exact)
        fine = abs(solve(field, np.array(2.0), 128, method, sway=s) - exact)
        assert fine < coarse / 8 and fine < (2e-2 if method == "euler" else 5e-4)


def test_flow_matching_straight_path_is_exact_with_one_step():
    # the OT-CFM field of a single target y is constant along the straight path: one Euler step lands on y
    y = np.array([0.3, -1.0])
    x0 = np.array([1.5, 2.0])
    field = lambda x, t: (y - x) / (1.0 - t)                                  # noqa: E731
    assert np.allclose(solve(field, x0, 1, "euler"), y)


def test_sway_schedule_properties():
    for n in (1, 2, 3, 7, 32):
        assert np.array_equal(sway_schedule(n, 0.0), np.linspace(0, 1, n + 1))
        for s in (SWAY_MIN, -0.5, 0.3, 1.0, SWAY_MAX):
            t = sway_schedule(n, s)
            assert t.shape == (n + 1,) and t[0] == 0.0 and t[-1] == 1.0
            assert np.all(np.diff(t) >= 0)
    t = sway_schedule(16, -1.0)
    assert np.all(np.diff(t)[:4] < 1 / 16)            # s < 0: finer steps near t = 0 (F5-TTS)
    assert np.allclose(t, np.linspace(0, 1, 17) - (np.cos(np.pi * np.linspace(0, 1, 17) / 2) - 1
                                                     + np.linspace(0, 1, 17)))
    assert np.all(np.diff(sway_schedule(16, 1.0))[:4] > 1 / 16)


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="sway"):
        sway_schedule(4, -1.5)
    with pytest.raises(ValueError, match="sway"):
        sway_schedule(4, SWAY_MAX + 0.1)
    with pytest.raises(ValueError, match="multiple of 2"):
        steps_for(3, "midpoint")
    with pytest.raises(ValueError, match="unknown ODE method"):
        steps_for(4, "rk4")
    with pytest.raises(ValueError, match="positive"):
        solve(linear_field(1.0), np.ones(2), 0)
    assert steps_for(8, "midpoint") == 4 and steps_for(8, "euler") == 8


def test_guidance_and_evaluation_count():
    calls = {"c": 0, "u": 0}

    def cond(x, t):
        calls["c"] += 1
        return np.ones_like(x)

    def uncond(x, t):
        calls["u"] += 1
        return np.zeros_like(x)

    assert guided(cond, uncond, 0.0) is cond
    out = solve(guided(cond, uncond, 2.0), np.zeros(3), 4, "midpoint")
    assert np.allclose(out, 3.0)                       # v = 1 + 2 * (1 - 0)
    assert calls == {"c": 4, "u": 4}                   # NFE 4 of each field


def test_torch_tensors_work_too():
    torch = pytest.importorskip("torch")
    x = solve(lambda x, t: -x, torch.ones(2, 3, dtype=torch.float64), 16, "midpoint", sway=-1.0)
    assert isinstance(x, torch.Tensor) and torch.allclose(x, torch.full((2, 3), math.exp(-1), dtype=torch.float64),
                                                          atol=5e-3)

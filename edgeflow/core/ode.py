"""Fixed-step ODE solvers for flow-matching sampling, shared by the PyTorch models and the torch-free runtime.

A flow-matching model defines a vector field ``v(x, t)`` on t in [0, 1]; sampling integrates
``dx/dt = v(x, t)`` from noise x(0) to data x(1). The solvers here use only ``+``, ``-`` and ``*`` on the
state, so ``x`` may be a numpy array or a torch tensor (this module imports neither torch nor anything
above :mod:`edgeflow.core`).

* **NFE** (number of function evaluations) is the argument: Euler takes ``nfe`` steps (one evaluation each),
  midpoint takes ``nfe / 2`` steps (two each; ``nfe`` must be even).
* **Sway sampling** (F5-TTS, Chen et al. 2024): the uniform grid u_k = k / n is warped to
  ``t = u + s * (cos(pi u / 2) - 1 + u)``. s < 0 puts more steps near t = 0 (F5-TTS uses s = -1), s = 0 is
  the uniform grid, s > 0 puts more near t = 1. The endpoints 0 and 1 are fixed for every s, and the grid is
  monotone for ``SWAY_MIN <= s <= SWAY_MAX`` (dt/du = 1 + s (1 - pi/2 sin(pi u / 2)) >= 0).
* **Classifier-free guidance** (F5-TTS's form): ``v = v_cond + w * (v_cond - v_uncond)``, see :func:`guided`;
  w = 0 is the conditional field alone (one evaluation per step, not two).
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

#: The sway coefficients for which the warped grid stays monotone (non-decreasing).
SWAY_MIN = -1.0
SWAY_MAX = 1.0 / (math.pi / 2.0 - 1.0)
METHODS = ("euler", "midpoint")

Field = Callable[[Any, float], Any]
"""A vector field: (state x, time t as a Python float) -> dx/dt with x's shape and type."""


def sway_schedule(n_steps: int, sway: float = 0.0) -> np.ndarray:
    """The time grid of ``n_steps`` steps: float64 [n_steps + 1], from 0.0 to 1.0.

    Args:
        n_steps: number of solver steps (>= 1).
        sway: the sway coefficient s (0: uniform; F5-TTS: -1), in [SWAY_MIN, SWAY_MAX].

    Raises:
        ValueError: n_steps < 1, or s outside the monotone range.
    """
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"the ODE solver needs at least one step, got {n_steps!r}")
    if not (SWAY_MIN - 1e-12 <= sway <= SWAY_MAX + 1e-12):
        raise ValueError(f"sway coefficient {sway!r} outside [{SWAY_MIN:g}, {SWAY_MAX:.4f}] "
                         f"(the time grid would not be monotone)")
    u = np.linspace(0.0, 1.0, int(n_steps) + 1)
    t = u + sway * (np.cos(np.pi * u / 2.0) - 1.0 + u)
    t[0], t[-1] = 0.0, 1.0                       # exact endpoints (cos(pi/2) is not exactly 0 in floats)
    return np.maximum.accumulate(np.clip(t, 0.0, 1.0))


def steps_for(nfe: int, method: str) -> int:
    """Solver steps that use ``nfe`` function evaluations with ``method`` (ValueError if impossible)."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r} (known: {', '.join(METHODS)})")
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
    per = 1 if method == "euler" else 2
    if nfe % per:
        raise ValueError(f"the {method} solver uses {per} evaluations per step: NFE must be a multiple of {per}, "
                         f"got {nfe}")
    return int(nfe) // per


def step_table(nfe: int, method: str, sway: float = 0.0) -> np.ndarray:
    """The solver's time steps as float32 [S, 3] rows (t, dt, t + dt / 2): what an unrolled ODE graph reads."""
    grid = sway_schedule(steps_for(nfe, method), sway)
    t, dt = grid[:-1], np.diff(grid)
    return np.stack([t, dt, t + dt / 2.0], 1).astype(np.float32)


def guided(cond: Field, uncond: Optional[Field], scale: float) -> Field:
    """Classifier-free guidance: ``v = v_cond + scale * (v_cond - v_uncond)`` (F5-TTS).

    Args:
        cond: the conditional field. uncond: the unconditional one (None: no guidance).
        scale: guidance strength w (0: ``cond`` itself, returned unchanged).
    """
    if scale == 0 or uncond is None:
        return cond

    def field(x, t):
        vc = cond(x, t)
        return vc + (vc - uncond(x, t)) * scale

    return field


def solve(field: Field, x0: Any, nfe: int, method: str = "euler", sway: float = 0.0,
          times: Optional[Sequence[float]] = None, trajectory: Optional[List[Any]] = None) -> Any:
    """Integrate dx/dt = field(x, t) from t = 0 to 1 with a fixed-step solver.

    Args:
        field: the vector field (see :data:`Field`); called with Python float times.
        x0: the state at t = 0 (numpy array or torch tensor; any shape the field accepts).
        nfe: function evaluations (Euler: steps; midpoint: 2 x steps).
        method: "euler" or "midpoint".
        sway: sway coefficient of the time grid (see the module docstring).
        times: an explicit grid (t_0 = 0 < ... <= 1) instead of ``nfe`` / ``sway``'s; its step count must
            match ``nfe``.
        trajectory: a list that receives the state after every step (for tests and plots).

    Returns:
        x(1), same type and shape as ``x0``.
    """
    n = steps_for(nfe, method)
    grid = sway_schedule(n, sway) if times is None else np.asarray(times, dtype=np.float64)
    if grid.ndim != 1 or len(grid) != n + 1 or np.any(np.diff(grid) < 0):
        raise ValueError(f"the time grid must be {n + 1} non-decreasing times for {nfe} evaluations "
                         f"with {method}")
    x = x0
    for k in range(n):
        t, dt = float(grid[k]), float(grid[k + 1] - grid[k])
        if method == "euler":
            x = x + field(x, t) * dt
        else:
            half = x + field(x, t) * (dt / 2.0)
            x = x + field(half, t + dt / 2.0) * dt
        if trajectory is not None:
            trajectory.append(x)
    return x

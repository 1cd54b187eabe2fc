"""INT8 layers of the native WaveNet-coupling engine (edgeflow/runtime/native/ef_wn_q8.c): the kernel against a
numpy simulation of its quantization (every instruction set, 1 and 2 threads, conditioning or none, affine and
mean-only, partial blocks), INT8 taking precedence over Winograd, and the weight file's INT8 checks. Random flows
only; WaveGlow bundles through the ``kernels`` pass are in tests/test_native_waveglow.py."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import BundleError
from edgeflow.passes.kernels import compare
from edgeflow.runtime import native
from edgeflow.runtime.native import wn
from tests.test_native_vits import random_flow, reference_inverse

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))


@pytest.fixture
def isa():
    """Restores the best instruction set after a test that forces one."""
    yield
    native.set_isa(native.supported_isas()[-1])


def with_int8(arrays, layers=None, res_skip=False):
    """``arrays`` plus INT8 pairs for the layers ``(flow, layer)`` (None: all): :func:`wn.quantize_weights`."""
    out = wn.quantize_weights(arrays, layers, res_skip=res_skip)
    for name in (n for n in out if n.endswith(".qweight")):          # the pairs are the weights, within a step
        base, q = name[:-len(".qweight")], out[name]
        s = out[base + ".qscale"].reshape((-1,) + (1,) * (q.ndim - 1))
        assert np.all(np.abs(q * s - out[base + ".weight"]) <= s * 0.501)
    return out


def _u8(x: np.ndarray):
    """(dequantized x, as the engine sees it) for u8 with a dynamic scale / zero point over all of x (float32 math
    of ef_qparams / ef_quant_rows: range widened to hold 0, round half up, clamp)."""
    lo, hi = np.float32(min(float(x.min()), 0.0)), np.float32(max(float(x.max()), 0.0))
    s = np.float32((hi - lo) / np.float32(255.0))
    if not s > 0:
        s = np.float32(1.0)
    zp = int(np.clip(int(-lo / s + np.float32(0.5)), 0, 255))
    t = np.clip(x.astype(np.float32) * (np.float32(1.0) / s) + np.float32(zp), 0, 255)
    return (np.floor(t + np.float32(0.5)) - zp).astype(np.float64) * float(s)


def _u8_blocks(g: np.ndarray, nb: int = 64):
    """_u8 on each block of ``nb`` columns (the INT8 res / skip conv's gate output: one scale per engine block)."""
    return np.concatenate([_u8(g[:, j:j + nb]) for j in range(0, g.shape[1], nb)], axis=1)


def simulated(a, x, cond=None):
    """The INT8 flow's inverse as the engine computes it (numpy): each INT8 layer's input and the conditioning
    quantized to u8 per tensor, an INT8 res / skip conv's gate output per 64-frame block, the weights dequantized;
    everything else :func:`reference_inverse`'s float64."""
    sim = dict(a)
    layers: dict = {"in": set(), "rs": set()}
    for name in a:
        if name.endswith(".qweight"):
            base = name[:-len(".qweight")]
            w = a[name].astype(np.float64) * a[base + ".qscale"].astype(np.float64).reshape(
                (-1,) + (1,) * (a[name].ndim - 1))
            sim[base + ".weight"] = w
            layer, kind = base.rsplit(".", 1)
            layers["rs" if kind == "rs" else "in"].add(layer)
    return reference_inverse(sim, x, cond, quantize=lambda p: _u8 if p in layers["in"] else None,
                             quantize_gate=lambda p: _u8_blocks if p in layers["rs"] else None)


@pytest.mark.parametrize("mean_only,n_cond,k,dil,res_skip", [(0, 3, 3, (1, 2, 4), False), (1, 0, 3, (1, 2, 4), True),
                                                             (0, 5, 5, (1, 1, 2), True), (1, 0, 5, (1, 1), False)])
def test_int8_kernel_matches_its_simulation(mean_only, n_cond, k, dil, res_skip, isa):
    """The engine rounds float32 values, the simulation float64 ones: a value on a rounding boundary may land one
    step apart (about 50 dB on a short chunk), so most runs must match at 80 dB and every run at 40 dB; a wrong
    kernel (scales, zero points, taps) is 20-35 dB off everywhere, as far as the float flow is. ``res_skip``: the
    res / skip convs in INT8 too (chunks of 150 frames span three engine blocks): the gate output is one more u8
    rounding per value, computed by the engine's float32 tanh and sigmoid, so the median is held at 60 dB there."""
    arrays = with_int8(random_flow(c=8, h=13, k=k, dil=dil, n_cond=n_cond, mean_only=mean_only, flip=1),
                       res_skip=res_skip)
    rng = np.random.default_rng(3)
    sims, floats = [], []
    for name in native.supported_isas():
        native.set_isa(name)
        for threads in (1, 2):
            flow = wn.NativeFlow(arrays=arrays, threads=threads)
            assert flow.int8_layers == 2 * len(dil) and flow.winograd_layers == 0      # INT8 before Winograd
            assert flow.int8_res_skip == (2 * len(dil) if res_skip else 0)
            for t in (1, 37, 150):
                x = rng.standard_normal((1, 8, t)).astype(np.float32)
                cond = rng.standard_normal((1, n_cond, t)).astype(np.float32) if n_cond else None
                out = flow.run(x, cond)[0]
                c0 = None if cond is None else cond[0]
                sims.append(compare(out, simulated(arrays, x[0], c0))["snr_db"])
                floats.append(compare(out, reference_inverse(arrays, x[0], c0))["snr_db"])
    assert min(sims) >= 40 and np.median(sims) >= (60 if res_skip else 80), sims   # res / skip: more u8 roundings
    assert max(floats) < 60 and np.median(floats) < 50, floats          # INT8 really ran


def test_int8_on_some_layers_only():
    arrays = random_flow(c=8, h=16, k=3, dil=(1, 2, 4), n_cond=4, mean_only=0, n_flows=2)
    part = with_int8(arrays, layers={(0, 1), (1, 2)})
    flow = wn.NativeFlow(arrays=part, threads=2)
    assert flow.int8_layers == 2
    rng = np.random.default_rng(0)
    x, cond = rng.standard_normal((1, 8, 90)).astype(np.float32), rng.standard_normal((1, 4, 90)).astype(np.float32)
    out = flow.run(x, cond)[0]
    assert compare(out, simulated(part, x[0], cond[0]))["snr_db"] >= 60


def test_int8_file_checks(tmp_path):
    arrays = with_int8(random_flow(n_cond=3))
    wn.save(tmp_path / "q.npz", arrays)
    back = wn.load(tmp_path / "q.npz")
    assert back["flow.0.layer.1.in.qweight"].dtype == np.int8 and set(back) == set(arrays)
    old = dict(random_flow(n_cond=3), format=np.array([1], np.int32))
    assert wn.NativeFlow(arrays=old).int8_layers == 0                        # format 1 (float) still loads
    with pytest.raises(BundleError, match="cannot hold INT8"):
        wn.check(dict(arrays, format=np.array([1], np.int32)))
    lone = {n: a for n, a in arrays.items() if not n.startswith("flow.0.layer.0.cond.q")}
    with pytest.raises(BundleError, match="together"):
        wn.check(lone)
    no_cond = with_int8(random_flow(n_cond=0))
    bad = dict(no_cond, **{"flow.0.layer.0.cond.qweight": np.zeros((10, 0), np.int8),
                           "flow.0.layer.0.cond.qscale": np.zeros(10, np.float32)})
    with pytest.raises(BundleError, match="together"):
        wn.check(bad)
    with pytest.raises(BundleError, match="in.qweight"):
        wn.check(dict(arrays, **{"flow.1.layer.2.in.qweight": np.zeros((10, 5, 2), np.int8)}))
    with pytest.raises(BundleError, match="in.qweight"):
        wn.check(dict(arrays, **{"flow.1.layer.2.in.qscale": -np.ones(10, np.float32)}))


def test_int8_res_skip_on_its_own():
    """The res / skip conv in INT8 without the dilated conv (a float or Winograd layer beside it), and its checks."""
    arrays = random_flow(c=8, h=16, k=5, dil=(1, 1), n_cond=0, mean_only=1)
    q = wn.quantize_weights(arrays, res_skip=True)
    only = {n: v for n, v in q.items() if ".in.q" not in n}
    flow = wn.NativeFlow(arrays=only, threads=2)
    assert flow.int8_layers == 0 and flow.int8_res_skip == 4 and flow.winograd_layers == 4
    x = np.random.default_rng(2).standard_normal((1, 8, 200)).astype(np.float32)
    got = compare(flow.run(x)[0], simulated(only, x[0]))["snr_db"]
    assert got >= 60 and compare(flow.run(x)[0], reference_inverse(arrays, x[0]))["snr_db"] < got
    with pytest.raises(BundleError, match="rs.qweight"):
        wn.check(dict(q, **{"flow.0.layer.1.rs.qweight": np.zeros((16, 16), np.int8)}))

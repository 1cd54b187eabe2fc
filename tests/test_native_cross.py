"""The native kernels' portable path built for aarch64 (Debian's cross compiler) and run under qemu-user against
PyTorch (float32) and against the host build (INT8 layers): correctness only, never timing (an emulator). Skipped
where the cross tools are not installed (``apt-get install -y gcc-aarch64-linux-gnu qemu-user``)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.passes.kernels import compare, pack_waveflow
from edgeflow.runtime.native import format as fmt
from edgeflow.runtime.native import wn
from edgeflow.runtime.native.format import int8_parts
from export_helpers import HOP, test_mel, tiny_model

SRC = Path(__file__).resolve().parents[1] / "edgeflow" / "runtime" / "native"
CC, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def _input(arrays, mel: np.ndarray, z: np.ndarray, sigma: float) -> bytes:
    arrays = fmt.check(arrays)
    cfg, w = fmt.blob(arrays)
    parts = fmt.int8_parts(arrays)
    q8 = [struct.pack("<i", len(parts))] + [struct.pack("<iii", f, lay, part) + q.tobytes() + s.astype("<f4").tobytes()
                                            for f, lay, part, q, s in parts]
    return b"".join([struct.pack("<i", cfg.size), cfg.astype("<i4").tobytes(), struct.pack("<q", w.size),
                     w.astype("<f4").tobytes(), *q8, struct.pack("<iif", mel.shape[0], mel.shape[2], sigma),
                     mel.astype("<f4").tobytes(), z.astype("<f4").tobytes()])


def _build(tmp_path: Path) -> Path:
    exe = tmp_path / "ef_driver"
    sources = [str(SRC / name) for name in ("ef_driver.c", "ef_kernels.c", "ef_run.c", "ef_int8.c", "ef_amx.c")]
    built = subprocess.run([CC, "-O2", "-static", "-Wno-unknown-pragmas", "-o", str(exe), *sources, "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    return exe


def _run_qemu(exe: Path, tmp_path: Path, arrays, mel, z) -> np.ndarray:
    (tmp_path / "in.bin").write_bytes(_input(arrays, mel, z, 0.7))
    run = subprocess.run([QEMU, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), "0"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    _run_qemu.int8_kernel = run.stdout.split()[-1] if run.stdout.strip() else None
    return np.fromfile(tmp_path / "out.bin", dtype="<f4").reshape(mel.shape[0], -1)


@pytest.mark.slow
@pytest.mark.skipif(not (CC and QEMU), reason="no aarch64 cross compiler / qemu-user (apt-get install -y "
                                              "gcc-aarch64-linux-gnu qemu-user)")
@pytest.mark.parametrize("overrides", [{}, {"channels": 6, "n_layers": 3, "height": 4, "kernel_size": 5,
                                            "dilations_h": [1, 2, 1]}])
def test_aarch64_portable_kernels_under_qemu(overrides, tmp_path):
    exe = _build(tmp_path)
    assert b"aarch64" in subprocess.run(["file", str(exe)], capture_output=True).stdout or not shutil.which("file")
    model = tiny_model("waveflow", **overrides)
    mel = test_mel(24, batch=2, seed=1)
    z = np.random.default_rng(1).standard_normal((2, 24 * HOP)).astype(np.float32)
    out = _run_qemu(exe, tmp_path, pack_waveflow(model), mel, z)
    with torch.no_grad():
        ref = model.inverse(torch.from_numpy(z) * 0.7, torch.from_numpy(mel))[0].numpy()
    got = compare(out, ref)
    assert got["max_rel_err"] < 1e-4 and got["snr_db"] > 80, got


@pytest.mark.slow
@pytest.mark.skipif(not (CC and QEMU), reason="no aarch64 cross compiler / qemu-user")
def test_aarch64_int8_matches_host_under_qemu(tmp_path):
    """The INT8 layers on aarch64 (the NEON dot-product tile where the CPU has it, as qemu's does) give the host's
    INT8 result (same integer sums; the float parts agree to rounding)."""
    from edgeflow.runtime import native
    from test_native_int8 import requantized

    exe = _build(tmp_path)
    arrays = requantized(pack_waveflow(tiny_model("waveflow", channels=6, kernel_size=5, n_layers=3,
                                                  dilations_h=[1, 2, 1], height=4)))
    mel = test_mel(24, batch=2, seed=1)
    z = np.random.default_rng(1).standard_normal((2, 24 * HOP)).astype(np.float32)
    out = _run_qemu(exe, tmp_path, arrays, mel, z)
    fmt.save(tmp_path / "k.npz", arrays)
    host = native.NativeSession(tmp_path / "k.npz", ["mel", "z", "sigma"], HOP, threads=1)
    assert host.precision == "int8"
    ref = host.run(None, {"mel": mel, "z": z, "sigma": np.array([0.7], np.float32)})[0]
    got = compare(out, ref)
    assert got["snr_db"] > 80, got
    # qemu-user's default CPU has the Armv8.2 dot product: the NEON tile ran, not the portable one
    assert _run_qemu.int8_kernel == "neon-dotprod", _run_qemu.int8_kernel


def _wn_input(arrays, x: np.ndarray, cond) -> bytes:
    cfg, w = wn.blob(wn.check(arrays))
    jobs = wn.winograd_weights(arrays)
    wg = [struct.pack("<ii", f, lay) + u.astype("<f4").tobytes() + at.astype("<f4").tobytes()
          + bt.astype("<f4").tobytes() for f, lay, u, at, bt in jobs]
    q8 = [struct.pack("<iiiii", f, lay, part, q.size, s.size) + q.astype(np.int8).tobytes() + s.astype("<f4").tobytes()
          for f, lay, part, q, s in int8_parts(arrays, wn.Q8_KINDS)]
    m = 0 if cond is None else cond.shape[1]
    return b"".join([struct.pack("<i", cfg.size), cfg.astype("<i4").tobytes(), struct.pack("<q", w.size),
                     w.astype("<f4").tobytes(), struct.pack("<i", len(jobs)), *wg, struct.pack("<i", len(q8)), *q8,
                     struct.pack("<iii", x.shape[0], x.shape[2], m), x.astype("<f4").tobytes(),
                     b"" if cond is None else cond.astype("<f4").tobytes()])


@pytest.mark.slow
@pytest.mark.skipif(not (CC and QEMU), reason="no aarch64 cross compiler / qemu-user")
@pytest.mark.parametrize("mean_only,flip,n_cond,k,dil,int8", [(1, 1, 0, 3, (1, 2, 4), 0), (0, 0, 3, 3, (1, 2, 4), 0),
                                                               (1, 1, 0, 5, (1, 1, 2), 0), (0, 0, 3, 3, (1, 2, 4), 1),
                                                               (1, 1, 0, 5, (1, 1, 2), 2)])
def test_aarch64_wavenet_flow_kernels_under_qemu(mean_only, flip, n_cond, k, dil, int8, tmp_path):
    """The WaveNet-coupling kernels (VITS prior flow: mean-only, flips, kernel 5 with Winograd F(4,5) layers;
    WaveGlow-style affine couplings with conditioning, float and INT8; ``int8`` 2: the res / skip convs in INT8
    too), built for aarch64 with warnings as errors and run under qemu-user, against the float64 numpy definition
    of the flow file (INT8: its simulation, tests/test_native_wn_int8.py; correctness only)."""
    from test_native_vits import random_flow, reference_inverse
    from test_native_wn_int8 import simulated, with_int8

    exe = tmp_path / "ef_wn_driver"
    sources = [str(SRC / n) for n in ("ef_wn_driver.c", "ef_kernels.c", "ef_run.c", "ef_int8.c", "ef_wn.c",
                                      "ef_wn_run.c", "ef_wn_q8.c", "ef_amx.c")]
    built = subprocess.run([CC, "-O2", "-static", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-function",
                            "-o", str(exe), *sources, "-lm"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    arrays = random_flow(n_cond=n_cond, mean_only=mean_only, flip=flip, k=k, dil=dil)
    arrays = with_int8(arrays, res_skip=int8 == 2) if int8 else arrays
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 70)).astype(np.float32)
    cond = rng.standard_normal((2, n_cond, 70)).astype(np.float32) if n_cond else None
    (tmp_path / "in.bin").write_bytes(_wn_input(arrays, x, cond))
    run = subprocess.run([QEMU, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = np.fromfile(tmp_path / "out.bin", dtype="<f4").reshape(x.shape)
    assert not np.allclose(out, x, atol=1e-3)
    for b in range(2):
        c = None if cond is None else cond[b]
        got = compare(out[b], reference_inverse(arrays, x[b], c))
        if int8:        # a float32 value on a rounding boundary may quantize one step apart from the simulation
            assert compare(out[b], simulated(arrays, x[b], c))["snr_db"] >= max(45.0, got["snr_db"] + 10), got
        else:
            assert got["max_rel_err"] < 1e-5, got


def _hq_input(a, x: np.ndarray) -> bytes:
    spec = a["spec"].astype("<i4")
    pw = a["post.weight"].astype("<f4")
    parts = [struct.pack("<iiii", pw.shape[0], int(spec[:, 0].max()) + 1, spec.shape[0], pw.shape[1]), spec.tobytes(),
             struct.pack("<fff", float(a["slopes"][0]), float(a["slopes"][1]), float(a["post.bias"][0])), pw.tobytes()]
    for i in range(spec.shape[0]):
        parts += [a[f"conv.{i}.q"].astype(np.int8).tobytes(), a[f"conv.{i}.scale"].astype("<f4").tobytes(),
                  a[f"conv.{i}.bias"].astype("<f4").tobytes()]
    parts.append(struct.pack("<i", int("up.q" in a)))
    if "up.q" in a:
        parts += [a["up.spec"].astype("<i4").tobytes(), a["up.slope"].astype("<f4").tobytes(),
                  a["up.q"].astype(np.int8).tobytes(), a["up.scale"].astype("<f4").tobytes(),
                  a["up.bias"].astype("<f4").tobytes()]
    return b"".join(parts + [struct.pack("<i", x.shape[1]), x.astype("<f4").tobytes()])


@pytest.mark.slow
@pytest.mark.skipif(not (CC and QEMU), reason="no aarch64 cross compiler / qemu-user")
@pytest.mark.parametrize("kind,planes,up,post", [("2", 2, False, True), ("1", 1, False, True), ("2", 2, True, True),
                                                ("1", 1, False, False), ("2", 1, True, False)])
def test_aarch64_wave_stage_under_qemu(kind, planes, up, post, tmp_path):
    """The INT8 waveform-stage kernel built for aarch64 with warnings as errors and run under qemu-user (the
    NEON dot-product tile where qemu's CPU has it), against the numpy simulation of tests/test_native_wave_stage.py
    (correctness only); with the upsampler ahead of it, against the host library; without conv_post (an earlier
    stage of the ``tts_head`` pass) too."""
    from test_native_wave_stage import random_stage, simulate

    from edgeflow.runtime.native.wave_stage import tile_samples

    exe = tmp_path / "ef_hq_driver"
    sources = [str(SRC / n) for n in ("ef_hq_driver.c", "ef_hq8.c", "ef_hq_run.c", "ef_hq_up.c", "ef_amx.c",
                                      "ef_kernels.c", "ef_run.c", "ef_int8.c", "ef_wn.c", "ef_wn_run.c", "ef_wn_q8.c")]
    built = subprocess.run([CC, "-O2", "-static", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-function",
                            "-o", str(exe), *sources, "-lm"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    a, convs = random_stage(kind=kind, planes=planes, seed=5)
    if not post:
        from edgeflow.runtime.native.wave_stage import pack_stage

        a = pack_stage(convs, None, 0.0, 0.1, 0.0)
    x = np.random.default_rng(5).standard_normal((6, 1900)).astype(np.float32)
    if up:
        from edgeflow.runtime.native.wave_stage import WaveStage, _pack_up

        w = np.random.default_rng(6).standard_normal((5, 6, 8)).astype(np.float32) * 0.3
        a = dict(a, **_pack_up({"weight": w, "bias": None, "stride": 4, "padding": 2, "slope": 0.1, "planes": 2}, 6))
        x = np.random.default_rng(5).standard_normal((5, 600)).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(_hq_input(a, x))
    run = subprocess.run([QEMU, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    want = WaveStage(a, threads=1).run(x) if up else simulate(a, x, tile_samples())
    out = np.fromfile(tmp_path / "out.bin", dtype="<f4").reshape(want.shape)
    assert out.shape == want.shape and compare(out, want)["snr_db"] >= 60


def random_text_encoder(H=16, F=24, heads=2, layers=2, k=3, window=2, vocab=20, seed=0):
    """Random arrays in :func:`edgeflow.runtime.native.text_encoder.pack_text_encoder`'s layout."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    a = {"emb": r(vocab, H) * 3, "config": np.array([H, F, heads, layers, k, window, vocab], np.int64)}
    for l in range(layers):
        a.update({f"attn_layers.{l}.conv_qkv.weight": r(3 * H, H, 1), f"attn_layers.{l}.conv_qkv.bias": r(3 * H),
                  f"attn_layers.{l}.conv_o.weight": r(H, H, 1), f"attn_layers.{l}.conv_o.bias": r(H),
                  f"attn_layers.{l}.emb_rel_k": r(1, 2 * window + 1, H // heads),
                  f"attn_layers.{l}.emb_rel_v": r(1, 2 * window + 1, H // heads),
                  f"ffn_layers.{l}.conv_1.weight": r(F, H, k), f"ffn_layers.{l}.conv_1.bias": r(F),
                  f"ffn_layers.{l}.conv_2.weight": r(H, F, k), f"ffn_layers.{l}.conv_2.bias": r(H),
                  f"ln.{l}": np.stack([1 + r(H), r(H), 1 + r(H), r(H)])})
    return a


def _enc_input(a, ids: np.ndarray) -> bytes:
    from edgeflow.runtime.native.text_encoder import _CONVS
    from edgeflow.runtime.native.wave_stage import quantize_conv

    cfg = [int(v) for v in a["config"]]
    parts = [struct.pack("<7i", *cfg), struct.pack("<f", 1e-5), a["emb"].astype("<f4").tobytes()]
    for l in range(cfg[3]):
        for name in _CONVS:
            q, scale = quantize_conv(a[f"{name.format(l=l)}.weight"])
            parts += [q.tobytes(), scale.astype("<f4").tobytes(), a[f"{name.format(l=l)}.bias"].astype("<f4").tobytes()]
        parts += [a[f"attn_layers.{l}.{p}"].astype("<f4").tobytes() for p in ("emb_rel_k", "emb_rel_v")]
        parts.append(a[f"ln.{l}"].astype("<f4").tobytes())
    return b"".join(parts + [struct.pack("<i", ids.size), ids.astype("<i8").tobytes()])


@pytest.mark.slow
@pytest.mark.skipif(not (CC and QEMU), reason="no aarch64 cross compiler / qemu-user")
def test_aarch64_text_encoder_under_qemu(tmp_path):
    """The text-encoder kernel built for aarch64 with warnings as errors and run under qemu-user against the host
    library (correctness only): the integer sums are the same on every tile, the float parts nearly so."""
    from edgeflow.runtime.native.text_encoder import NativeTextEncoder

    exe = tmp_path / "ef_enc_driver"
    sources = [str(SRC / n) for n in ("ef_enc_driver.c", "ef_enc.c", "ef_enc_att.c", "ef_hq8.c", "ef_hq_run.c",
                                      "ef_hq_up.c", "ef_amx.c", "ef_kernels.c", "ef_run.c", "ef_int8.c", "ef_wn.c",
                                      "ef_wn_run.c", "ef_wn_q8.c")]
    built = subprocess.run([CC, "-O2", "-static", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-function",
                            "-o", str(exe), *sources, "-lm"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    a = random_text_encoder()
    for n in (7, 150):
        ids = np.random.default_rng(n).integers(0, 20, n).astype(np.int64)
        (tmp_path / "in.bin").write_bytes(_enc_input(a, ids))
        run = subprocess.run([QEMU, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        out = np.fromfile(tmp_path / "out.bin", dtype="<f4").reshape(16, n)
        want = NativeTextEncoder(a, threads=1).run(ids)[0]
        assert compare(out, want)["snr_db"] >= 60

"""The Triton kernels (gpu target) vs PyTorch eager on a CUDA GPU: parity and time, side by side.

    python bench/bench_triton.py [--seconds 1.0] [--repeats 20] [--out bench/results/triton.json]

Subjects (random weights at the published sizes; the kernels' cost does not depend on what the weights are):
WaveFlow's cached inverse (paper config r=64: 8 flows x 8 layers, h=16, 64 channels; and the demo's 6 x 6 x 32),
a WaveGlow coupling stack (12 flows, WN 8 layers x 256 channels) and a VITS prior flow (4 flows, WN 4 layers x
192 channels, kernel 5), each on ``--seconds`` of audio at 22.05 kHz (256-sample hop). Prints, per subject,
PyTorch and Triton milliseconds (median of ``--repeats`` after warm-up, CUDA-synchronized), the ratio, and the
parity (max |difference| and SNR of the outputs). Needs a CUDA device: without one it says so and exits 2 (the
kernels' correctness is tested without a GPU in tests/test_triton_kernels.py, in Triton's interpreter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _subjects(seconds: float):
    from edgeflow.models.vits.flows import PriorFlow
    from edgeflow.models.waveflow import WaveFlow, WaveFlowConfig
    from edgeflow.models.waveglow import WaveGlow, WaveGlowConfig

    frames = max(2, int(seconds * 22050 / 256))
    g = torch.Generator().manual_seed(0)
    for name, cfg in (("waveflow r=64 (8x8, 64ch)", WaveFlowConfig(n_flows=8, n_layers=8, channels=64)),
                      ("waveflow demo (6x6, 32ch)", WaveFlowConfig(n_flows=6, n_layers=6, channels=32))):
        model = WaveFlow(cfg)
        mel = torch.randn(1, cfg.mel.n_mels, frames, generator=g) - 4
        z = torch.randn(1, frames * model.hop_length, generator=g) * 0.6
        yield name, model, (z, mel)
    wg = WaveGlow(WaveGlowConfig())
    mel = torch.randn(1, wg.config.mel.n_mels, frames, generator=g) - 4
    z = torch.randn(1, frames * wg.hop_length, generator=g) * 0.6
    yield "waveglow (12 flows, WN 8x256)", wg, (z, mel)
    prior = PriorFlow(192, 192, 5, 1, 4, 4)
    zp = torch.randn(1, 192, frames, generator=g)
    mask = torch.ones(1, 1, frames)
    yield "vits prior flow (4 x WN 4x192, k5)", prior, (zp, mask)


def _randomize(model: torch.nn.Module) -> None:
    """Small non-zero end/post convs (they start at zero), so the couplings are not the identity."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name or ".post." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


def run(seconds: float, repeats: int, dev: torch.device, only: str = ""):
    from edgeflow.flows.triton_ops import set_engine

    rows = []
    for name, model, inputs in _subjects(seconds):
        if only and only not in name:
            continue
        _randomize(model)
        model = model.to(dev).eval()
        moved = [t.to(dev) for t in inputs]
        fn = _bind(model, name, moved)
        with torch.no_grad():
            set_engine(model, "torch")
            ref = fn()[0]
            t_torch = _timed(fn, repeats) if repeats else float("nan")
            set_engine(model, "triton")
            out = fn()[0]
            t_triton = _timed(fn, repeats) if repeats else float("nan")
        err = (out - ref).float()
        snr = 10 * torch.log10(ref.float().pow(2).sum() / err.pow(2).sum().clamp_min(1e-30)).item()
        rows.append({"subject": name, "torch_ms": round(t_torch, 3), "triton_ms": round(t_triton, 3),
                     "speedup": round(t_torch / t_triton, 3), "max_abs_diff": err.abs().max().item(),
                     "snr_db": round(snr, 1)})
        print(f"{name:38s} torch {t_torch:9.2f} ms  triton {t_triton:9.2f} ms  {t_torch / t_triton:5.2f}x  "
              f"SNR {snr:6.1f} dB", flush=True)
    return rows


def _bind(model, name, moved):
    from edgeflow.models.vits.flows import FlowCond

    if name.startswith("vits"):
        return lambda: model.inverse(moved[0], FlowCond(moved[1]))
    return lambda: model.inverse(moved[0], moved[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="", help="write the rows (and the device and versions) as JSON")
    p.add_argument("--only", default="", help="subjects whose name contains this (waveflow, waveglow, vits)")
    p.add_argument("--interpret", action="store_true",
                   help="run on the CPU in Triton's interpreter: parity only, no timing (WaveFlow r=64 takes minutes)")
    args = p.parse_args(argv)
    if args.interpret:
        import os

        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("error: no CUDA device: the Triton kernels compile for a GPU only (their correctness is tested "
              "without one in tests/test_triton_kernels.py)", file=sys.stderr)
        return 2
    import triton

    dev = torch.device("cpu" if args.interpret else "cuda")
    rows = run(args.seconds, 0 if args.interpret else args.repeats, dev, args.only)
    if args.out:
        meta = {"device": "cpu (Triton interpreter)" if args.interpret else torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "seconds": args.seconds, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                       time.gmtime())}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

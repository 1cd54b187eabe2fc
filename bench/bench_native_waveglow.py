"""WaveGlow in the native engine vs onnxruntime, on a float32 bundle of a random-weight WaveGlow, side by side:

* builds a WaveGlow of a realistic but CPU-sized config (default 22.05 kHz, 80 mels, hop 256; 12 flows, an early
  output of 2 channels every 4, WN 8 layers x 64 channels, kernel 3; weights perturbed so no coupling is the
  identity), exports it (streaming context not verified: a bench bundle) and runs the ``kernels`` pass on it
  (the native weights, parity against onnxruntime at the export's validation lengths);
* times ``session.run`` of both engines on the same mel, z and sigma (``--seconds`` of audio), 1 and 2 threads,
  best of ``--repeats``, the engines interleaved run by run, and prints onnxruntime / native. numpy's BLAS
  (the native engine's upsampler and 1x1 convs) is limited to the same thread count when threadpoolctl is
  installed. Also the share of the native time spent in the numpy conditioning (upsampler + squeeze).

``--int8`` also quantizes the bundle (the ``quantize`` pass, calibrated on ``calibration/waveflow-demo``'s mels,
which share this mel front-end; no sensitivity search: random weights) and runs the ``kernels`` pass on the INT8
bundle, then times both engines on it too (native INT8 against onnxruntime's INT8 graph), in the same run.

Times are wall clock (a shared machine's load hits both engines alike; the load average is printed); at 1 thread
also the calling thread's CPU time (both engines compute on it), which other jobs inflate less.

Usage::

    PYTHONPATH=. nice -n 10 python bench/bench_native_waveglow.py [--seconds 2] [--repeats 5] [--wn-channels 64]
        [--int8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_vits_flow import finish, interleaved  # noqa: E402  (run from the repository root, PYTHONPATH=.)

MEL = {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "win_length": 1024, "n_mels": 80, "fmax": 8000.0}


def blas_threads(n: int):
    """A context limiting numpy's BLAS threads to ``n`` (threadpoolctl), or nothing when it is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def build(args, root: Path):
    """(model, bundle with kernels) of a random WaveGlow of the args' size."""
    import torch

    from edgeflow.models import build_model
    from edgeflow.passes.kernels import KernelsConfig, add_kernels
    from edgeflow.validate.export import export_bundle

    cfg = {"n_flows": args.n_flows, "n_group": 8, "n_early_every": 4, "n_early_size": 2, "wn_layers": args.wn_layers,
           "wn_channels": args.wn_channels, "lu_conv": args.lu, "mel": MEL}
    torch.manual_seed(0)
    model = build_model("waveglow", cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape))
    t0 = time.perf_counter()
    export_bundle(model, root / "plain", check_streaming=False)
    manifest = add_kernels(model, root / "plain", root / "kernels", KernelsConfig(threads=1, time_seconds=0))
    parity = [(r["frames"], f"{r['max_rel_err']:.1e}", r["snr_db"]) for r in manifest["native"]["parity"]["lengths"]]
    print(f"export + kernels pass: {time.perf_counter() - t0:.1f} s; parity (frames, max rel err, SNR dB): {parity}",
          flush=True)
    return model, root / "kernels", manifest


def build_int8(model, root: Path, calib: Path):
    """The float bundle of :func:`build` quantized (the ``quantize`` pass) and through the ``kernels`` pass: (bundle
    with INT8 kernels, its manifest)."""
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.passes.kernels import KernelsConfig, add_kernels

    t0 = time.perf_counter()
    art = Artifact(model=model, bundle_dir=root / "plain")
    ctx = PassContext(work_dir=root / "work", calib_dir=calib, target={"threads": 1}, progress=False)
    apply_pass(art, make_config("quantize", {"sensitivity": False}), ctx)
    manifest = add_kernels(model, art.bundle_dir, root / "kernels-int8", KernelsConfig(threads=1, time_seconds=0))
    parity = [(r["clip"], r["mel_l1"], r["snr_db"]) for r in manifest["native"]["parity"]["lengths"]]
    print(f"quantize + kernels pass: {time.perf_counter() - t0:.1f} s; INT8 parity against onnxruntime INT8 "
          f"(clip, log-mel L1, SNR dB): {parity}", flush=True)
    return root / "kernels-int8", manifest


def time_engines(bundle: Path, threads: int, seconds: float, repeats: int):
    from edgeflow.core.noise import noise
    from edgeflow.runtime import Synthesizer

    synths = {name: Synthesizer.load(bundle, threads=threads, engine=name) for name in ("native", "onnxruntime")}
    s = synths["native"]
    frames = int(round(seconds * s.sample_rate / s.hop_length))
    mel = np.random.default_rng(0).normal(-5.0, 2.0, (1, s.n_mels, frames)).astype(np.float32)
    feeds = {"mel": mel, "z": noise(0, 0, frames, s.hop_length, batch=1), "sigma": np.array([0.6], np.float32)}
    fns = {name: (lambda sy=sy: sy.session.run(None, feeds)) for name, sy in synths.items()}
    with blas_threads(threads):
        t = interleaved(dict(fns, native_cond=lambda: s.session.cond(mel)), repeats)
        row = {"threads": threads, "frames": frames, "audio_s": round(frames * s.hop_length / s.sample_rate, 3),
               **{f"{k}_ms": round(1e3 * v, 1) for k, v in t.items()},
               "speedup_onnxruntime_over_native": round(t["onnxruntime"] / t["native"], 3),
               "native_rtf": round(t["native"] * s.sample_rate / (frames * s.hop_length), 4),
               "onnxruntime_rtf": round(t["onnxruntime"] * s.sample_rate / (frames * s.hop_length), 4),
               "cond_share_of_native": round(t["native_cond"] / t["native"], 3)}
        if threads == 1:
            c = interleaved(fns, repeats, time.thread_time)
            row.update(native_cpu_ms=round(1e3 * c["native"], 1), onnxruntime_cpu_ms=round(1e3 * c["onnxruntime"], 1),
                       cpu_speedup=round(c["onnxruntime"] / c["native"], 3))
    return row


def main(argv=None):
    from edgeflow.runtime.native import info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="audio seconds per timed call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n-flows", type=int, default=12)
    ap.add_argument("--wn-layers", type=int, default=8)
    ap.add_argument("--wn-channels", type=int, default=64)
    ap.add_argument("--lu", action="store_true", help="LU-parametrised 1x1 convs")
    ap.add_argument("--int8", action="store_true", help="also quantize the bundle and time both engines in INT8")
    ap.add_argument("--calibration", type=Path, default=Path("calibration/waveflow-demo"))
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "library": info(), "load_average_start": os.getloadavg(),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                         if k not in ("out", "threads")}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="waveglow-native-") as tmp:
        model, bundle, manifest = build(args, Path(tmp))
        result["parity"] = manifest["native"]["parity"]
        bundles = {"float32": bundle}
        if args.int8:
            bundles["int8"], manifest8 = build_int8(model, Path(tmp), args.calibration)
            result["parity_int8"], result["int8"] = manifest8["native"]["parity"], manifest8["native"]["int8"]
        for threads in args.threads:
            for precision, b in bundles.items():
                result["rows"].append(dict(precision=precision, **time_engines(b, threads, args.seconds,
                                                                                args.repeats)))
                print(json.dumps(result["rows"][-1]), flush=True)
    finish(result, args.out)


if __name__ == "__main__":
    main()

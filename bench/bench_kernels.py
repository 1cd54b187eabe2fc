"""Native engine vs onnxruntime on a WaveFlow bundle (the demo's float32 bundle, or an INT8 one such as the ``fast``
recipe's), side by side in one run, with this CPU's measured float32 GEMM peak (numpy) and per-kernel throughput of
the native engine.

* RTF (compute s / audio s) of both engines on the same bundle, mel and noise, 1 and 2 threads, best of
  ``--repeats`` runs, the engines interleaved run by run so machine load hits both alike;
* the GEMM peak: numpy float32 ``N x N @ N x N`` (N = 1024), 1 and 2 BLAS threads (threadpoolctl), best of 20;
* every time both by the wall clock and by this process's CPU time (on a shared CPU the wall clock counts the
  time other jobs held the cores; CPU time does not, but with 2 threads it also counts OpenMP's spin-waiting);
* the fraction of that peak the native engine reaches: the family cost model's FLOPs per second of audio
  (``flops_breakdown``: flows + upsampler) times the audio length, divided by the measured time;
* per kernel (1 thread, the engine's own timers): seconds, GFLOP/s (GOP/s for an INT8 layer GEMM: one
  multiply-add = 2 ops) and the activation bytes each kernel reads and writes per second (GB/s; an estimate
  counting every operand once, caches not modelled);
* INT8 bundles: the quality of the native audio against onnxruntime's INT8 audio (SNR, log-mel L1).

Usage::

    PYTHONPATH=. nice -n 10 python bench/bench_kernels.py [--bundle DIR [--model MODEL.pt]] [--seconds 4] \
        [--out bench/results/kernels.json]

Without ``--bundle`` the demo model (models/waveflow-demo/model.pt) is exported and given kernels under a
temporary directory first (minutes). A ``--bundle`` without ``kernels.npz`` (an INT8 bundle straight from
``edgeflow optimize``) is given its kernels first by the kernels pass, from ``--model`` (the model it was exported
from: the run's last ``.work/model-NN.pt``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "waveflow-demo" / "model.pt"


def gemm_peak(threads: int, n: int = 1024, repeats: int = 20):
    """Best float32 GEMM GFLOP/s of numpy's BLAS on ``threads`` threads: (by wall time, by process CPU time)."""
    from threadpoolctl import threadpool_limits

    a, b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in (0, 1))
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        times = [_timed(lambda: a @ b) for _ in range(repeats)]
    return tuple(2.0 * n ** 3 / min(t[i] for t in times) / 1e9 for i in (0, 1))


def _timed(fn):
    """(wall seconds, process CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def make_bundle(work: Path) -> Path:
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes.kernels import KernelsConfig, add_kernels
    from edgeflow.validate.export import export_bundle

    model = load_model(DEMO)[0]
    print("exporting the demo model (minutes) ...", flush=True)
    export_bundle(model, work / "plain")
    add_kernels(model, work / "plain", work / "bundle", KernelsConfig(time_seconds=0))
    return work / "bundle"


def with_kernels(bundle: Path, model_path: Path, work: Path) -> Path:
    """A copy of ``bundle`` with the native weights of the model at ``model_path`` (the kernels pass, untimed)."""
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes.kernels import KernelsConfig, add_kernels

    add_kernels(load_model(model_path)[0], bundle, work / "bundle", KernelsConfig(time_seconds=0))
    return work / "bundle"


def kernel_flops(cfg: dict, samples: int) -> dict:
    """FLOPs and activation bytes of each native kernel over ``samples`` output samples."""
    C, k, M, L, F = cfg["channels"], cfg["kernel_size"], cfg["mel"]["n_mels"], cfg["n_layers"], cfg["n_flows"]
    n = samples * L * F
    K = k * k * C + M
    return {"layer_gemm": (2.0 * 2 * C * K * n, 4.0 * (k * C + M + 2 * C) * n),
            "gate": (0.0, 4.0 * 3 * C * n),
            "res_skip": (2.0 * (C * C + 2 * C) * n, 4.0 * (C + 3 * C + 2) * n),
            "affine_start": (0.0, 4.0 * (4 + C) * samples * F),
            "upsampler": (2.0 * 9 * M * samples * (1 + 1 / 16), 4.0 * 2 * M * samples),
            "quantize": (0.0, 5.0 * (C * n + M * samples))}


def profile(bundle: Path, mel: np.ndarray, hop: int, cfg: dict):
    """(per-kernel rows, wall seconds of one run) of the native engine on 1 thread."""
    from edgeflow.runtime import Synthesizer

    frames = mel.shape[1]
    sess = Synthesizer.load(bundle, threads=1, engine="native").session
    z = np.random.default_rng(1).standard_normal((1, frames * hop)).astype(np.float32)
    feeds = {"mel": mel[None], "z": z, "sigma": np.array([0.7], np.float32)}
    from edgeflow.runtime.native import PROFILE

    prof = np.zeros(len(PROFILE))
    total = min(_timed(lambda: sess.run(None, feeds))[0] for _ in range(2))
    sess.run(None, feeds, prof=prof)
    kernels = []
    for name, sec in zip(PROFILE, prof):
        if name == "quantize" and sec < 1e-6:                          # a float32 bundle: nothing quantized
            continue
        fl, by = kernel_flops(cfg, frames * hop)[name]
        kernels.append({"kernel": name, "seconds": round(float(sec), 4), "share": round(float(sec) / prof.sum(), 3),
                        "gflops": round(fl / sec / 1e9, 1) if fl and sec else None,
                        "gbytes_per_s": round(by / sec / 1e9, 1) if sec else None})
    return kernels, total


def eval_mel(manifest: dict, frames: int) -> np.ndarray:
    """Log-mels [n_mels, frames] of the demo's held-out recordings (models/waveflow-demo/eval), back to back: an
    INT8 graph's activation ranges are calibrated on speech, so random mels would measure its clipping."""
    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import MelConfig, log_mel

    cfg = MelConfig.from_dict(manifest["mel"])
    mels = [log_mel(load_wav(p, cfg.sample_rate)[0], cfg) for p in sorted((DEMO.parent / "eval").glob("*.wav"))]
    mel = np.concatenate(mels, axis=1)
    reps = -(-frames // mel.shape[1])
    return np.ascontiguousarray(np.tile(mel, (1, reps))[:, :frames], dtype=np.float32)


def parity(native_out: np.ndarray, ort_out: np.ndarray, manifest: dict, int8: bool) -> dict:
    """Native vs onnxruntime audio: max errors and SNR, and (INT8) the log-mel L1."""
    from edgeflow.passes.kernels import compare

    out = compare(native_out, ort_out)
    if int8:
        from edgeflow.audio.mel import MelConfig
        from edgeflow.audio.snr import log_mel_l1

        out["mel_l1"] = round(log_mel_l1(ort_out, native_out, MelConfig.from_dict(manifest["mel"])), 4)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="the bundle's model.pt, when it has no kernels yet")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-amx", action="store_true",
                    help="run the native INT8 convs on the VNNI tiles where the CPU has AMX (native.set_amx)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from edgeflow.models.family import get_family
    from edgeflow.runtime import Synthesizer, native

    if args.no_amx:
        native.set_amx(False)

    tmp = tempfile.TemporaryDirectory(prefix="bench_kernels_")
    bundle = args.bundle or make_bundle(Path(tmp.name))
    if not (bundle / "kernels.npz").is_file():
        if args.model is None:
            ap.error(f"{bundle} has no kernels.npz: give --model (the model.pt it was exported from)")
        bundle = with_kernels(bundle, args.model, Path(tmp.name))
    manifest = json.loads((bundle / "manifest.json").read_text())
    int8 = manifest["precision"] == "int8"
    cfg = manifest["config"]
    sr, hop = manifest["sample_rate"], manifest["mel"]["hop_length"]
    frames = int(round(args.seconds * sr / hop))
    audio_s = frames * hop / sr
    mel = eval_mel(manifest, frames) if int8 else \
        np.random.default_rng(0).normal(-5.0, 2.0, (manifest["mel"]["n_mels"], frames)).astype(np.float32)
    fam = get_family(manifest["family"])
    flops_per_s = sum(fam.flops_breakdown(fam.config_cls.from_dict(cfg)).values())
    load0 = os.getloadavg()
    rows = []
    for threads in args.threads:
        peak, peak_cpu = gemm_peak(threads)
        eng = {e: Synthesizer.load(bundle, threads=threads, engine=e) for e in ("native", "onnxruntime")}
        outs = {e: s.synthesize(mel, seed=0) for e, s in eng.items()}        # warm-up, and the parity
        best = {e: float("inf") for e in eng}
        cpu = {e: float("inf") for e in eng}
        for _ in range(args.repeats):
            for e, s in eng.items():
                wall, used = _timed(lambda: s.synthesize(mel, seed=0))
                best[e], cpu[e] = min(best[e], wall), min(cpu[e], used)
        gflops = flops_per_s * audio_s / best["native"] / 1e9
        gflops_cpu = flops_per_s * audio_s / cpu["native"] / 1e9
        rows.append({"threads": threads, "gemm_peak_gflops": round(peak, 1), "gemm_peak_gflops_cpu": round(peak_cpu, 1),
                     "native_cpu_s_per_audio_s": round(cpu["native"] / audio_s, 4),
                     "onnxruntime_cpu_s_per_audio_s": round(cpu["onnxruntime"] / audio_s, 4),
                     "native_gflops_cpu": round(gflops_cpu, 1), "fraction_of_peak_cpu": round(gflops_cpu / peak_cpu, 3),
                     "native_rtf": round(best["native"] / audio_s, 4),
                     "onnxruntime_rtf": round(best["onnxruntime"] / audio_s, 4),
                     "speedup": round(best["onnxruntime"] / best["native"], 2),
                     "native_gflops": round(gflops, 1), "fraction_of_peak": round(gflops / peak, 3),
                     "onnxruntime_gflops": round(flops_per_s * audio_s / best["onnxruntime"] / 1e9, 1),
                     "parity": parity(outs["native"], outs["onnxruntime"], manifest, int8)})
        print(json.dumps(rows[-1]), flush=True)
    kernels, total = profile(bundle, mel, hop, cfg)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
              platform.machine(), "cpu_count": os.cpu_count(), "load_before": [round(x, 2) for x in load0],
              "load_after": [round(x, 2) for x in os.getloadavg()], "native": native.info(),
              "bundle": str(args.bundle or bundle), "precision": manifest["precision"],
              "native_section": {k: v for k, v in manifest["native"].items() if k != "parity"},
              "audio_seconds": round(audio_s, 3),
              "cost_model_gflop_per_audio_s": round(flops_per_s / 1e9, 2), "rows": rows, "kernels": kernels,
              "kernels_total_s_1thread": round(total, 4)}
    print(json.dumps(result["kernels"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()

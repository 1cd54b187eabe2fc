"""Real-time factor of the runtime on this CPU, side by side (one timed run each; the CPU may be shared).

* PyTorch eager float32 (cached inverse) vs the bundle in onnxruntime, 1 and 2 threads, 1 s and 10 s;
* WaveFlow cached vs plain ONNX graph: graph size (nodes, bytes) and RTF (1 s).

RTF = compute seconds / audio seconds (< 1 is faster than real time).

Usage::

    PYTHONPATH=. python bench/bench_runtime.py [--model /work/runs/demo/model.pt] [--out bench/results/runtime.md]
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
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = Path("/work/runs/demo/model.pt")


NOTES = """
Notes:

- The CPU is shared (a training run and other benchmarks ran alongside; see the load averages), so absolute
  RTFs are pessimistic and noisy, and 2-thread cells can be slower than 1-thread ones (oversubscribed cores).
  Compare within a row.
- The runtime loads graphs of more than 4000 nodes with onnxruntime's memory-reuse planning off
  (`edgeflow.runtime.synthesizer.LARGE_GRAPH_NODES`): planning the ~20k-node unrolled cached graph took
  4-8 minutes on this CPU, ~10 s without it; intermediates are still freed after their last use.
- The plain graph recomputes the whole net for each of the h rows (h^2 row-work): only the shortest length
  is timed.
"""


def load_subject(path: Path):
    """(model, description): the checkpoint if present, else the waveflow-demo recipe built fresh."""
    from edgeflow.models import build_model
    from edgeflow.models.checkpoint import load_model
    from edgeflow.train.recipe import load_recipe

    if path.is_file():
        model, info = load_model(path)
        step = info.get("meta", {}).get("step", "?")
        return model, f"{path} (step {step})"
    recipe = load_recipe("waveflow-demo")
    torch.manual_seed(0)
    return build_model(recipe.family, recipe.model).eval(), "models/recipes/waveflow-demo.json, fresh init"


def speech_like_mel(cfg, seconds: float) -> np.ndarray:
    """Log-mel [n_mels, F] of a synthetic voiced signal through the numpy front-end."""
    from edgeflow.validate.export import speech_like_mel as mel_of

    frames = int(round(seconds * cfg.mel.sample_rate / cfg.mel.hop_length))
    return mel_of(cfg.mel, frames)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rtf_torch(model, mel: np.ndarray, threads: int, warm: bool) -> float:
    torch.set_num_threads(threads)
    x = torch.from_numpy(mel)[None]
    if warm:
        model.synthesize(x[:, :, :16], seed=0)
    return timed(lambda: model.synthesize(x, seed=0)) / (mel.shape[1] * model.hop_length / model.config.mel.sample_rate)


def rtf_bundle(bundle: Path, mel: np.ndarray, threads: int) -> float:
    from edgeflow.runtime import Synthesizer

    syn = Synthesizer.load(bundle, threads=threads)
    syn.synthesize(mel[:, :16], seed=0)   # warm-up: first run allocates and plans
    return timed(lambda: syn.synthesize(mel, seed=0)) / (mel.shape[1] * syn.hop_length / syn.sample_rate)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime.md")
    ap.add_argument("--seconds", default="1,10", help="audio lengths, comma-separated")
    args = ap.parse_args()

    from edgeflow.core.io import atomic_write_text
    from edgeflow.validate.export import export_bundle

    model, source = load_subject(args.model)
    cfg = model.config
    lengths = [float(s) for s in args.seconds.split(",")]
    load0 = os.getloadavg()
    rows, graphs = [], {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        torch.set_num_threads(1)
        bundles = {}
        for cached in (True, False):
            t0 = time.perf_counter()
            man = export_bundle(model, Path(tmp) / f"b{int(cached)}", cached=cached, check_streaming=cached)
            bundles[cached] = Path(tmp) / f"b{int(cached)}"
            graphs[cached] = dict(man["export"]["graph"], export_s=time.perf_counter() - t0,
                                  max_err=max(r["max_abs_err"] for r in man["validation"]["lengths"]),
                                  context=man["streaming"]["context_frames"],
                                  verified=man["streaming"]["check"] is not None)
        for sec in lengths:
            mel = speech_like_mel(cfg, sec)
            for threads in (1, 2):
                r = {"seconds": sec, "threads": threads,
                     "torch": rtf_torch(model, mel, threads, warm=True),
                     "ort": rtf_bundle(bundles[True], mel, threads)}
                if sec == min(lengths):
                    r["ort_plain"] = rtf_bundle(bundles[False], mel, threads)
                rows.append(r)
                print(json.dumps(r), flush=True)
    load1 = os.getloadavg()

    lines = [
        "# Runtime benchmark: PyTorch eager vs onnxruntime bundle",
        "",
        f"- model: {model.family}, {sum(p.numel() for p in model.parameters()):,} parameters, from {source}",
        f"- config: {cfg.n_flows} flows x {cfg.n_layers} layers, h={cfg.height}, {cfg.channels} channels, "
        f"{cfg.mel.sample_rate} Hz, hop {cfg.mel.hop_length}" if model.family == "waveflow" else f"- config: {cfg}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, SHARED (load average {load0[0]:.1f} before, "
        f"{load1[0]:.1f} after); torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}",
        "- one timed run per cell after a short warm-up; RTF = compute s / audio s (lower is faster)",
        "",
        "| audio | threads | PyTorch eager RTF | ONNX Runtime RTF (cached graph) | speed-up | ONNX plain graph RTF |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        plain = f"{r['ort_plain']:.3f}" if "ort_plain" in r else "-"
        lines.append(f"| {r['seconds']:g} s | {r['threads']} | {r['torch']:.3f} | {r['ort']:.3f} | "
                     f"{r['torch'] / r['ort']:.2f}x | {plain} |")
    lines += ["", "WaveFlow inverse in the graph (cached row queues vs the plain whole-net-per-row reference):", "",
              "| graph | nodes | initializers | bytes | export s | parity max abs err | stream context L/R |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for cached in (True, False):
        g = graphs[cached]
        lines.append(f"| {'cached' if cached else 'plain'} | {g['nodes']} | {g['initializers']} | {g['bytes']:,} | "
                     f"{g['export_s']:.1f} | {g['max_err']:.1e} | {g['context']['left']}/{g['context']['right']}"
                     f"{'' if g['verified'] else ' (unverified)'} |")
    text = "\n".join(lines) + "\n" + NOTES
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()

"""Speed of WaveFlow student shapes as INT8 bundles, side by side in one run (weights random: speed only).

Which cut buys speed? Each variant is a WaveFlow with random weights (seeded), exported with the current
exporter and quantized with the cpu target's ``fast`` INT8 options (sensitivity search off); the bundles are
timed interleaved on the same mel and noise. Speed does not depend on the weights (the random replica of the
fast student runs as fast as the real one), so this answers "how fast would a student of this shape be" before
spending a distillation on it. Quality is not measured here (see bench_compress.py).

Usage::

    PYTHONPATH=. python bench/bench_variants.py [--variants 'name={"n_flows": 2}' ...] [--base '{...}']
        [--work /tmp/bench_variants] [--seconds 4] [--repeats 5] [--threads 2] [--against BUNDLE_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The fast recipe's student on the demo teacher: 3 flows x 6 layers x 24 channels, h=16.
BASE = {"n_flows": 3, "n_layers": 6, "channels": 24, "height": 16}
VARIANTS = {"fast shape": {}, "2 flows": {"n_flows": 2}, "4 layers": {"n_layers": 4}, "height 8": {"height": 8}}


def build(name: str, cfg: dict, work: Path, threads: int) -> Path:
    """Random-weight WaveFlow ``cfg`` -> float bundle -> INT8 bundle (cached in ``work``); returns its model.onnx."""
    import torch

    from edgeflow.validate.export import export_bundle
    from edgeflow.models.waveflow import WaveFlow, WaveFlowConfig
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.targets import load_target, recipe_passes

    out = work / name.replace(" ", "_")
    done = sorted(out.glob("q/bundle-*/model.onnx"))
    if done:
        return done[-1]
    torch.manual_seed(0)
    model = WaveFlow(WaveFlowConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    export_bundle(model, out / "float", overwrite=True)
    opts = next(p for p in recipe_passes(load_target("cpu"), "fast") if p["pass"] == "quantize")
    opts = {k: v for k, v in opts.items() if k != "pass"}
    opts.update(sensitivity=False, max_mel_l1=None)
    (out / "q").mkdir(parents=True, exist_ok=True)
    art = Artifact(bundle_dir=out / "float")
    apply_pass(art, make_config("quantize", opts),
               PassContext(work_dir=out / "q", calib_dir=REPO / "calibration" / "waveflow-demo",
                           target={"threads": threads}, progress=False))
    return art.bundle_dir / "model.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", help='name={json overrides of --base}; default: %s' % VARIANTS)
    ap.add_argument("--base", default=json.dumps(BASE), help="WaveFlowConfig fields shared by all variants")
    ap.add_argument("--against", type=Path, help="also time this bundle (e.g. the real fast bundle)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_variants"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgeflow.core.ort import session_options

    variants = dict(VARIANTS)
    if args.variants:
        variants = {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variants}
    base = json.loads(args.base)
    paths = {name: build(name, {**base, **over}, args.work, args.threads) for name, over in variants.items()}
    if args.against:
        paths[f"bundle {args.against}"] = args.against / "model.onnx"
    import onnxruntime as ort

    frames = int(args.seconds * 22050 / 256) // 16 * 16
    rng = np.random.default_rng(0)
    feed = {"mel": rng.standard_normal((1, 80, frames)).astype(np.float32) - 5,
            "z": rng.standard_normal((1, frames * 256)).astype(np.float32), "sigma": np.array([0.7], np.float32)}
    sess = {k: ort.InferenceSession(str(p), session_options(args.threads, nodes=10 ** 6),
                                    providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    for s in sess.values():
        s.run(None, feed)
    rtf = {k: [] for k in sess}
    loads = []
    for _ in range(args.repeats):
        loads.append(round(os.getloadavg()[0], 2))
        for k, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            rtf[k].append((time.perf_counter() - t0) / (frames * 256 / 22050))
    ref = float(np.median(rtf[next(iter(variants))]))
    print(f"base {base}; {frames} frames ({frames * 256 / 22050:.1f} s), {args.threads} threads, load {loads}\n")
    print("| variant | config overrides | RTF (median) | vs first | all repeats |\n|---|---|---|---|---|")
    for k in sess:
        med = float(np.median(rtf[k]))
        print(f"| {k} | {json.dumps(variants.get(k, '-'))} | {med:.3f} | {ref / med:.2f}x | "
              f"{', '.join(f'{x:.3f}' for x in rtf[k])} |")


if __name__ == "__main__":
    main()

"""Compression recipes side by side: the PyTorch teacher vs each recipe's bundle on held-out clips.

For each recipe (quality, balanced, fast) the script runs ``edgeflow optimize TEACHER --target T --recipe R``
(re-running resumes), then measures the teacher (PyTorch eager float32) and every bundle (onnxruntime)
the same way on the eval clips: RTF (synthesis seconds / audio seconds, after one warm-up clip),
parameters, size on disk, PESQ-WB and log-mel L1 against the ground truth. Goals printed beside them:
``fast`` >= 10x lower RTF than the teacher with PESQ at most 0.3 below it; ``balanced`` >= 4x and 0.1.

The full run trains (distillation inside the recipes) and takes hours of this shared CPU::

    PYTHONPATH=. python bench/bench_compress.py [--teacher /work/runs/demo/model.pt] [--data /work/corpus]

``--smoke`` proves the script end to end in minutes: a tiny random WaveFlow teacher, every distillation
cut to 2 steps on a few corpus training clips, one eval clip and a loose budget (figures meaningless).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHERS = (REPO / "models" / "waveflow-demo" / "model.pt", Path("/work/runs/demo/model.pt"))
EVAL = REPO / "models" / "waveflow-demo" / "eval"
CORPUS = Path("/work/corpus")
GOALS = {"fast": (10.0, 0.3), "balanced": (4.0, 0.1)}
MINE = ("distill", "prune", "reduce_flows")


def smoke_teacher(work: Path) -> Path:
    """A tiny perturbed WaveFlow with the demo front-end (22.05 kHz, 80 mels, hop 256), saved as model.pt."""
    import torch

    from edgeflow.models import build_model
    from edgeflow.models.checkpoint import save_model

    torch.manual_seed(0)
    model = build_model("waveflow", {"n_flows": 4, "n_layers": 2, "height": 8, "channels": 8, "sigma_infer": 0.7})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model(work / "teacher" / "model.pt", model)
    return work / "teacher" / "model.pt"


def smoke_train_clips(work: Path, n: int = 4) -> Path:
    """A few training-split clips of the corpus (or synthetic tones without one) for the smoke distillations."""
    from edgeflow.audio.io import save_wav

    out = work / "train_clips"
    out.mkdir(parents=True, exist_ok=True)
    if (CORPUS / "metadata.csv").is_file():
        from edgeflow.train.data import split_wavs

        for p in split_wavs(CORPUS, "train")[:n]:
            shutil.copy(p, out / p.name)
    else:
        t = np.arange(22050) / 22050
        for i in range(n):
            save_wav(out / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * (120 + 50 * i) * t)).astype(np.float32), 22050)
    return out


def smoke_target(name: str, work: Path, clips: Path) -> Path:
    """The target with every distillation cut to 2 steps on ``clips`` (written to WORK/target-smoke.json)."""
    from edgeflow.targets import load_target

    tgt = copy.deepcopy(load_target(name))
    tiny = {"steps": 2, "max_minutes": 1, "segment": 2048, "valid_every": 1, "ckpt_every": 1, "valid_segments": 2,
            "threads": 1, "data": str(clips)}
    for passes in tgt["recipes"].values():
        for p in passes:
            if p["pass"] == "distill":
                p.update(tiny)
            elif p["pass"] in MINE and p.get("finetune"):
                p["finetune"] = dict(p["finetune"], **tiny)
            if p["pass"] == "reduce_flows" and p.get("evaluate_counts"):
                p["evaluate_counts"] = p["evaluate_counts"][:1]
    tgt["name"] = f"{name}-smoke"
    path = work / "target-smoke.json"
    path.write_text(json.dumps(tgt, indent=2))
    return path


def run_optimize(teacher: Path, out: Path, target: str, recipe: str, data: Path, n_eval: int, threads: int,
                 budget: str | None) -> float:
    cmd = [sys.executable, "-m", "edgeflow", "optimize", str(teacher), "--target", target, "--recipe", recipe,
           "--data", str(data), "--n-eval", str(n_eval), "--threads", str(threads), "-o", str(out)]
    if budget:
        cmd += ["--max-drop", budget]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if res.returncode:
        raise SystemExit(f"edgeflow optimize --recipe {recipe} failed (exit {res.returncode})")
    return time.time() - t0


def measure(synth, clips, mel_cfg) -> Dict[str, float]:
    """RTF over the clips (after a warm-up on the first), PESQ-WB and log-mel L1 vs ground truth (means)."""
    from edgeflow.validate import metrics as M
    from edgeflow.validate import perceptual as P

    synth(clips[0].mel[:, :32])
    t0, outs = time.perf_counter(), []
    for c in clips:
        outs.append(synth(c.mel)[:len(c.audio)])
    secs = sum(len(c.audio) for c in clips) / mel_cfg.sample_rate
    rtf = (time.perf_counter() - t0) / secs
    pesq = [P.pesq_wb(c.audio, o, mel_cfg.sample_rate) for c, o in zip(clips, outs)]
    mel_l1 = [M.log_mel_l1(c.audio, o, mel_cfg.sample_rate, mel_cfg) for c, o in zip(clips, outs)]
    return {"rtf": rtf, "pesq": float(np.mean(pesq)), "mel_l1": float(np.mean(mel_l1))}


def table(rows: List[Dict[str, Any]], teacher: Dict[str, Any]) -> str:
    lines = ["| subject | RTF | speed-up | params | size MB | PESQ-WB | dPESQ | log-mel L1 | goal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in [teacher] + rows:
        speed = teacher["rtf"] / r["rtf"]
        dp = r["pesq"] - teacher["pesq"]
        goal = ""
        if r["name"] in GOALS:
            want_x, max_drop = GOALS[r["name"]]
            ok = speed >= want_x and -dp <= max_drop
            goal = f"{'MET' if ok else 'MISSED'} (>= {want_x:g}x, dPESQ >= -{max_drop})"
        lines.append(f"| {r['name']} | {r['rtf']:.3f} | {speed:.1f}x | {r['params']:,} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['pesq']:.3f} | {dp:+.3f} | {r['mel_l1']:.3f} | {goal} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=None, help="model.pt (default: the demo model)")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--recipes", default="quality,balanced,fast")
    ap.add_argument("--data", type=Path, default=CORPUS, help="corpus for optimize (gate: test split; "
                                                                "distillation: train split)")
    ap.add_argument("--eval", type=Path, default=EVAL, help="held-out clips measured here")
    ap.add_argument("--n-clips", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-compress", help="optimize runs (resumable)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compress.md")
    ap.add_argument("--smoke", action="store_true", help="tiny teacher, 2-step distillations (proves the script)")
    args = ap.parse_args()

    import torch

    from edgeflow.core.io import atomic_write_text
    from edgeflow.models.base import count_parameters
    from edgeflow.models.checkpoint import load_model
    from edgeflow.validate.evaluate import bundle_synthesizer, load_clips, torch_synthesizer

    work = args.work / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    target, budget, n_eval, n_clips, data = args.target, None, 4, args.n_clips, args.data
    if args.smoke:
        teacher_path = args.teacher or smoke_teacher(work)
        target = str(smoke_target(args.target, work, smoke_train_clips(work)))
        budget, n_eval, n_clips, data = "mel_l1=10", 1, 1, args.eval
    else:
        teacher_path = args.teacher or next((p for p in TEACHERS if p.is_file()), None)
        if teacher_path is None:
            raise SystemExit("no teacher: pass --teacher MODEL.pt")
    teacher, _ = load_model(teacher_path)
    mel_cfg = teacher.config.mel
    clips = load_clips(args.eval, mel_cfg, n=n_clips, multiple=teacher.length_multiple)
    torch.set_num_threads(args.threads)
    print(f"teacher {teacher_path}: {count_parameters(teacher):,} parameters (weight-normed); {len(clips)} eval "
          f"clip(s), {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    from edgeflow.export.freeze import freeze_model

    folded = count_parameters(freeze_model(copy.deepcopy(teacher)))       # weight norm folded, as in bundles
    ref = dict(name="teacher (PyTorch eager fp32)", params=folded,
               bytes=teacher_path.stat().st_size, **measure(torch_synthesizer(teacher, seed=0), clips, mel_cfg))
    rows = []
    for recipe in [r for r in args.recipes.split(",") if r]:
        out = work / recipe
        secs = run_optimize(teacher_path, out, target, recipe, data, n_eval, args.threads, budget)
        report = json.loads((out / "report.json").read_text())
        bundle = out / "bundle"
        row = dict(name=recipe, params=report["cost"]["parameters"], optimize_s=secs,
                   bytes=sum(f.stat().st_size for f in bundle.iterdir() if f.is_file()),
                   passes={p["name"]: p["status"] for p in report["passes"]},
                   **measure(bundle_synthesizer(bundle, seed=0, threads=args.threads), clips, mel_cfg))
        rows.append(row)
        print(json.dumps(row), flush=True)
    text = table(rows, ref)
    status = "; ".join(f"{r['name']}: " + ", ".join(f"{k} {v}" for k, v in r["passes"].items()) for r in rows)
    smoke = " (SMOKE: tiny teacher, 2-step distillation; figures meaningless)" if args.smoke else ""
    head = (f"# Compression recipes vs the PyTorch teacher{smoke}\n\n"
            f"Teacher `{teacher_path}`, target `{args.target}`, {len(clips)} clip(s) of `{args.eval}`, "
            f"{args.threads} thread(s), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, load average "
            f"{os.getloadavg()[0]:.1f}. RTF = compute s / audio s; params with weight norm folded. "
            f"Pass status: {status}\n\n")
    print("\n" + text)
    out_md = work / "compress.md" if args.smoke else args.out
    atomic_write_text(out_md, head + text + "\n")
    print(f"\nwrote {out_md}")


if __name__ == "__main__":
    main()

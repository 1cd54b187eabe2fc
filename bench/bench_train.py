"""Training throughput and PyTorch sampling speed of the paper-size models on this machine.

* Training: steps/s and samples/s of one maximum-likelihood step (log-mel front-end, forward, NLL,
  backward, gradient clipping, Adam) for WaveFlow r=64 and WaveGlow-256, batch 1, segment 16384,
  timed after one warm-up step.
* Sampling: real-time factor (synthesis seconds / audio seconds, lower is faster) of WaveFlow's cached
  row-by-row inverse and of the plain h^2 reference inverse, same model, same mel and same z, about 1 s of
  audio, for the r=64 recipe and the demo recipe; the plain/cached ratio is the cache's speed-up.

Usage::

    python bench/bench_train.py                      # full run (minutes on a small CPU), prints a table
    python bench/bench_train.py --threads 1 --out bench/results/train.md   # as recorded (shared CPU)
    python bench/bench_train.py --quick              # tiny sizes, a smoke test of the script
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeflow.audio.mel_torch import LogMel  # noqa: E402
from edgeflow.models.base import build_model, count_parameters  # noqa: E402
from edgeflow.train.recipe import load_recipe  # noqa: E402


def speech_like(n: int, sr: int, seed: int = 0) -> torch.Tensor:
    """[1, n] harmonic signal with vibrato and noise (content does not change the speed; it keeps values sane)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / sr
    f0 = 140 + 20 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    x = sum(0.2 / k * torch.sin(k * phase) for k in range(1, 10)) + 0.02 * torch.randn(n, generator=g,
                                                                                        dtype=torch.float64)
    return x.float()[None]


def nudge_last_layers(model: torch.nn.Module, scale: float = 0.01, seed: int = 0) -> None:
    """Zero-initialised last layers make a fresh flow the identity; nudge them so the samples are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


def bench_train(recipe_name: str, steps: int, segment: int, batch: int = 1, overrides=None) -> dict:
    recipe = load_recipe(recipe_name)
    cfg = recipe.model if not overrides else recipe.model.replace(**overrides)
    torch.manual_seed(0)
    model = build_model(recipe.family, cfg).train()
    mel_fn = LogMel(cfg.mel)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train.lr)
    audio = torch.cat([speech_like(segment, cfg.mel.sample_rate, seed=b) for b in range(batch)])

    def step():
        loss = model.nll_per_dim(audio, mel_fn(audio))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    step()                                   # warm-up
    warm = time.perf_counter() - t0
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    return {"name": recipe_name, "family": recipe.family, "params": count_parameters(model), "batch": batch,
            "segment": segment, "steps": steps, "warmup_s": warm, "step_s": sec, "steps_per_s": 1 / sec,
            "samples_per_s": batch * segment / sec, "min_step_s": min(times), "loss": losses[-1]}


@torch.no_grad()
def bench_sampling(recipe_name: str, seconds: float = 1.0, overrides=None) -> dict:
    recipe = load_recipe(recipe_name)
    cfg = recipe.model if not overrides else recipe.model.replace(**overrides)
    torch.manual_seed(0)
    model = build_model(recipe.family, cfg).eval()
    nudge_last_layers(model)
    hop, sr = cfg.mel.hop_length, cfg.mel.sample_rate
    mult = model.length_multiple // hop
    frames = mult * math.ceil(seconds * sr / hop / mult)
    audio = speech_like(frames * hop, sr, seed=1)
    mel = LogMel(cfg.mel)(audio)
    z = model.noise(mel, seed=0) * cfg.sigma_infer
    dur = frames * hop / sr

    model.set_cached(True)
    model.inverse(z[:, :mult * hop * 2], mel[:, :, :mult * 2])     # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    x_cached, _ = model.inverse(z, mel)
    t_cached = time.perf_counter() - t0
    model.set_cached(False)
    t0 = time.perf_counter()
    x_plain, _ = model.inverse(z, mel)
    t_plain = time.perf_counter() - t0
    model.set_cached(True)
    return {"name": recipe_name, "params": count_parameters(model), "height": cfg.height, "frames": frames,
            "audio_s": dur, "cached_s": t_cached, "plain_s": t_plain, "rtf_cached": t_cached / dur,
            "rtf_plain": t_plain / dur, "speedup": t_plain / t_cached,
            "max_abs_diff": float((x_cached - x_plain).abs().max()), "peak": float(x_cached.abs().max())}


def markdown(train_rows, sample_rows) -> str:
    out = ["### Training (CPU, float32, batch 1; mean of the timed steps after 1 warm-up step)", "",
           "| model | params | segment | timed steps | s/step | steps/s | samples/s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in train_rows:
        out.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['segment']} | {r['steps']} | {r['step_s']:.2f} | "
                   f"{r['steps_per_s']:.4f} | {r['samples_per_s']:.0f} |")
    out += ["", "### WaveFlow sampling in PyTorch (same model, mel and z; RTF = synthesis s / audio s)", "",
            "| model | params | h | audio | cached s | plain s | RTF cached | RTF plain | plain / cached "
            "| max abs diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sample_rows:
        out.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['height']} | {r['audio_s']:.2f} s | "
                   f"{r['cached_s']:.2f} | {r['plain_s']:.2f} | {r['rtf_cached']:.3f} | {r['rtf_plain']:.3f} | "
                   f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and segments (smoke test of the script)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--waveflow-steps", type=int, default=3, help="timed WaveFlow training steps (default 3)")
    ap.add_argument("--waveglow-steps", type=int, default=2, help="timed WaveGlow training steps (default 2)")
    ap.add_argument("--segment", type=int, default=16384, help="training segment in samples (default 16384)")
    ap.add_argument("--out", default=None, help="also write the results (with machine notes) to this .md file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    started = datetime.datetime.now().astimezone()
    wf_small = {"n_flows": 2, "n_layers": 2, "channels": 8} if args.quick else None
    wg_small = {"n_flows": 4, "wn_layers": 2, "wn_channels": 16} if args.quick else None
    segment = 2048 if args.quick else args.segment
    train_rows, sample_rows = [], []
    for name, steps, over in (("waveflow-r64", args.waveflow_steps, wf_small),
                              ("waveglow-256", args.waveglow_steps, wg_small)):
        print(f"training {name} ...", file=sys.stderr, flush=True)
        train_rows.append(bench_train(name, steps, segment, overrides=over))
        print(f"  {train_rows[-1]['step_s']:.2f} s/step", file=sys.stderr, flush=True)
    for name in ("waveflow-r64", "waveflow-demo"):
        print(f"sampling {name} ...", file=sys.stderr, flush=True)
        sample_rows.append(bench_sampling(name, 0.1 if args.quick else 1.0, overrides=wf_small))
        print(f"  cached {sample_rows[-1]['cached_s']:.2f} s, plain {sample_rows[-1]['plain_s']:.2f} s",
              file=sys.stderr, flush=True)
    if args.quick:
        for r in train_rows + sample_rows:
            r["name"] += " (quick: shrunk)"
    table = markdown(train_rows, sample_rows)
    load1 = os.getloadavg()
    cmd = " ".join(["python bench/bench_train.py", *(sys.argv[1:] if argv is None else argv)])
    notes = (f"Run {started:%Y-%m-%d %H:%M %Z} with `{cmd}`"
             f"; {platform.processor() or platform.machine()}, nproc={os.cpu_count()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} intra-op thread(s). The CPU was shared with other jobs (a model training "
             f"in the background and other engineers' work): load average {load0[0]:.1f} at the start, "
             f"{load1[0]:.1f} at the end, so absolute times are pessimistic and noisy; ratios measured within "
             f"one run (plain / cached) are the more robust numbers.")
    print(table)
    print(notes)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Training and PyTorch sampling speed (CPU)\n\n" + notes + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

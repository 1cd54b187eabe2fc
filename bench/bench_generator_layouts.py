"""Which channels of a HiFi-GAN generator can go: pruned layouts, refitted by least squares and never trained,
scored in PyTorch float on held-out recordings.

For every layout the generator is pruned (``edgeflow.compress.generator.prune_generator`` with explicit widths,
channel ranking and refit on 64 windows of 32 frames drawn with a fixed seed from ``--fit-data``, wavs of other
speakers), then vocodes the held-out clips' log-mels whole. Printed per layout: the cost model's FLOPs relative to
the unpruned generator, DNSMOS P.808 of the outputs (the unpruned generator's beside it), and log-mel L1 to the
unpruned generator's audio. No INT8, no bundle: the quality the pruning itself costs.

Layout syntax: ``NAME=GROUP:WIDTH,...`` where GROUP is a channel group (``stage3``, ``inner4.1``) or a range of
resblocks' inner widths, ``innerA-B`` (every pair of resblocks A to B). Example (issue 16, 2026-12-04)::

    PYTHONPATH=. python bench/bench_generator_layouts.py --model /tmp/d/universal.pt --fit-data /tmp/r/real \\
        --data /tmp/d/heldout "e=stage3:24,inner9-11:8,inner3-5:64" "b=stage3:16,inner9-11:8,inner3-5:64"
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

FIT_WINDOWS, FIT_FRAMES = 64, 32


def parse_layout(spec: str, n_pairs: int = 3) -> tuple:
    """``NAME=GROUP:W,...`` -> (name, {group: width}); ``innerA-B:W`` expands to every pair of resblocks A..B."""
    name, _, body = spec.partition("=")
    widths: Dict[str, int] = {}
    for item in filter(None, body.split(",")):
        group, _, w = item.partition(":")
        if group.startswith("inner") and "-" in group:
            a, b = (int(v) for v in group[5:].split("-"))
            widths.update({f"inner{r}.{j}": int(w) for r in range(a, b + 1) for j in range(n_pairs)})
        else:
            widths[group] = int(w)
    if not name or not widths:
        raise SystemExit(f"bench_generator_layouts: bad layout {spec!r} (NAME=GROUP:WIDTH,...)")
    return name, widths


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options this bench shares with ``bench_tts_layouts.py``: refit mode, torch threads, JSON output."""
    ap.add_argument("--refit-mode", default="sequential", choices=["sequential", "independent"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")


def fit_windows(folder: Path, mel_cfg, seed: int = 0) -> torch.Tensor:
    """FIT_WINDOWS log-mel windows [N, n_mels, FIT_FRAMES] from the wavs of ``folder`` (4 per file, seeded)."""
    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel

    files = sorted(folder.glob("*.wav"))
    random.Random(seed + 1).shuffle(files)
    rng, out = np.random.default_rng(seed), []
    for f in files:
        mel = log_mel(load_wav(f, mel_cfg.sample_rate)[0], mel_cfg)
        if mel.shape[1] < FIT_FRAMES + 2:
            continue
        for _ in range(4):
            s = rng.integers(0, mel.shape[1] - FIT_FRAMES)
            out.append(torch.from_numpy(mel[:, s:s + FIT_FRAMES]).float())
        if len(out) >= FIT_WINDOWS:
            return torch.stack(out[:FIT_WINDOWS])
    raise SystemExit(f"bench_generator_layouts: {folder} gives fewer than {FIT_WINDOWS} windows")


def score(outs: List[np.ndarray], ref: List[np.ndarray], mel_cfg) -> dict:
    from edgeflow.audio.mel import log_mel
    from edgeflow.validate.perceptual import dnsmos

    return {"dnsmos_p808": round(float(np.mean([dnsmos(o, mel_cfg.sample_rate)["p808"] for o in outs])), 3),
            "mel_l1_vs_unpruned": round(float(np.mean([np.abs(log_mel(o, mel_cfg) - log_mel(r, mel_cfg)).mean()
                                                       for o, r in zip(outs, ref)])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layouts", nargs="+", help="NAME=GROUP:WIDTH,... (see the module docstring)")
    ap.add_argument("--model", required=True, help="a HiFi-GAN model.pt (edgeflow import hifigan)")
    ap.add_argument("--fit-data", required=True, help="wavs the ranking and the refit see (not the held-out)")
    ap.add_argument("--data", required=True, help="held-out wavs (a folder with transcripts.txt)")
    add_common_args(ap)
    args = ap.parse_args()

    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel
    from edgeflow.compress.generator import prune_generator
    from edgeflow.models.checkpoint import load_model
    from edgeflow.models.hifigan import decoder_flops_per_frame
    from edgeflow.validate.evaluate import find_clips

    torch.set_num_threads(args.threads)
    layouts = [parse_layout(s) for s in args.layouts]
    model, _ = load_model(args.model)
    gen, mel_cfg = model.generator.eval(), model.config.mel
    fit = fit_windows(Path(args.fit_data), mel_cfg)
    mels = []
    for _, path, _ in find_clips(Path(args.data)):
        audio = load_wav(path, mel_cfg.sample_rate)[0]
        mels.append(torch.from_numpy(log_mel(audio[:len(audio) // mel_cfg.hop_length * mel_cfg.hop_length],
                                             mel_cfg)).float()[None])

    def vocode(g):
        with torch.no_grad():
            return [g(m)[0, 0].numpy() for m in mels]

    ref, flops0 = vocode(gen), decoder_flops_per_frame(gen.config)
    results = {"unpruned": {"flops": 1.0, **score(ref, ref, mel_cfg)}}
    print(f"{len(mels)} held-out clips; unpruned: {results['unpruned']}", flush=True)
    for spec, (name, widths) in zip(args.layouts, layouts):
        t0 = time.time()
        small, _ = prune_generator(gen, 0.0, widths, [fit[a:a + 8] for a in range(0, len(fit), 8)], refit=True,
                                   refit_mode=args.refit_mode)
        results[name] = {"widths": spec.partition("=")[2],
                         "flops": round(decoder_flops_per_frame(small.config) / flops0, 3),
                         **score(vocode(small), ref, mel_cfg), "seconds": round(time.time() - t0, 1)}
        print(name, results[name], flush=True)
    print("\n| layout | widths | FLOPs vs unpruned | DNSMOS P.808 | log-mel L1 vs unpruned |\n|---|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r.get('widths', '')} | {r['flops']:.3f} | {r['dnsmos_p808']:.3f} | "
              f"{r['mel_l1_vs_unpruned']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "refit_mode": args.refit_mode,
                                               "fit_windows": [FIT_WINDOWS, FIT_FRAMES], "results": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

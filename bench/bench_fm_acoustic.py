"""Acoustic-model time of flow-matching (fmtts) voice bundles side by side: text graph + the field calls of the
ODE (``FmVoice.mel_ids``), no vocoder, on the evaluation sentences, the bundles interleaved round by round
(order reversed every other round), fastest of ``--rounds`` kept, at 1 thread. The first bundle is the
baseline of the speed-up column. Used for `fm_prune` / `fm_quantize` bundles against the exported one.

Usage::

    PYTHONPATH=. python bench/bench_fm_acoustic.py EXPORTED_BUNDLE PRUNED_BUNDLE [...] [--sentences 10]
        [--rounds 3] [--settings euler:4:-1,euler:1:0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def setting(text: str) -> dict:
    solver, nfe, sway = text.split(":")
    return {"solver": solver, "nfe": int(nfe), "sway": float(sway)}


def time_bundles(voices: dict, ids: list, ode: dict, rounds: int) -> dict:
    """Fastest wall seconds per bundle for all of ``ids`` (seed k for sentence k) at ODE setting ``ode``."""
    names, best = list(voices), dict.fromkeys(voices, float("inf"))
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for k, x in enumerate(ids):
                voices[n].mel_ids(x, seed=k, **ode)
            best[n] = min(best[n], time.perf_counter() - t0)
    return best


def main() -> None:
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--sentences", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default="euler:4:-1,euler:1:0", help="solver:nfe:sway, comma-separated")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    voices = {str(b): Voice.load(b, threads=1) for b in args.bundles}
    first = voices[str(args.bundles[0])]
    ids = [i for t in sentences("evaluation")[:args.sentences] for i in first.sentence_ids(t)]
    frames = sum(first.mel_ids(x, seed=k, nfe=1).shape[1] for k, x in enumerate(ids))
    audio_s = frames * first.hop_length / first.sample_rate
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_start": os.getloadavg(),
              "audio_seconds": round(audio_s, 2), "sentences": len(ids), "rows": []}
    for ode in map(setting, args.settings.split(",")):
        best = time_bundles(voices, ids, ode, args.rounds)
        base = best[str(args.bundles[0])]
        for n, sec in best.items():
            row = dict(ode, bundle=n, rtf=round(sec / audio_s, 5), speedup=round(base / sec, 3))
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    result["load_average_end"] = os.getloadavg()
    print(f"{result['sentences']} sentences, {result['audio_seconds']} s of audio; load average "
          f"{result['load_average_start']} -> {result['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

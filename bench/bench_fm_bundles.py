"""Flow-matching (fmtts) voice bundles side by side, each at its own defaults: whole-voice RTF and quality.

Every bundle speaks the first ``--sentences`` evaluation sentences of :mod:`edgeflow.data.tts_text`, at the
ODE setting, scales and vocoder its ``optimize`` run chose (the bundle's defaults), seed 0. Speed: per thread
count, the bundles interleaved sentence by sentence and round by round (:func:`edgeflow.validate.tts_optimize.
interleaved_rtf`, fastest of ``--rounds`` per sentence, after one warm-up sentence), so other jobs on a shared
CPU slow them alike; RTF = total wall / total audio, acoustic model and vocoder together, each sentence
vocoded whole (as ``optimize``'s report and bench_fm_tts.py time it) or, with ``--stream``, in
``speak_stream``'s default chunks (128 frames after a first 32, each with the vocoder's context: more work).
Quality, at 1 thread (``--quality``): pocketsphinx corpus WER and mean DNSMOS P.808 of each bundle and of the
corpus voice the model was trained on, on the same sentences (:mod:`bench_fm_speaks`).
``NAME=BUNDLE@1d`` / ``@2d`` forces a run-time conv layout (:mod:`edgeflow.runtime.conv_layout`).

    PYTHONPATH=. python bench/bench_fm_bundles.py quality=OUT1/bundle fast=OUT2/bundle --threads 1,2 \\
        [--sentences 20] [--rounds 2] [--quality] [--stream] [--corpus-voice slt_hts] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))


def open_bundles(pairs, threads: int) -> Dict[str, Any]:
    """NAME -> FmVoice for ``pairs`` of (NAME, PATH[@layout]) at ``threads`` intra-op threads."""
    from edgeflow.runtime import Voice

    out = {}
    for name, spec in pairs:
        path, _, layout = spec.partition("@")
        out[name] = Voice.load(Path(path), threads=threads, conv_layout=layout or "auto")
    return out


def defaults(voice: Any) -> Dict[str, Any]:
    """The ODE setting a bundle runs by default and its vocoder's precision (for the table)."""
    m = voice.manifest
    ode = m.get("sampling") or {}
    return {"ode": ode, "vocoder": (m.get("vocoder") or {}).get("precision", "float32")}


def main(argv=None) -> int:
    from edgeflow.data.tts_text import sentences
    from edgeflow.validate.tts_optimize import interleaved_rtf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE[@1d|@2d] (an fmtts voice bundle)")
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quality", action="store_true", help="also WER / DNSMOS P.808 at 1 thread (slow)")
    ap.add_argument("--stream", action="store_true", help="time speak_stream's default chunks, not whole sentences")
    ap.add_argument("--corpus-voice", default="slt_hts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    pairs = [b.split("=", 1) for b in args.bundles]
    if any(len(p) != 2 for p in pairs):
        ap.error("each bundle is NAME=PATH")
    texts = sentences("evaluation")[:args.sentences]
    out: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sentences": len(texts),
                           "rounds": args.rounds, "vocoding": "streamed chunks" if args.stream else "whole sentences",
                           "load_average_start": os.getloadavg(), "rtf": {}}
    speak = {} if args.stream else {"chunk_frames": None, "first_chunk_frames": None}
    for threads in [int(t) for t in args.threads.split(",")]:
        voices = open_bundles(pairs, threads)
        out.setdefault("defaults", {n: defaults(v) for n, v in voices.items()})
        for v in voices.values():
            v.speak(texts[0], seed=0)                                       # warm-up
        out["rtf"][threads] = interleaved_rtf(voices, texts, 0, speak, args.rounds)
        print(f"{threads} thread(s): " + ", ".join(f"{n} {r:.4f}" for n, r in out["rtf"][threads].items()),
              flush=True)
    if args.quality:
        from bench_corpus_voice import score
        from bench_fm_speaks import score_bundle

        cv = score(args.corpus_voice, texts)["summary"]
        out["corpus_voice"] = {"name": args.corpus_voice, "wer": cv["wer"], "p808": cv["p808"]}
        out["quality"] = {n: score_bundle(n, Path(p.partition("@")[0]), texts, ["default"])["default"]
                          for n, p in pairs}
    out["load_average_end"] = os.getloadavg()
    print_table(out, [n for n, _ in pairs])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


def print_table(out: Dict[str, Any], names) -> None:
    threads = list(out["rtf"])
    first = out["rtf"][threads[0]][names[0]]
    head = " | ".join(f"RTF {t} thr" for t in threads)
    print(f"\n| bundle | vocoder | {head} | x vs {names[0]} ({threads[0]} thr) | WER | DNSMOS P.808 |")
    print("|---|---|" + "---:|" * (len(threads) + 3))
    if "corpus_voice" in out:
        cv = out["corpus_voice"]
        print(f"| corpus voice {cv['name']} | | " + " | " * len(threads) + f" | {cv['wer']:.3f} | {cv['p808']:.3f} |")
    for n in names:
        rtfs = " | ".join(f"{out['rtf'][t][n]:.4f}" for t in threads)
        q = out.get("quality", {}).get(n)
        qs = f"{q['wer']:.3f} | {q['p808']:.3f}" if q else " | "
        print(f"| {n} | {out['defaults'][n]['vocoder']} | {rtfs} | {first / out['rtf'][threads[0]][n]:.2f}x | {qs} |")


if __name__ == "__main__":
    raise SystemExit(main())

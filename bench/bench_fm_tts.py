"""RTF and quality of a flow-matching (fmtts) voice bundle against the ODE setting: NFE x solver x sway.

For each of the first N evaluation sentences of :mod:`edgeflow.data.tts_text` (every sentence a text splits
into; sentence k uses seed k) and each setting (Euler NFE 1, 2, 4, 8, 16, 32; midpoint NFE 2, 4, 8, 16, 32;
sway 0 and -1), at each thread count:

* **acoustic model alone**: :meth:`FmVoice.mel_ids` (text graph + NFE field calls), wall time;
* **whole voice** (acoustic model + vocoder, :meth:`FmVoice.speak_ids`) for the ``--whole`` settings only: the
  vocoder's cost does not depend on the ODE setting, so timing it for every setting would only repeat it.

The settings (and the whole-voice runs) are interleaved sentence by sentence, their order rotated each
sentence and round, the fastest of ``--rounds`` kept per sentence and setting, after one warm-up, so other
jobs on a shared CPU slow them alike. RTF = sum of the times / audio seconds.

Quality, at 1 thread: ``mel_mcd`` (dB, :func:`edgeflow.passes.fm_nfe.mel_mcd`) of each setting's log-mels to the
reference solve (midpoint, NFE 32, no sway; same seeds) on all N sentences; and on the first
``--quality-sentences`` texts, for the ``--quality-settings`` (default: ten of them; each costs a vocoder run
and the scorers per sentence), the vocoded audio's MCD to the reference's audio, pocketsphinx WER and DNSMOS
P.808 (:func:`edgeflow.validate.tts.evaluate_voice`).

    PYTHONPATH=. python bench/bench_fm_tts.py --bundle BUNDLE [--sentences 10] [--threads 1,2] [--rounds 2]
        [--quality-sentences 3] [--quality-settings all|S,...] [--whole euler:1:0,euler:4:-1,midpoint:32:0]
        [--corpus-voice slt_hts] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REFERENCE = {"solver": "midpoint", "nfe": 32, "sway": 0.0}
SETTINGS = [{"solver": solver, "nfe": n, "sway": s} for solver, grid in (("euler", (1, 2, 4, 8, 16, 32)),
                                                                       ("midpoint", (2, 4, 8, 16, 32)))
            for n in grid for s in (0.0, -1.0)]


def key(s: Dict[str, Any]) -> str:
    return f"{s['solver']}:{s['nfe']}:{s['sway']:g}"


def parse_setting(text: str) -> Dict[str, Any]:
    solver, nfe, sway = text.split(":")
    return {"solver": solver, "nfe": int(nfe), "sway": float(sway)}


def timing(bundle: Path, ids: List[List[int]], threads: int, rounds: int, whole: List[Dict[str, Any]],
           keep_mels: bool):
    """(RTF per setting of the acoustic model, and of the whole voice for ``whole``; the first round's mels
    per setting and sentence when ``keep_mels``), from the best wall time per setting and sentence."""
    from edgeflow.runtime import Voice
    from edgeflow.validate.progress import Progress

    voice = Voice.load(bundle, threads=threads)
    jobs = [("mel", s) for s in SETTINGS] + [("whole", s) for s in whole]
    best = {(kind, key(s)): [float("inf")] * len(ids) for kind, s in jobs}
    mels: Dict[str, List[np.ndarray]] = {key(s): [None] * len(ids) for s in SETTINGS}
    voice.mel_ids(ids[0], seed=0, nfe=2)                                   # warm-up
    prog = Progress(f"timing at {threads} thread(s)", rounds * len(ids), print, "sentences")
    seconds = [0.0] * len(ids)
    for r in range(rounds):
        for k, x in enumerate(ids):
            shift = (r * len(ids) + k) % len(jobs)
            for kind, s in jobs[shift:] + jobs[:shift]:
                t0 = time.perf_counter()
                out = voice.mel_ids(x, seed=k, **s) if kind == "mel" else voice.speak_ids(x, seed=k, **s)
                dt = time.perf_counter() - t0
                best[(kind, key(s))][k] = min(best[(kind, key(s))][k], dt)
                if kind == "mel":
                    seconds[k] = out.shape[1] * voice.hop_length / voice.sample_rate
                    if keep_mels and r == 0:
                        mels[key(s)][k] = out
            prog.advance()
    total = sum(seconds)
    res = {"threads": threads, "audio_seconds": total,
           "rtf_acoustic": {key(s): sum(best[("mel", key(s))]) / total for s in SETTINGS},
           "rtf_whole": {key(s): sum(best[("whole", key(s))]) / total for s in whole}}
    return res, (mels if keep_mels else None)


def quality(bundle: Path, texts: List[str], mels, ref_mels, scored: List[Dict[str, Any]]) -> Dict[str, Any]:
    """mel MCD of every setting (all sentences); audio MCD, WER and DNSMOS of the ``scored`` settings on ``texts``."""
    from edgeflow.passes.fm_nfe import mel_mcd
    from edgeflow.runtime import Voice
    from edgeflow.validate.progress import Progress
    from edgeflow.validate.tts import evaluate_voice, mel_cepstral_distance

    voice = Voice.load(bundle, threads=1)
    whole = {"chunk_frames": None, "first_chunk_frames": None, "seed": 0}
    ref = evaluate_voice(voice, texts, keep_audio=True, **whole, **REFERENCE)
    ref_audio = [r["audio"] for r in ref["rows"]]
    out = {"reference": {"wer": ref["summary"]["wer"], "dnsmos": ref["summary"]["p808"]}}
    for s in SETTINGS:
        d = [mel_mcd(a, b) for a, b in zip(ref_mels, mels[key(s)])]
        out[key(s)] = {"mel_mcd": float(np.mean(d)), "mel_mcd_max": float(np.max(d))}
    prog = Progress("quality (WER, DNSMOS, audio MCD)", len(scored), print, "settings")
    for s in scored:
        res = evaluate_voice(voice, texts, keep_audio=True, **whole, **s)
        audio_mcd = [mel_cepstral_distance(a, r["audio"], voice.sample_rate) for a, r in zip(ref_audio, res["rows"])]
        out[key(s)].update(audio_mcd=float(np.mean(audio_mcd)), wer=res["summary"]["wer"],
                           dnsmos=res["summary"]["p808"])
        prog.advance()
    return out


def main() -> int:
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="an fmtts voice bundle (edgeflow export MODEL.pt --vocoder V)")
    ap.add_argument("--sentences", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quality-sentences", type=int, default=3)
    ap.add_argument("--whole", default="euler:1:0,euler:4:-1,midpoint:32:0",
                    help="settings (solver:nfe:sway) also timed as the whole voice (with the vocoder)")
    ap.add_argument("--quality-settings", default="euler:1:0,euler:1:-1,euler:4:0,euler:4:-1,euler:16:0,euler:16:-1,"
                    "euler:32:0,midpoint:4:0,midpoint:4:-1,midpoint:32:-1",
                    help="settings whose audio is scored (audio MCD, WER, DNSMOS; 'all': every setting)")
    ap.add_argument("--corpus-voice", default=None, metavar="SOURCE",
                    help="also score the corpus voice (e.g. slt_hts) on the quality sentences, same scorers, and "
                         "print issue 17's 'the demo speaks' check (WER <= +0.10, DNSMOS >= -0.3)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    whole = [parse_setting(w) for w in args.whole.split(",") if w]
    texts = sentences("evaluation")[:args.sentences]
    probe = Voice.load(bundle, threads=1)
    ids = [list(x) for t in texts for x in probe.sentence_ids(t)]
    out: Dict[str, Any] = {"bundle": str(bundle), "sentences": len(texts), "sentence_pieces": len(ids),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_average_start": os.getloadavg(), "machine": f"{platform.machine()}, "
                           f"{os.cpu_count()} cores", "reference": REFERENCE, "timing": []}
    mels = None
    for th in [int(t) for t in args.threads.split(",")]:
        res, m = timing(bundle, ids, th, args.rounds, whole, keep_mels=mels is None)
        mels = mels or m
        out["timing"].append(res)
    scored = SETTINGS if args.quality_settings == "all" else [parse_setting(q) for q in args.quality_settings.split(",")]
    out["quality"] = quality(bundle, texts[:args.quality_sentences], mels, mels[key(REFERENCE)], scored)
    out["quality_note"] = (f"mel_mcd: all {len(ids)} sentence pieces; audio_mcd, wer, dnsmos: the first "
                           f"{args.quality_sentences} texts, the --quality-settings only")
    if args.corpus_voice:
        from bench_corpus_voice import score

        out["corpus_voice"] = score(args.corpus_voice, texts[:args.quality_sentences])["summary"]
    out["load_average_end"] = os.getloadavg()
    print(f"| setting | " + " | ".join(f"RTF acoustic {t['threads']}t" for t in out["timing"]) +
          " | mel MCD dB | audio MCD dB | WER | DNSMOS |")
    for s in SETTINGS:
        q = out["quality"][key(s)]
        print(f"| {key(s)} | " + " | ".join(f"{t['rtf_acoustic'][key(s)]:.4f}" for t in out["timing"]) +
              f" | {q['mel_mcd']:.3f} | " + " | ".join(f"{q[m]:.3f}" if m in q else "-"
                                                     for m in ("audio_mcd", "wer", "dnsmos")) + " |")
    for t in out["timing"]:
        print(f"whole voice at {t['threads']} thread(s): " +
              ", ".join(f"{k} {v:.3f}" for k, v in t["rtf_whole"].items()))
    print(f"reference: {out['quality']['reference']}")
    if "corpus_voice" in out:
        cv, ref = out["corpus_voice"], out["quality"]["reference"]
        print(f"corpus voice {cv['source']}: WER {cv['wer']:.3f}, DNSMOS {cv['p808']:.3f}; the reference solve: "
              f"WER {ref['wer'] - cv['wer']:+.3f} (goal <= +0.10: {'met' if ref['wer'] - cv['wer'] <= 0.10 else 'not met'}), "
              f"DNSMOS {ref['dnsmos'] - cv['p808']:+.3f} (goal >= -0.3: "
              f"{'met' if ref['dnsmos'] - cv['p808'] >= -0.3 else 'not met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

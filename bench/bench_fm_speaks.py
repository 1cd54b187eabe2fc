"""Issue 17's "the demo speaks" check alone: fmtts voice bundles against the corpus voice, one run.

Scores the corpus voice (``--corpus-voice``, e.g. slt_hts, synthesised by Festival) and every setting of every
bundle on the same first N sentences of :mod:`edgeflow.data.tts_text` (``--texts``: the evaluation part, never
trained on, or the calibration part, to choose settings on without touching the evaluation sentences), with the
same scorers (:func:`edgeflow.validate.tts.evaluate_voice`: pocketsphinx corpus WER, mean DNSMOS P.808), whole
sentences, seed 0, one thread. A setting is ``solver:nfe:sway[:noise_scale[:length_scale[:noise_w]]]`` (noise
scale: the ODE's initial-noise temperature; length scale: durations; noise_w: the prosody flow's tau; the
bundle's defaults where left out). Prints, per bundle and setting, WER and DNSMOS and their differences to the
corpus voice against the goal (WER at most +0.10, DNSMOS at most 0.3 lower). No timing: bench_fm_tts.py
measures RTF; this is the quality check alone, cheap enough to compare checkpoints on 20 or more sentences.

``--heldout CORPUS`` scores the texts of that corpus's test split instead (the corpus a bundle was trained on:
held out from its training), leaving out every text that is also in the train or valid split of CORPUS or of
an ``--exclude-seen-in`` corpus (a warm start's), compared after lower-casing and dropping punctuation.

    PYTHONPATH=. python bench/bench_fm_speaks.py NAME=BUNDLE [NAME=BUNDLE ...] [--sentences 20]
        [--settings midpoint:32:0,midpoint:4:0,euler:4:-1] [--texts evaluation|calibration] [--corpus-voice slt_hts]
        [--heldout CORPUS [--exclude-seen-in CORPUS ...]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

WER_GOAL, DNSMOS_GOAL = 0.10, -0.3


def parse_setting(text: str) -> Dict[str, Any]:
    """``"solver:nfe:sway[:noise_scale[:length_scale[:noise_w[:guidance]]]]"`` -> synthesis options:
    bench_fm_tts's ``solver:nfe:sway`` parse plus the optional scales and guidance (the bundle's defaults for
    what is left out);
    ``"default"``: the bundle's defaults for everything."""
    from bench_fm_tts import parse_setting as ode_setting

    if text == "default":                                       # the bundle's own defaults
        return {}
    parts = text.split(":")
    if not 3 <= len(parts) <= 7:
        raise ValueError(f"setting {text!r}: expected solver:nfe:sway[:noise_scale[:length_scale[:noise_w"
                         "[:guidance]]]]")
    out = ode_setting(":".join(parts[:3]))
    out.update(zip(("noise_scale", "length_scale", "noise_w", "guidance"), map(float, parts[3:])))
    return out


def heldout_texts(corpus: Path, seen_in: List[Path]) -> List[str]:
    """Texts of ``corpus``'s test split not in the train / valid split of ``corpus`` or of ``seen_in``."""
    from edgeflow.data.ljspeech import load_split
    from edgeflow.validate.perceptual import normalize_text

    seen = {normalize_text(u.text) for c in [corpus, *seen_in] for split in ("train", "valid")
            for u in load_split(c, split)}
    return [u.text for u in load_split(corpus, "test") if normalize_text(u.text) not in seen]


def score_bundle(name: str, bundle: Path, texts: List[str], settings: List[str]) -> Dict[str, Any]:
    """WER / DNSMOS (and the per-sentence hypotheses) of each setting of one bundle on ``texts``."""
    from edgeflow.runtime import Voice
    from edgeflow.validate.tts import evaluate_voice

    voice = Voice.load(bundle, threads=1)
    out = {}
    for s in settings:
        res = evaluate_voice(voice, texts, chunk_frames=None, first_chunk_frames=None, seed=0, **parse_setting(s))
        out[s] = {"wer": res["summary"]["wer"], "p808": res["summary"]["p808"],
                  "hypotheses": [r["hypothesis"] for r in res["rows"]]}
        print(f"  {name} {s}: WER {out[s]['wer']:.3f}, DNSMOS {out[s]['p808']:.3f}", flush=True)
    return out


def verdict(row: Dict[str, Any], cv: Dict[str, Any]) -> str:
    """One table row's differences to the corpus voice and whether both goals hold."""
    dw, dd = row["wer"] - cv["wer"], row["p808"] - cv["p808"]
    ok = dw <= WER_GOAL and dd >= DNSMOS_GOAL
    return f"{row['wer']:.3f} ({dw:+.3f}) | {row['p808']:.3f} ({dd:+.3f}) | {'met' if ok else 'not met'}"


def main(argv=None) -> int:
    from edgeflow.data.tts_text import sentences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE (an fmtts voice bundle)")
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--settings", default="midpoint:32:0,midpoint:4:0,euler:4:-1")
    ap.add_argument("--corpus-voice", default="slt_hts")
    ap.add_argument("--texts", choices=("evaluation", "calibration"), default="evaluation",
                    help="which edgeflow.data.tts_text part (choose settings on calibration, report on evaluation)")
    ap.add_argument("--heldout", type=Path, default=None, metavar="CORPUS",
                    help="score the test split's texts of this corpus instead of the evaluation sentences")
    ap.add_argument("--exclude-seen-in", type=Path, action="append", default=[], metavar="CORPUS")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    pairs = [b.split("=", 1) for b in args.bundles]
    if any(len(p) != 2 for p in pairs):
        ap.error("each bundle is NAME=PATH")
    settings = [s for s in args.settings.split(",") if s]
    try:
        for s in settings:
            parse_setting(s)
    except ValueError as exc:
        ap.error(str(exc))
    if args.heldout is not None:
        texts = heldout_texts(args.heldout, args.exclude_seen_in)[:args.sentences]
        text_set = f"{args.heldout} test split, unseen in " + ", ".join(map(str, [args.heldout, *args.exclude_seen_in]))
    else:
        texts, text_set = sentences(args.texts)[:args.sentences], f"edgeflow.data.tts_text {args.texts}"
    print(f"{len(texts)} sentences: {text_set}")
    from bench_corpus_voice import score

    out: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sentences": len(texts),
                           "texts": text_set,
                           "load_average_start": os.getloadavg(), "seed": 0, "threads": 1}
    cv = score(args.corpus_voice, texts)
    out["corpus_voice"] = {**cv["summary"], "hypotheses": [r["hypothesis"] for r in cv["rows"]]}
    print(f"corpus voice {args.corpus_voice}: WER {cv['summary']['wer']:.3f}, DNSMOS {cv['summary']['p808']:.3f}")
    out["bundles"] = {name: {"path": path, **score_bundle(name, Path(path), texts, settings)} for name, path in pairs}
    out["load_average_end"] = os.getloadavg()
    print("\n| bundle | setting | WER (vs corpus voice) | DNSMOS P.808 (vs corpus voice) | speaks |")
    print("|---|---|---|---|---|")
    print(f"| corpus voice {args.corpus_voice} | | {cv['summary']['wer']:.3f} | {cv['summary']['p808']:.3f} | |")
    for name, res in out["bundles"].items():
        for s in settings:
            print(f"| {name} | {s} | {verdict(res[s], out['corpus_voice'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

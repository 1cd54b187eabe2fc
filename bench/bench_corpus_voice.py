"""WER and DNSMOS of a corpus voice (the Festival / flite voice a corpus was built from) on the evaluation
sentences, with the scorers every voice bundle gets (:func:`edgeflow.validate.tts.evaluate_voice`'s): the
baseline issue 17's "the demo speaks" goal is relative to.

    PYTHONPATH=. python bench/bench_corpus_voice.py [--source slt_hts] [--sentences 6] [--json out.json]

``bench/bench_fm_tts.py --corpus-voice slt_hts`` scores it in the same run as a voice bundle.

Sentences: the first N of ``edgeflow.data.tts_text.sentences("evaluation")``, as ``bench/bench_fm_tts.py``
takes them. Synthesis: the corpus builder's own command for that source (``edgeflow.data.corpus``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf


def score(source: str, texts) -> dict:
    """{"summary": {source, sentences, wer (corpus-level), p808 (mean)}, "rows": per sentence} of the corpus
    voice ``source`` on ``texts``, synthesized with the corpus builder's own command."""
    from edgeflow.data.corpus import synthesise
    from edgeflow.validate import perceptual
    from edgeflow.validate.tts import normalize_transcript

    rows, edits, words = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            wav = Path(tmp) / f"{i}.wav"
            synthesise(source, text, wav)
            audio, sr = sf.read(wav, dtype="float32")
            ref = normalize_transcript(text).split()
            hyp = perceptual.transcribe(audio, sr).split()
            e = perceptual.edit_distance(ref, hyp)
            edits, words = edits + e, words + len(ref)
            rows.append({"text": text, "wer": e / max(len(ref), 1), "hypothesis": " ".join(hyp),
                         "dnsmos": perceptual.dnsmos(audio, sr)})
    summary = {"source": source, "sentences": len(rows), "wer": edits / max(words, 1),
               "p808": float(np.mean([r["dnsmos"]["p808"] for r in rows]))}
    return {"summary": summary, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="slt_hts")
    p.add_argument("--sentences", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from edgeflow.data.corpus_sources import SOURCES
    from edgeflow.data.tts_text import sentences

    if args.source not in SOURCES:
        print(f"error: unknown source {args.source!r} (one of {', '.join(sorted(SOURCES))})", file=sys.stderr)
        return 2
    res = score(args.source, sentences("evaluation")[:args.sentences])
    print(json.dumps(res["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

import soundfile as sf


class CorpusVoice:
    """The corpus builder's voice ``source`` as a voice :func:`edgeflow.validate.tts.evaluate_voice` can score:
    ``speak_stream(text)`` synthesizes with the builder's own command and yields the whole sentence;
    ``sample_rate`` is the voice's native rate (set by the first sentence)."""

    def __init__(self, source: str, scratch: Path):
        self.source, self.scratch, self.sample_rate = source, scratch, None

    def speak_stream(self, text: str, **_):
        from edgeflow.data.corpus import synthesise

        wav = self.scratch / "sentence.wav"
        synthesise(self.source, text, wav)
        audio, self.sample_rate = sf.read(wav, dtype="float32")
        yield audio


def score(source: str, texts) -> dict:
    """:func:`edgeflow.validate.tts.evaluate_voice` of the corpus voice ``source`` on ``texts`` (same scorers and
    summary as any voice bundle: corpus-level ``wer``, mean ``p808``, ...), with ``source`` in the summary."""
    from edgeflow.validate.tts import evaluate_voice

    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate_voice(CorpusVoice(source, Path(tmp)), texts)
    res["summary"] = {"source": source, **res["summary"]}
    return res


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

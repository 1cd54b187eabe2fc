"""``edgeflow corpus build|info|pairs``: build the offline synthetic corpus, describe a corpus, or write vocoder
training pairs from a voice's own mels (:mod:`edgeflow.pipeline_pairs`)."""

from __future__ import annotations

import argparse


def add_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``corpus`` command (with ``build`` and ``info``) to the top-level subparsers."""
    from edgeflow.cli.args import int_range, positive_float, seed_int

    parser = subparsers.add_parser(
        "corpus", help="build or inspect an LJSpeech-layout speech corpus",
        description="Build a synthetic English corpus offline from Debian voices, or describe "
                    "an LJSpeech-layout corpus.")
    sub = parser.add_subparsers(dest="corpus_command", metavar="{build,info,pairs}", required=True)
    build = sub.add_parser("build", help="synthesise a corpus with transcripts (offline)")
    build.add_argument("--out", required=True, help="output folder (absent, empty or a corpus)")
    build.add_argument("--minutes", required=True, type=positive_float, help="minutes of speech")
    build.add_argument("--sources", default=None,
                       help="comma-separated voices (default: slt_hts,kal_diphone,flite_slt,"
                            "flite_rms,flite_awb,flite_kal16; 'piper' is opt-in)")
    build.add_argument("--seed", type=seed_int, default=0, help="text and split seed (default 0)")
    build.add_argument("--sample-rate", type=int_range(4000, 192000), default=22050, help="Hz (default 22050)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="utterances, minutes, speakers and split of a corpus")
    info.add_argument("dir", help="corpus folder (metadata.csv + wavs/)")
    pairs = sub.add_parser("pairs", help="vocoder training pairs: a voice's log-mels and a teacher vocoder's audio",
                           description="Voice every sentence of a corpus split with flow-matching voice bundles "
                                       "and write (log-mel, teacher vocoder audio) pairs for `edgeflow train "
                                       "vocos-small --set pairs=OUT`.")
    pairs.add_argument("--voice", action="append", required=True, help="fmtts voice bundle (repeatable)")
    pairs.add_argument("--teacher", required=True, help="mel vocoder model.pt (e.g. an imported HiFi-GAN)")
    pairs.add_argument("--data", required=True, help="corpus folder whose transcripts are voiced")
    pairs.add_argument("--split", default="train", help="corpus split (default train)")
    pairs.add_argument("--seeds", default="0", help="comma-separated noise seeds (default 0)")
    pairs.add_argument("--threads", type=int_range(1, 256), default=None, help="PyTorch threads")
    pairs.add_argument("--out", required=True, help="output folder (absent or empty)")
    pairs.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def _info(corpus_dir: str) -> int:
    import json
    from collections import Counter
    from pathlib import Path

    import soundfile as sf

    from edgeflow.core.errors import CorpusError, short_reason
    from edgeflow.data.ljspeech import SPLITS_FILE, ensure_split, load_corpus

    utts = load_corpus(corpus_dir)
    seconds: Counter = Counter()
    rates: Counter = Counter()
    for u in utts:
        try:
            meta = sf.info(str(u.wav))
        except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
            raise CorpusError(f"{u.wav}: unreadable wav ({short_reason(exc)})") from None
        seconds[u.speaker] += meta.frames / meta.samplerate
        rates[meta.samplerate] += 1
    counts = Counter(u.speaker for u in utts)
    total = sum(seconds.values())
    print(f"corpus      {Path(corpus_dir)}")
    print(f"utterances  {len(utts)}")
    print(f"minutes     {total / 60:.2f}")
    print(f"sample rate {', '.join(f'{sr} Hz ({n})' for sr, n in sorted(rates.items()))}")
    print(f"speakers    {len(counts)}")
    for spk in sorted(counts):
        print(f"  {spk:<14} {counts[spk]:>6} utts {seconds[spk] / 60:8.2f} min")
    src = Path(corpus_dir) / "sources.json"
    if src.is_file():
        data = json.loads(src.read_text(encoding="utf-8"))
        print(f"built by    {data.get('builder')} (seed {data.get('seed')}); {data.get('text')}")
    if (Path(corpus_dir) / SPLITS_FILE).is_file():
        split = ensure_split(corpus_dir)
        print("split       " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    else:
        print("split       none yet (splits.json is written on first use)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``corpus build``, ``corpus info`` or ``corpus pairs``. Returns the exit code."""
    if args.corpus_command == "info":
        return _info(args.dir)
    if args.corpus_command == "pairs":
        return _pairs(args)
    from edgeflow.cli.args import check_out_dir
    from edgeflow.data.corpus import DEFAULT_SOURCES, build_corpus
    from edgeflow.data.ljspeech import load_corpus

    sources = (tuple(s.strip() for s in args.sources.split(",") if s.strip())
               if args.sources else DEFAULT_SOURCES)
    check_out_dir(args.out)
    out = build_corpus(args.out, minutes=args.minutes, sources=sources,
                       sample_rate=args.sample_rate, seed=args.seed,
                       progress=not args.no_progress)
    print(f"wrote {out}: {len(load_corpus(out))} utterances")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from edgeflow.core.errors import InputError
    from edgeflow.pipeline_pairs import corpus_texts, write_vocoder_pairs

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds or min(seeds) < 0:
        raise InputError(f"--seeds must name at least one seed >= 0, got {args.seeds!r}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    texts = corpus_texts(args.data, args.split)
    info = write_vocoder_pairs(args.voice, args.teacher, texts, args.out, seeds, progress=not args.no_progress,
                               meta={"corpus": str(args.data), "split": args.split})
    print(f"wrote {args.out}: {info['pairs']} pairs, {info['seconds'] / 60:.1f} minutes")
    return 0

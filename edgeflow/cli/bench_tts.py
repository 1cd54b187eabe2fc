"""``edgeflow bench VOICE [--against OTHER]`` for text-to-speech: dispatched from :mod:`edgeflow.cli.bench`."""

from __future__ import annotations


def run_tts(args) -> int:
    """Run :func:`edgeflow.bench_tts.bench_tts` with the bench arguments and print the headline."""
    from edgeflow.bench_tts import bench_tts
    from edgeflow.core.errors import ConfigError

    if args.data is not None:
        raise ConfigError("--data does not apply to a text-to-speech bench (a voice speaks the evaluation "
                          "sentences of edgeflow.data.tts_text; choose how many with --n-eval)")
    report = bench_tts(args.subject, args.out, against=args.against, n_eval=args.n_eval or 20,
                       threads=args.threads, seed=args.seed, repeats=args.repeats)
    parts = [f"{s['kind']} RTF {s['summary']['rtf']:.3f}" + (f", WER {s['summary']['wer']:.3f}"
                                                             if "wer" in s["summary"] else "")
             for s in report["systems"]]
    c = report.get("comparison")
    if c:
        parts.append(f"RTF ratio {c['rtf_ratio']:.3f}")
    print(f"report: {args.out}/report.html ({'; '.join(parts)})")
    return 0

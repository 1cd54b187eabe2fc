"""``edgeflow bench BUNDLE_OR_MODEL [--against OTHER] --data DIR -o REPORT/``: the report without optimizing."""

from __future__ import annotations


def add_arguments(sub) -> None:
    from edgeflow.cli.args import int_range, model_source, positive_int, seed_int

    p = sub.add_parser("bench", help="quality and speed report for a bundle or model.pt, without optimizing")
    p.add_argument("subject", type=model_source, help="bundle directory or model.pt (a voice: VITS bundle, VITS model.pt or Piper .onnx)")
    p.add_argument("--against", default=None, type=model_source, help="reference model.pt or bundle (default: the subject itself); for a voice also a stock Piper VOICE.onnx, run in bare onnxruntime")
    p.add_argument("--data", default=None, help="held-out clips (corpus folder or folder of wavs)")
    p.add_argument("--target", default="cpu", help="target profile for the estimate")
    p.add_argument("--n-eval", type=positive_int, default=None,
                   help="evaluation clips (default 4) or, for a voice, evaluation sentences (default 20)")
    p.add_argument("--repeats", type=int_range(0, 100), default=2,
                   help="voices: timed runs after the scored one, systems interleaved, fastest kept (default 2)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("-o", "--out", required=True, help="report directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.cli.args import check_out_dir
    from edgeflow.bench import bench

    check_out_dir(args.out)
    from edgeflow.validate.tts_systems import task_of

    if "tts" in (task_of(args.subject), task_of(args.against) if args.against else None):
        from edgeflow.cli.bench_tts import run_tts

        return run_tts(args)
    report = bench(args.subject, args.out, against=args.against, data=args.data, target=args.target,
                   n_eval=args.n_eval or 4, threads=args.threads, seed=args.seed)
    print(f"report: {args.out}/report.html (RTF 4 s: {report['cost']['rtf_by_length']['4']['median']:.3f})")
    return 0

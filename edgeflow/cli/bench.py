"""``edgeflow bench BUNDLE_OR_MODEL [--against OTHER] --data DIR -o REPORT/``: the report without optimizing."""

from __future__ import annotations


def add_arguments(sub) -> None:
    p = sub.add_parser("bench", help="quality and speed report for a bundle or model.pt, without optimizing")
    p.add_argument("subject", help="bundle directory or model.pt")
    p.add_argument("--against", default=None, help="reference model.pt or bundle (default: the subject itself)")
    p.add_argument("--data", default=None, help="held-out clips (corpus folder or folder of wavs)")
    p.add_argument("--target", default="cpu", help="target profile for the estimate")
    p.add_argument("--n-eval", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="report directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.validate.bench import bench

    report = bench(args.subject, args.out, against=args.against, data=args.data, target=args.target,
                   n_eval=args.n_eval, threads=args.threads, seed=args.seed)
    print(f"report: {args.out}/report.html (RTF 4 s: {report['cost']['rtf_by_length']['4']['median']:.3f})")
    return 0

"""``edgeflow optimize MODEL.pt --target T [--recipe R] [--max-drop ...] [--calib DIR] -o OUT/``."""

from __future__ import annotations


def add_arguments(sub) -> None:
    p = sub.add_parser("optimize", help="optimize a model for a target: passes + quality gate -> bundle + report",
                       description="Run the target's recipe (distill, prune, quantize, reduce flows, export ...) "
                                   "with a quality gate after each pass, then write OUT/bundle, OUT/report.json, "
                                   "OUT/report.html and OUT/samples. Re-running the same command resumes.")
    p.add_argument("model", help="model.pt (edgeflow checkpoint)")
    p.add_argument("--target", default="cpu", help="target profile: cpu, jetson-orin-nano, jetson-agx-orin, gpu")
    p.add_argument("--recipe", default=None, help="quality | balanced | fast (default: the target's)")
    p.add_argument("--max-drop", default=None, metavar="BUDGET",
                   help="allowed quality drops vs the unoptimized model, e.g. pesq=0.1,mel_l1=0.25")
    p.add_argument("--data", default=None, help="held-out clips: a corpus folder (test split) or a folder of wavs "
                                                "(default: the eval/ folder beside the model)")
    p.add_argument("--calib", default=None, help="calibration set folder (quantization)")
    p.add_argument("--n-eval", type=int, default=4, help="clips used for gating and the report")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for onnxruntime and for torch (distillation, evaluation); default: the "
                        "target's for onnxruntime, torch's own default for torch")
    p.add_argument("--seed", type=int, default=0, help="noise seed for every synthesis")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.pipeline import optimize

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)   # torch's default (every core) spins against a busy neighbour

    report = optimize(args.model, args.out, target=args.target, recipe=args.recipe, budget=args.max_drop,
                      data=args.data, calib=args.calib, n_eval=args.n_eval, seed=args.seed, threads=args.threads)
    q = report["quality"]["optimized_vs_ground_truth"]
    print(f"budget {'held' if report['budget_held'] else 'BROKEN'}; RTF (4 s) "
          f"{report['cost']['rtf_by_length']['4']['median']:.3f}; PESQ {q.get('pesq', float('nan')):.3f}; "
          f"report: {args.out}/report.html")
    return 0

"""``edgeflow optimize MODEL.pt --target T [--recipe R] [--max-drop ...] [--calib DIR] -o OUT/``."""

from __future__ import annotations


def add_arguments(sub) -> None:
    from edgeflow.cli.args import model_source, positive_int, seed_int

    p = sub.add_parser("optimize", help="optimize a model for a target: passes + quality gate -> bundle + report",
                       description="Run the target's recipe (distill, prune, quantize, reduce flows, export ...) "
                                   "with a quality gate after each pass, then write OUT/bundle, OUT/report.json, "
                                   "OUT/report.html and OUT/samples. Re-running the same command resumes.")
    p.add_argument("model", type=model_source, help="model.pt (edgeflow checkpoint), or a voice: a Piper VOICE.onnx (+ .onnx.json) "
                                 "or a VITS model.pt (text-to-speech recipes, edgeflow.pipeline_tts), or a "
                                 "flow-matching TTS (fmtts) model.pt with --vocoder")
    p.add_argument("--target", default="cpu", help="target profile: cpu, jetson-orin-nano, jetson-agx-orin, gpu")
    p.add_argument("--recipe", default=None, help="quality | balanced | fast (default: the target's)")
    p.add_argument("--max-drop", default=None, metavar="BUDGET",
                   help="allowed quality drops vs the unoptimized model, e.g. pesq=0.1,mel_l1=0.25")
    p.add_argument("--data", default=None, help="held-out clips: a corpus folder (test split) or a folder of wavs "
                                                "(default: the eval/ folder beside the model)")
    p.add_argument("--calib", default=None, help="calibration set folder (quantization; distillation data when "
                                                 "there is no corpus); default: the model's own set under "
                                                 "calibration/ when there is one")
    p.add_argument("--n-eval", type=positive_int, default=None,
                   help="clips used for gating and the report (default 4; a VITS voice: evaluation sentences, "
                        "default all 20; a flow-matching voice: 3)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for onnxruntime and for torch (distillation, evaluation); default: the "
                        "target's for onnxruntime, torch's own default for torch")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed for every synthesis")
    p.add_argument("--allow-skip", action="store_true",
                   help="run even when a distill/prune/reduce_flows pass has no training data: such passes are "
                        "recorded as skipped (default: refuse before the first pass)")
    p.add_argument("--clean-work", action="store_true",
                   help="remove OUT/.work (resume state, intermediate models and bundles) once the run is done")
    p.add_argument("--vocoder", default=None, metavar="VOCODER",
                   help="flow-matching TTS (fmtts) models only, and required for them: the mel-only vocoder "
                        "bundle directory or HiFi-GAN model.pt the voice bundle is built with (recipes: the "
                        "target's recipes_fmtts, edgeflow.pipeline_fmtts)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.cli.args import check_out_dir
    from edgeflow.pipeline import optimize

    check_out_dir(args.out)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)   # torch's default (every core) spins against a busy neighbour

    report = optimize(args.model, args.out, target=args.target, recipe=args.recipe, budget=args.max_drop,
                      data=args.data, calib=args.calib, n_eval=args.n_eval, seed=args.seed, threads=args.threads,
                      allow_skip=getattr(args, "allow_skip", False), clean_work=getattr(args, "clean_work", False),
                      vocoder=getattr(args, "vocoder", None))
    if report.get("family") == "fmtts":
        from edgeflow.pipeline_fmtts import summary_line as fm_summary

        print(fm_summary(report, args.out))
    elif report.get("task") == "tts":      # the voice pipeline's report says so; no second look at the model
        from edgeflow.pipeline_tts_out import summary_line as tts_summary

        print(tts_summary(report, args.out))
    else:
        print(summary_line(report, args.out))
    return 0


def summary_line(report, out) -> str:
    """The closing console line: budget, speed, PESQ, passes skipped or rolled back, sanity warning."""
    q = report["quality"]["optimized_vs_ground_truth"]
    line = (f"budget {'held' if report['budget_held'] else 'BROKEN'}; RTF (4 s) "
            f"{report['cost']['rtf_by_length']['4']['median']:.3f}; PESQ {q.get('pesq', float('nan')):.3f}")
    for status in ("skipped", "rolled_back"):
        names = [p["name"] for p in report.get("passes", []) if p.get("status") == status]
        if names:
            line += f"; {status.replace('_', ' ').upper()}: {', '.join(names)}"
    if (report.get("sanity") or {}).get("warning"):
        line += "; WARNING: " + report["sanity"]["warning"]
    return line + f"; report: {out}/report.html"

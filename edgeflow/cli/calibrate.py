"""``edgeflow calibrate --data CORPUS --model MODEL.pt -o calibration/NAME/``: a calibration set for quantization."""

from __future__ import annotations


def add_arguments(sub) -> None:
    from edgeflow.cli.args import positive_float, positive_int, seed_int

    p = sub.add_parser("calibrate", help="build a calibration set (training-split log-mels + noise seeds)",
                       description="Pick N utterances of the corpus's train split (never test; spread over speakers "
                                   "and lengths, fixed seed), store their log-mels with the model's front-end and "
                                   "their noise seeds in OUT/mels.npz with a hashed OUT/manifest.json.")
    p.add_argument("--data", required=True, metavar="CORPUS", help="LJSpeech-layout corpus folder")
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="the model the set is for (its mel front-end)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="calibration set directory to create")
    p.add_argument("--n", type=positive_int, default=16, help="utterances (default 16)")
    p.add_argument("--seed", type=seed_int, default=0, help="selection and noise seed (default 0)")
    p.add_argument("--max-seconds", type=positive_float, default=1.0,
                   help="longest excerpt per utterance (default 1.0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.cli.args import check_out_file
    from edgeflow.core.io import sha256_file
    from edgeflow.models.checkpoint import load_model
    from edgeflow.quant.calibration import build_calibration_set

    check_out_file(args.output, replace_dir=True)
    model, _ = load_model(args.model)
    info = {"family": model.family, "file": str(args.model), "sha256": sha256_file(args.model)}
    m = build_calibration_set(args.data, args.output, model.config.mel, n=args.n, seed=args.seed,
                              max_seconds=args.max_seconds, multiple=int(model.length_multiple),
                              model_info=info, overwrite=args.overwrite)
    print(f"wrote {args.output}: {m['count']} utterances ({m['seconds']:.1f} s) from the {m['source']['split']} "
          f"split, {len(m['speakers'])} speakers, {m['mel']['n_mels']} mels at {m['mel']['sample_rate']} Hz")
    return 0

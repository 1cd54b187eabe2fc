"""``edgeflow train RECIPE --data DIR --out RUN``: maximum-likelihood training of the flow vocoders, the VITS and
flow-matching TTS objectives, or an iSTFT vocoder's reconstruction objective (torchrun for DDP)."""

from __future__ import annotations


def add_arguments(sub) -> None:
    from edgeflow.cli.args import device_name, positive_int

    p = sub.add_parser("train", help="train a flow vocoder, a VITS or flow-matching voice, or an iSTFT vocoder",
                       description="Train RECIPE (a shipped recipe name, see `edgeflow models`, or a JSON path) "
                                   "on a corpus in LJSpeech layout. Multi-GPU / multi-node: launch with torchrun.")
    p.add_argument("recipe", help="shipped recipe name (edgeflow/recipes/NAME.json) or a recipe JSON path")
    p.add_argument("--data", required=True, help="corpus folder (metadata.csv + wavs/)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.csv)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="stop after this many steps (default: the recipe's)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/train_state.pt")
    p.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads on CPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train setting, e.g. --set batch_size=4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _overrides(items):
    import json

    from edgeflow.core.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args) -> int:
    import json

    import torch

    from pathlib import Path

    from edgeflow.cli.args import check_device, check_out_dir
    from edgeflow.core.errors import CorpusError
    from edgeflow.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if recipe.family == "vits":          # the VITS objective (MAS, GAN) on the same loop, its own run hooks
        from edgeflow.train.vits_trainer import VitsTrainer as Trainer
    elif recipe.family == "fmtts":       # OT-CFM + prior + prosody flow (MAS) on the same loop
        from edgeflow.train.fmtts_trainer import FmTtsTrainer as Trainer
    else:
        from edgeflow.train.trainer import Trainer
    if args.set:
        recipe.train = recipe.train.replace(**_overrides(args.set))
    device = check_device(args.device)
    check_out_dir(args.out)
    if not (Path(args.data) / "metadata.csv").is_file():
        raise CorpusError(f"{args.data}: not a corpus folder (no metadata.csv)")
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = Trainer(recipe, args.data, args.out, device=device, progress=not args.no_progress)
    try:
        summary = trainer.train(steps=args.steps, resume=args.resume)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # gloo's threads must be joined before exit, or a rank can abort ("terminate called without
            # an active exception") after training finished
            torch.distributed.destroy_process_group()
    if trainer.rank == 0:
        print(json.dumps(summary))
    return 0

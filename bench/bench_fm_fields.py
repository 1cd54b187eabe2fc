"""Two (or more) fmtts vector fields side by side: validation CFM loss of their models and the cost of their
exported fields (the U-Net-or-DiT comparison of bench/results/fm_tts.md).

* ``--models NAME=MODEL.pt ...`` with ``--corpus DIR``: validation CFM loss on the corpus' ``valid`` split:
  conditioning from each model's own encoder on the MAS path (as in training), whole utterances, the loss at
  ``--times`` (default 0.05, 0.15, ..., 0.95) with noise from ``--seed``, averaged over times and utterances
  (frames and bands weighted); also the prior loss (the encoder's) for reference. The valid split's features
  are cached in ``--cache`` (default: the model's folder, where a training run keeps them).
* ``--bundles NAME=BUNDLE ...``: at ``--threads`` (default 1) onnxruntime threads, one call of each bundle's field
  graph on 128 and 432 frames (median of ``--calls``, the bundles interleaved call by call), and the acoustic
  model's RTF (:meth:`FmVoice.mel_ids`: text graph + field calls; wall / audio) at NFE 1, 2, 4, 8 with guidance
  ``--guidance`` (default 0.75) on the first ``--sentences`` evaluation sentences, interleaved sentence by sentence,
  fastest of ``--rounds``.

    PYTHONPATH=. python bench/bench_fm_fields.py --models unet=RUN1/model.pt dit=RUN2/model.pt \\
        --corpus corpus-slt-120 --bundles unet=B1 dit=B2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
TIMES = tuple(round(0.05 + 0.1 * k, 2) for k in range(10))


def validation_cfm(model: Any, items: Sequence[Any], times: Sequence[float], seed: int, batch: int = 8
                   ) -> Dict[str, float]:
    """{"cfm", "prior", "utterances", "frames"} of ``model`` (an FmTts) on feature ``items`` (see the module
    docstring)."""
    import torch
    import torch.nn.functional as F

    from edgeflow.models.fmtts.model import pad_frames
    from edgeflow.train.fmtts import FmTtsObjective, cfm_loss
    from edgeflow.train.fmtts_trainer import collate

    c = model.config
    sums = {"cfm": 0.0, "prior": 0.0, "weight": 0.0}
    gen = torch.Generator().manual_seed(seed)
    for k in range(0, len(items), batch):
        with torch.no_grad():
            a = FmTtsObjective.aligned(model, collate(list(items[k:k + batch]), c, seed))
            y, cond, y_mask = a["y"], a["cond"], a["y_mask"]
            weight = float(y_mask.sum()) * c.n_mels
            sums["prior"] += float(a["prior"]) * weight
            pad = pad_frames(y.shape[-1], c.frame_multiple) - y.shape[-1]
            y, cond, y_mask = (F.pad(v, (0, pad)) for v in (y, cond, y_mask))
            for t in times:
                z = torch.randn(y.shape, generator=gen)
                tt = torch.full((y.shape[0],), float(t))
                sums["cfm"] += float(cfm_loss(model, y, cond, y_mask, tt, z)) * weight / len(times)
            sums["weight"] += weight
    return {"cfm": sums["cfm"] / sums["weight"], "prior": sums["prior"] / sums["weight"],
            "utterances": len(items), "frames": int(sums["weight"] / c.n_mels)}


def field_calls(voices: Dict[str, Any], frames: int, calls: int, seed: int = 0) -> Dict[str, float]:
    """Median seconds of one call of each voice's field graph (batch 1) on ``frames`` frames, interleaved."""
    rng = np.random.default_rng(seed)
    times: Dict[str, List[float]] = {n: [] for n in voices}
    feeds = {}
    for n, v in voices.items():
        feeds[n] = {"x": rng.standard_normal((1, v.n_mels, frames)).astype(np.float32),
                    "cond": rng.standard_normal((1, v.n_mels + 1, frames)).astype(np.float32),
                    "mask": np.ones((1, 1, frames), np.float32), "t": np.array([0.5], np.float32)}
        v.field.run(None, feeds[n])                           # warm-up
    for _ in range(calls):
        for n, v in voices.items():
            t0 = time.perf_counter()
            v.field.run(None, feeds[n])
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(ts) for n, ts in times.items()}


def acoustic_rtf(voices: Dict[str, Any], ids: List[List[int]], nfe: int, guidance: float, rounds: int
                 ) -> Dict[str, float]:
    """Acoustic-model RTF (wall / audio) of each voice at ``nfe`` Euler steps, sway -1, ``guidance``."""
    best: Dict[str, List[float]] = {n: [float("inf")] * len(ids) for n in voices}
    audio: Dict[str, float] = {n: 0.0 for n in voices}
    for r in range(rounds):
        for k, x in enumerate(ids):
            for n, v in voices.items():
                t0 = time.perf_counter()
                mel = v.mel_ids(x, seed=k, nfe=nfe, solver="euler", sway=-1.0, guidance=guidance)
                best[n][k] = min(best[n][k], time.perf_counter() - t0)
                if r == 0:
                    audio[n] += mel.shape[-1] * v.hop_length / v.sample_rate
    return {n: sum(best[n]) / audio[n] for n in voices}


def quality(args) -> Dict[str, Any]:
    from edgeflow.data.fmtts import corpus_features
    from edgeflow.models.checkpoint import load_model

    out = {}
    for name, path in (m.split("=", 1) for m in args.models):
        model, info = load_model(path, family="fmtts")
        model.eval()
        cache = Path(args.cache) if args.cache else Path(path).parent
        items = corpus_features(args.corpus, "valid", model.config, cache, 12.0, print)[0]
        meta = info.get("meta") or {}
        out[name] = dict(validation_cfm(model, items, args.times, args.seed), decoder=model.config.decoder,
                         step=meta.get("step"), train_seconds=meta.get("train_seconds"),
                         field_parameters=sum(p.numel() for p in model.decoder.parameters()))
        print(f"{name}: {out[name]}", flush=True)
    return out


def cost(args) -> Dict[str, Any]:
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice

    voices = {n: Voice.load(Path(p), threads=args.threads) for n, p in (b.split("=", 1) for b in args.bundles)}
    probe = next(iter(voices.values()))
    ids = [list(x) for t in sentences("evaluation")[:args.sentences] for x in probe.sentence_ids(t)]
    out: Dict[str, Any] = {"field_call_s": {f: field_calls(voices, f, args.calls) for f in (128, 432)},
                           "acoustic_rtf": {}}
    for nfe in (1, 2, 4, 8):
        out["acoustic_rtf"][nfe] = acoustic_rtf(voices, ids, nfe, args.guidance, args.rounds)
        print(f"NFE {nfe}: " + ", ".join(f"{n} {r:.4f}" for n, r in out["acoustic_rtf"][nfe].items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[], help="NAME=MODEL.pt (fmtts)")
    ap.add_argument("--corpus", default=None, help="the corpus whose valid split scores --models")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: each model's folder)")
    ap.add_argument("--bundles", nargs="*", default=[], help="NAME=BUNDLE (fmtts)")
    ap.add_argument("--times", type=float, nargs="+", default=list(TIMES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--sentences", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=0.75)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.models and not args.corpus:
        ap.error("--models needs --corpus")
    if any("=" not in m for m in args.models + args.bundles):
        ap.error("each model / bundle is NAME=PATH")
    import torch

    torch.set_num_threads(args.threads)
    out: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_average_start": os.getloadavg(), "threads": args.threads}
    if args.models:
        out["validation"] = quality(args)
    if args.bundles:
        out["cost"] = cost(args)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

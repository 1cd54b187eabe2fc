"""Prosody of an fmtts checkpoint: does the flow predictor over-smooth less than the L2 predictor?

What arXiv 2307.16679 reports, on phone-level features of held-out utterances (``edgeflow.train.fmtts_eval``):
the standard deviation of the generated log-duration and log-f0 against the recordings' (``spread``: below 1 is
over-smoothed) and the Jensen-Shannon divergence of their distributions, for the L2 predictor and the flow at
several temperatures tau. The recordings' phone features come from the checkpoint's own monotonic alignment
(as in training), so an early checkpoint's alignment also shapes the "recorded" row.

    PYTHONPATH=. python bench/bench_fm_prosody.py --model RUN/model.pt --corpus CORPUS --split test \\
        --cache /tmp/fm_prosody --taus 0,0.333,0.667,1 [--exclude-seen-in WARM_START_CORPUS] \\
        --json bench/results/fm_prosody_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def table(report, taus) -> str:
    """A markdown table of std / spread / JSD per system and feature."""
    rows = ["| system | log-duration std | spread | JSD | log-f0 std | spread | JSD |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ["recorded", "l2", *[f"flow@{t:g}" for t in taus]]:
        d, f = report[name]["log_duration"], report[name]["log_f0"]
        rows.append(f"| {name} | {d['std']:.3f} | {d['spread']:.2f} | {d['jsd']:.3f} | {f['std']:.3f} | "
                    f"{f['spread']:.2f} | {f['jsd']:.3f} |")
    return "\n".join(rows)


def drop_seen(items, corpora, config):
    """``items`` without those whose phoneme ids equal those of a train / valid text of one of ``corpora``."""
    from edgeflow.data.fmtts import text_ids
    from edgeflow.data.ljspeech import load_split
    from edgeflow.text import phonemes_to_ids, phonemize

    seen = set()
    for corpus in corpora:
        for split in ("train", "valid"):
            for utt in load_split(corpus, split):
                ids = text_ids(utt.text, config, phonemize, phonemes_to_ids)
                if ids is not None:
                    seen.add(tuple(ids.tolist()))
    return [it for it in items if tuple(it.ids.tolist()) not in seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an fmtts model.pt (a training run's checkpoint)")
    ap.add_argument("--corpus", type=Path, required=True, help="the corpus the model was trained on (its split)")
    ap.add_argument("--split", default="test", help="held-out split (default test)")
    ap.add_argument("--cache", type=Path, required=True, help="feature cache directory (f0 tracking is slow)")
    ap.add_argument("--taus", default="0,0.333,0.667,1", help="flow temperatures, comma-separated")
    ap.add_argument("--exclude-seen-in", type=Path, action="append", default=[], metavar="CORPUS",
                    help="also leave out utterances whose text is in this corpus's train or valid split (e.g. "
                         "the corpus of a warm start); repeatable")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args()

    import torch

    from edgeflow.data.fmtts import corpus_features
    from edgeflow.models.checkpoint import load_model
    from edgeflow.train.fmtts_eval import prosody_report

    torch.set_num_threads(1)
    taus = [float(t) for t in args.taus.split(",")]
    model, info = load_model(args.model)
    args.cache.mkdir(parents=True, exist_ok=True)
    items, _ = corpus_features(args.corpus, args.split, model.config, args.cache, log=print)
    seen = list(args.exclude_seen_in)
    if seen:
        before = len(items)
        items = drop_seen(items, seen, model.config)
        print(f"left out {before - len(items)} of {before} {args.split} utterances whose text is in the "
              f"train/valid split of {', '.join(map(str, seen))}")
    t0 = time.time()
    report = prosody_report(model, items, taus=taus)
    step = (info.get("meta") or {}).get("step")
    print(f"{len(items)} {args.split} utterances, {report['phones']} phones; checkpoint step {step}; "
          f"{time.time() - t0:.1f} s")
    print(table(report, taus))
    if args.json:
        out = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "model_step": step,
               "split": args.split, "excluded_seen_in": [str(c) for c in seen], "utterances": len(items),
               "taus": taus, "report": report}
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

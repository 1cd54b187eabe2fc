"""One flow-matching (fmtts) pass on a checkpoint, alone: export the voice bundle (once per work folder), apply
the pass with the given options, print its details (the pass measures its own gate side by side: mel MCD of the
new bundle to the old one, or to the reference solve and step-cutting for ``fm_reflow``, and the acoustic
model's interleaved time for ``fm_prune`` / ``fm_quantize``).

Usage::

    PYTHONPATH=. python bench/bench_fm_pass.py --model CKPT.pt --vocoder HIFIGAN.pt --work DIR --pass fm_prune \
        [--options '{"ratio": 0.75, "steps": 0}']
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from edgeflow.export.fmtts import export_fmtts_bundle
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--vocoder", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--pass", dest="name", required=True, help="fm_prune, fm_reflow, fm_quantize, fm_nfe")
    ap.add_argument("--options", default="{}", help="the pass's options as JSON")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, _ = load_model(args.model, family="fmtts")
    bundle = args.work / "bundle-00-export"
    if not bundle.exists():
        export_fmtts_bundle(model, args.vocoder, bundle)
    art = Artifact(model=model, reference=model, bundle_dir=bundle, history=[{"name": "export"}])
    t0 = time.time()
    rec = apply_pass(art, make_config(args.name, json.loads(args.options)), PassContext(work_dir=args.work))
    details = rec["details"]
    for key in ("train", "distill", "table"):
        if isinstance(details.get(key), dict):
            details[key] = {k: v for k, v in details[key].items() if k != "valid_curve"}
    print(json.dumps(details, default=str))
    print(f"wall {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

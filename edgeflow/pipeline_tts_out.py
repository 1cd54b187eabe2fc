"""What ``optimize_tts`` leaves behind: the published bundle (whole history in its manifest) and the console line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict


def publish(artifact, dest: Path, target: Dict[str, Any]) -> None:
    """Copy the final bundle to ``dest`` with the whole history in its manifest (hashes rewritten); for a TensorRT
    target also ``tensorrt.json`` (graph checks, profiles, trtexec commands) and ``build_engine.sh``."""
    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.runtime.voice_config import native_files

    src = artifact.bundle_dir
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    for key in ("files", "format", "format_version"):
        manifest.pop(key, None)
    manifest["history"] = [{k: v for k, v in h.items() if k != "details"} for h in artifact.history]
    with atomic_dir(dest, overwrite=True) as tmp:
        for name in manifest["graphs"].values():
            shutil.copyfile(src / name, tmp / name)
        for name in native_files(manifest.get("native")):   # tts_kernels' / tts_wave's weights and cut decoder
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        manifest["target"] = target["name"]
        if target.get("tensorrt"):
            _tensorrt_files(tmp, manifest)
        write_manifest(tmp, manifest)


def _tensorrt_files(tmp: Path, manifest: Dict[str, Any]) -> None:
    from edgeflow.core.io import make_executable
    from edgeflow.export.tensorrt_voice import voice_tensorrt_plan

    plan = voice_tensorrt_plan(tmp, manifest)
    (tmp / "tensorrt.json").write_text(json.dumps(plan, indent=2) + "\n")
    (tmp / "build_engine.sh").write_text(
        "#!/bin/sh\n# Build the two TensorRT engines on the device (engines are device-specific).\n"
        "cd \"$(dirname \"$0\")\" || exit 2\n"
        "command -v edgeflow >/dev/null && exec edgeflow build-engine .\n" + "\n".join(plan["trtexec"].values()) + "\n")
    make_executable(tmp / "build_engine.sh")


def summary_line(report: Dict[str, Any], out) -> str:
    """The closing console line of a voice run."""
    f = report["final"]
    line = (f"budget {'held' if report['budget_held'] else 'BROKEN'}; RTF {f['rtf']:.4f}; WER {f['wer']:.3f}; "
            f"DNSMOS P.808 {f['dnsmos']:.3f}; MCD {f.get('mcd', 0.0):.3f} dB")
    ratio = report["comparison"].get("rtf_speedup_vs_stock")
    if ratio:
        line += f"; {ratio:.2f}x the stock voice's speed"
    rolled = [p["name"] for p in report["passes"] if p["status"] == "rolled_back"]
    if rolled:
        line += f"; ROLLED BACK: {', '.join(rolled)}"
    return line + f"; report: {out}/report.html"

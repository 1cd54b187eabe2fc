"""What ``optimize_tts`` leaves behind: the published bundle (whole history in its manifest) and the console line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict


def publish(artifact, dest: Path) -> None:
    """Copy the final bundle to ``dest`` with the whole history in its manifest (hashes rewritten)."""
    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.core.io import atomic_dir

    src = artifact.bundle_dir
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    for key in ("files", "format", "format_version"):
        manifest.pop(key, None)
    manifest["history"] = [{k: v for k, v in h.items() if k != "details"} for h in artifact.history]
    with atomic_dir(dest, overwrite=True) as tmp:
        for name in manifest["graphs"].values():
            shutil.copyfile(src / name, tmp / name)
        write_manifest(tmp, manifest)


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

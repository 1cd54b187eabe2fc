"""report.html: one self-contained page (inline PNGs) a person reads at a glance."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Dict, List


from edgeflow.audio.mel import MelConfig, log_mel
from edgeflow.core.io import atomic_write_text

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.ok{color:#070;font-weight:bold}
.bad{color:#b00;font-weight:bold}.skip{color:#a60;font-weight:bold}.note{color:#666;font-size:90%}
img{max-width:100%}.warn{background:#fee;border:1px solid #b00;padding:6px 10px}audio{width:240px}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _spectrograms(gt, ref, opt, cfg: MelConfig) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True)
    mels = [log_mel(a, cfg) for a in (gt, ref, opt)]
    lo, hi = min(m.min() for m in mels), max(m.max() for m in mels)
    for ax, m, title in zip(axes, mels, ["ground truth", "unoptimized model", "optimized bundle"]):
        ax.imshow(m, origin="lower", aspect="auto", vmin=max(lo, hi - 12), vmax=hi, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel band")
    axes[-1].set_xlabel(f"frame (hop {cfg.hop_length} @ {cfg.sample_rate} Hz)")
    return _png(fig)


def _rtf_plot(cost: Dict[str, Any]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("rtf_by_length", "optimized bundle"), ("reference_rtf_by_length", "PyTorch unoptimized")):
        pts = sorted((float(k), v["median"]) for k, v in cost.get(key, {}).items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.axhline(1.0, color="#b00", lw=0.8, ls="--", label="real time")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("audio length (s)")
    ax.set_ylabel("RTF (compute s / audio s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if 0 < abs(v) < 10 ** -digits else f"{v:.{digits}f}"
    return html.escape(str(v))


def human_bytes(n: float) -> str:
    """``1536 -> "1.5 kB"``, ``6593934 -> "6.6 MB"`` (decimal units, as file managers show)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _summary(report: Dict[str, Any]) -> List[str]:
    q = report["quality"]
    ref_q, opt_q = q["unoptimized_vs_ground_truth"], q["optimized_vs_ground_truth"]
    cost, size = report["cost"], report["size"]
    est = cost.get("target_estimate")
    sizes = f"{human_bytes(size['model_pt_bytes'])} (model.pt)", f"{human_bytes(size['bundle_bytes'])} (bundle)"
    rows = [("Size", *sizes),
            ("Parameters", cost["parameters"], cost["parameters"]),
            ("RTF here, 4 s clip", cost["reference_rtf_by_length"].get("4", {}).get("median"),
             cost["rtf_by_length"].get("4", {}).get("median"))]
    if est:
        what = f"RTF on {html.escape(report['target'])} (roofline estimate, {html.escape(str(cost.get('precision')))})"
        rows.append((what, None, est["rtf_estimate"]))
    parts = ["<h2>Summary</h2><table><tr><th></th><th>unoptimized (PyTorch)</th><th>optimized (bundle)</th></tr>"]
    parts += [f"<tr><td>{n}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>" for n, a, b in rows]
    for m in report.get("metric_definitions") or [m for m in opt_q if not m.endswith("_vs_ref")]:
        parts.append(f"<tr><td>{m} vs ground truth</td><td>{_fmt(ref_q.get(m))}</td><td>{_fmt(opt_q.get(m))}</td></tr>")
    for m in ("snr_vs_ref", "mel_l1_vs_ref"):
        if m in opt_q:
            parts.append(f"<tr><td>{m} (same noise)</td><td>–</td><td>{_fmt(opt_q[m])}</td></tr>")
    parts.append("</table>")
    if est:
        parts.append(f"<p class='note'>Target RTF is an {html.escape(est['label'])}; peak used: "
                     f"{html.escape(est['peak_used'])}.</p>")
    parts.append(f"<p class='note'>Measured here with {cost.get('threads')} thread(s), provider "
                 f"{html.escape(str(cost.get('provider')))}; "
                 f"{cost['flops_per_audio_second'] / 1e9:.1f} GFLOP per audio second; machine peak (float32 GEMM) "
                 f"{_fmt(cost.get('machine_peak_gflops'), 1)} GFLOP/s; fraction of peak reached "
                 f"{_fmt(cost.get('fraction_of_peak'), 3)}.</p>")
    defs = report.get("metric_definitions") or {}
    if defs:
        parts.append("<p class='note'>Metrics (mean over the clips): " + "; ".join(
            f"<b>{html.escape(m)}</b>: {html.escape(d)}" for m, d in defs.items()) + ".</p>")
    return parts


def _sanity(report: Dict[str, Any]) -> List[str]:
    s = report.get("sanity")
    if not s:
        return []
    parts = ["<h2>Sanity: does the unoptimized model speak?</h2>"]
    if s.get("warning"):
        parts.append(f"<p class='warn'><b>Warning:</b> {html.escape(s['warning'])}.</p>")
    parts.append("<table><tr><th></th><th>ground truth</th><th>unoptimized model</th></tr>")
    for key, label in (("voiced_fraction", "voiced fraction (autocorrelation pitch tracker)"),
                       ("wer", "WER (pocketsphinx)"), ("dnsmos", "DNSMOS overall")):
        if key in s:
            parts.append(f"<tr><td>{label}</td><td>{_fmt(s[key].get('ground_truth'))}</td>"
                         f"<td>{_fmt(s[key].get('unoptimized'))}</td></tr>")
    parts.append("</table>")
    return parts


def _passes(report: Dict[str, Any]) -> List[str]:
    from edgeflow.validate.budget import describe_violation

    parts = ["<h2>Passes</h2><table><tr><th>pass</th><th>status</th><th>seconds</th><th>metrics after</th>"
             "<th>notes</th></tr>"]
    for p in report["passes"]:
        after = ", ".join(f"{k}={v:.3f}" for k, v in sorted((p.get("metrics_after") or {}).items())
                          if isinstance(v, (int, float)))
        status = p.get("status")
        cls = {"applied": "ok", "skipped": "skip"}.get(status, "bad")
        note = ""
        if status == "skipped":
            note = f"{p.get('reason')} (enable with {p.get('enable_with')})"
        elif p.get("violations"):
            note = "budget broken: " + ", ".join(describe_violation(m, v) for m, v in p["violations"].items())
        parts.append(f"<tr><td>{html.escape(str(p['name']))}</td><td class='{cls}'>{html.escape(str(status))}</td>"
                     f"<td>{_fmt(p.get('seconds'), 1)}</td><td style='text-align:left'>{html.escape(after)}</td>"
                     f"<td style='text-align:left'>{html.escape(note)}</td></tr>")
    parts.append("</table>")
    return parts


def _samples(report: Dict[str, Any]) -> List[str]:
    kinds = ("ground_truth", "unoptimized", "optimized")
    parts = ["<h2>Samples</h2><table><tr><th>clip</th>" + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in kinds)
             + "</tr>"]
    have = set(report["samples"])
    for clip in report.get("clips", []):
        cells = []
        for k in kinds:
            name = f"{clip}_{k}.wav"
            cells.append(f"<td><audio controls preload='none' src='samples/{html.escape(name)}'></audio></td>"
                         if name in have else "<td>–</td>")
        parts.append(f"<tr><td>{html.escape(clip)}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def render_html(path: Path, report: Dict[str, Any], clip, ref_audio, opt_audio, cfg: MelConfig) -> None:
    """Write report.html: verdict, summary, sanity check, spectrograms, RTF curve, passes, audio players."""
    held = report["budget_held"]
    budget = report.get("budget_text") or ", ".join(f"{k} {v:g}" for k, v in report["budget"].items()) or "none"
    note = html.escape(report["cost"].get("reference_lengths_note", ""))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeflow report</title><style>{CSS}</style>"
             f"</head><body><h1>edgeflow report: {html.escape(Path(report['model']).name)} → "
             f"{html.escape(report['target'])}</h1>",
             f"<p>Budget ({html.escape(budget)}): <span class='{'ok' if held else 'bad'}'>"
             f"{'held' if held else 'broken'}</span>. Speed-up vs PyTorch (4 s): "
             f"<b>{_fmt(report.get('speedup_vs_pytorch_4s'), 2)}x</b>. Created {html.escape(report['created'])}.</p>"]
    parts += _summary(report) + _sanity(report)
    parts.append(f"<h2>Spectrograms ({html.escape(clip.name)})</h2>"
                 f"<img src='{_spectrograms(clip.audio, ref_audio, opt_audio, cfg)}'>")
    parts.append(f"<h2>Real-time factor vs length</h2><img src='{_rtf_plot(report['cost'])}'>"
                 + (f"<p class='note'>{note}.</p>" if note else ""))
    parts += _passes(report) + _samples(report)
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))

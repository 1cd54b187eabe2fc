"""report.html: one self-contained page (inline PNGs) a person reads at a glance."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Dict


from edgeflow.audio.mel import MelConfig, log_mel
from edgeflow.core.io import atomic_write_text

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.ok{color:#070;font-weight:bold}
.bad{color:#b00;font-weight:bold}.note{color:#666;font-size:90%}img{max-width:100%}"""


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


def render_html(path: Path, report: Dict[str, Any], clip, ref_audio, opt_audio, cfg: MelConfig) -> None:
    q = report["quality"]
    ref_q, opt_q = q["unoptimized_vs_ground_truth"], q["optimized_vs_ground_truth"]
    cost = report["cost"]
    est = cost.get("target_estimate")
    held = report["budget_held"]
    rtf4 = cost["rtf_by_length"].get("4", {}).get("median")
    ref4 = cost["reference_rtf_by_length"].get("4", {}).get("median")
    rows = [
        ("Size (bytes)", report["size"]["model_pt_bytes"], report["size"]["bundle_bytes"]),
        ("Parameters", cost["parameters"], cost["parameters"]),
        ("RTF here, 4 s clip", ref4, rtf4),
        (f"RTF on {report['target']} (estimate)", None, est["rtf_estimate"] if est else None),
    ]
    metric_names = [m for m in ("pesq", "stoi", "dnsmos", "mel_l1", "mr_stft", "mcd", "wer") if m in opt_q or m in ref_q]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeflow report</title><style>{CSS}</style>"
             f"</head><body><h1>edgeflow report: {html.escape(Path(report['model']).name)} → {html.escape(report['target'])}</h1>",
             f"<p>Budget {html.escape(str(report['budget']))}: <span class='{'ok' if held else 'bad'}'>"
             f"{'held' if held else 'broken'}</span>. Speed-up vs PyTorch (4 s): <b>{_fmt(report.get('speedup_vs_pytorch_4s'), 2)}x</b>."
             f" Created {html.escape(report['created'])}.</p>",
             "<h2>Summary</h2><table><tr><th></th><th>unoptimized (PyTorch)</th><th>optimized (bundle)</th></tr>"]
    for name, a, b in rows:
        parts.append(f"<tr><td>{name}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>")
    for m in metric_names:
        parts.append(f"<tr><td>{m} vs ground truth</td><td>{_fmt(ref_q.get(m))}</td><td>{_fmt(opt_q.get(m))}</td></tr>")
    for m in ("snr_vs_ref", "mel_l1_vs_ref"):
        if m in opt_q:
            parts.append(f"<tr><td>{m} (same noise)</td><td>–</td><td>{_fmt(opt_q[m])}</td></tr>")
    parts.append("</table>")
    if est:
        parts.append(f"<p class='note'>Target RTF is an {html.escape(est['label'])}; peak used: {html.escape(est['peak_used'])}.</p>")
    parts.append(f"<p class='note'>Measured here with {cost.get('threads')} thread(s), provider {html.escape(str(cost.get('provider')))}; "
                 f"{cost['flops_per_audio_second'] / 1e9:.1f} GFLOP per audio second; machine peak (float32 GEMM) "
                 f"{_fmt(cost.get('machine_peak_gflops'), 1)} GFLOP/s; fraction of peak reached "
                 f"{_fmt(cost.get('fraction_of_peak'), 3)}.</p>")
    parts.append(f"<h2>Spectrograms ({html.escape(clip.name)})</h2><img src='{_spectrograms(clip.audio, ref_audio, opt_audio, cfg)}'>")
    parts.append(f"<h2>Real-time factor vs length</h2><img src='{_rtf_plot(cost)}'>")
    parts.append("<h2>Passes</h2><table><tr><th>pass</th><th>status</th><th>seconds</th><th>metrics after</th></tr>")
    for p in report["passes"]:
        after = ", ".join(f"{k}={v:.3f}" for k, v in sorted((p.get("metrics_after") or {}).items())
                          if isinstance(v, (int, float)))
        cls = "ok" if p.get("status") == "applied" else "bad"
        parts.append(f"<tr><td>{html.escape(str(p['name']))}</td><td class='{cls}'>{html.escape(str(p.get('status')))}</td>"
                     f"<td>{_fmt(p.get('seconds'), 1)}</td><td style='text-align:left'>{html.escape(after)}</td></tr>")
    parts.append("</table><h2>Samples</h2><ul>")
    for s in report["samples"]:
        parts.append(f"<li><a href='samples/{html.escape(s)}'>{html.escape(s)}</a></li>")
    parts.append("</ul></body></html>")
    atomic_write_text(path, "\n".join(parts))

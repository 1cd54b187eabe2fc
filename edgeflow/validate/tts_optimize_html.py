"""report.html of ``edgeflow optimize`` on a voice, in the vocoder report's look (:mod:`edgeflow.validate.html`):
verdict, summary side by side (teacher, optimized bundle, stock voice), the sanity check (does the unoptimized
voice speak?), spectrograms of the first sentence, the passes with their metrics, audio players."""

from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: (key, label, digits) of the summary rows
ROWS = (("size_mb", "bundle / model size (MB)", 1), ("rtf", "RTF (whole sentences, this machine)", 4),
        ("time_to_first_audio", "time to first audio (s)", 3), ("wer", "WER (pocketsphinx)", 3),
        ("dnsmos", "DNSMOS P.808", 3), ("ovrl", "DNSMOS P.835 OVRL", 3), ("mcd", "MCD vs teacher (dB)", 3))


def _fmt(v: Any, digits: int = 3) -> str:
    from edgeflow.validate.html import _fmt as fmt

    return fmt(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v, digits)


def _summary(report: Dict[str, Any]) -> List[str]:
    systems = report["comparison"]["systems"]
    names = [n for n in ("teacher (PyTorch)", "optimized bundle", "stock Piper (bare onnxruntime)") if n in systems]
    parts = ["<h2>Summary</h2><table><tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"]
    for key, label, digits in ROWS:
        if any(key in systems[n] for n in names):
            parts.append(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(systems[n].get(key), digits)}</td>"
                                                           for n in names) + "</tr>")
    parts.append("</table>")
    parts += _cost(report.get("cost"), report["target"])
    ratio = report["comparison"].get("rtf_speedup_vs_stock")
    parts.append("<p class='note'>" + html.escape(report["comparison"].get("note", "")) + "." +
                 (f" Speed-up against the stock voice: <b>{ratio:.2f}x</b>." if ratio else "") +
                 f" {report['n_eval']} evaluation sentences (never used for calibration or distillation), seed "
                 f"{report['seed']}, {report['threads']} thread(s).</p>")
    return parts


def _cost(cost: Optional[Dict[str, Any]], target: str) -> List[str]:
    if not cost:
        return []
    parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in cost["flops_by_part"].items())
    out = [f"<p class='note'>Cost model of the optimized voice: {cost['flops_per_audio_second'] / 1e9:.2f} GFLOP per "
           f"second of audio ({html.escape(parts)}), {cost['parameters'] / 1e6:.2f} M parameters, "
           f"{html.escape(str(cost['precision']))}."]
    est = cost.get("target_estimate")
    if est:
        out.append(f" RTF on {html.escape(target)}: <b>{_fmt(est['rtf_estimate'], 4)}</b> "
                   f"({html.escape(est['label'])}; peak used: {html.escape(est['peak_used'])}).")
    return ["".join(out) + "</p>"]


def _sanity(report: Dict[str, Any]) -> List[str]:
    s = report.get("sanity")
    if not s:
        return []
    parts = ["<h2>Sanity: does the unoptimized voice speak?</h2>"]
    if s.get("warning"):
        parts.append(f"<p class='warn'><b>Warning:</b> {html.escape(s['warning'])}.</p>")
    else:
        parts.append("<p class='ok'>Yes: the quality figures below are measured on speech.</p>")
    t = s.get("thresholds", {})
    parts.append("<table><tr><th></th><th>unoptimized voice</th><th>flagged when</th></tr>"
                 f"<tr><td>voiced fraction (autocorrelation pitch tracker)</td><td>{_fmt(s['voiced_fraction'])}</td>"
                 f"<td>&lt; {_fmt(t.get('voiced_fraction'), 2)}</td></tr>"
                 f"<tr><td>WER (pocketsphinx)</td><td>{_fmt(s.get('wer'))}</td><td>&gt; {_fmt(t.get('wer'), 2)}</td>"
                 f"</tr><tr><td>DNSMOS P.808</td><td>{_fmt(s.get('dnsmos'))}</td><td>&lt; {_fmt(t.get('dnsmos'), 2)}"
                 "</td></tr></table>")
    return parts


def _passes(report: Dict[str, Any]) -> List[str]:
    from edgeflow.validate.budget import describe_violation

    parts = ["<h2>Passes</h2><table><tr><th>pass</th><th>status</th><th>seconds</th><th>scored on</th><th>RTF</th>"
             "<th>size MB</th><th>WER</th><th>DNSMOS P.808</th><th>MCD dB</th><th>notes</th></tr>"]
    for p in report["passes"]:
        m = p.get("metrics") or {}
        status = p.get("status")
        cls = {"applied": "ok", "skipped": "skip"}.get(status, "bad")
        note = ""
        if p.get("violations"):
            note = "budget broken: " + ", ".join(describe_violation(k, v) for k, v in p["violations"].items())
        engine = "PyTorch model" if m.get("rtf_engine") == "pytorch" else "bundle"
        parts.append(f"<tr><td>{html.escape(str(p['name']))}</td><td class='{cls}'>{html.escape(str(status))}</td>"
                     f"<td>{_fmt(p.get('seconds'), 1)}</td><td>{engine}</td>" +
                     "".join(f"<td>{_fmt(m.get(k), d)}</td>" for k, d in (("rtf", 4), ("size_mb", 1), ("wer", 3),
                                                                          ("dnsmos", 3), ("mcd", 3))) +
                     f"<td style='text-align:left'>{html.escape(note)}</td></tr>")
    parts.append("</table><p class='note'>Metrics after each pass on the evaluation sentences; a pass that breaks "
                 "the budget is rolled back. Passes before the export are scored on the changed PyTorch model "
                 "(its RTF is PyTorch's, not the bundle's).</p>")
    return parts


def _samples(report: Dict[str, Any]) -> List[str]:
    kinds = [k for k in ("teacher", "optimized", "stock") if any(k in s["files"] for s in report["samples"])]
    parts = ["<h2>Samples</h2><table><tr><th>sentence</th>" + "".join(f"<th>{k}</th>" for k in kinds) + "</tr>"]
    for s in report["samples"]:
        cells = "".join(f"<td><audio controls preload='none' src='{html.escape(s['files'][k])}'></audio></td>"
                        if k in s["files"] else "<td>–</td>" for k in kinds)
        parts.append(f"<tr><td style='text-align:left'>{html.escape(s['text'])}</td>{cells}</tr>")
    parts.append("</table>")
    return parts


def render_optimize_html(report: Dict[str, Any], first: Optional[Dict[str, np.ndarray]] = None,
                         sr: Optional[int] = None) -> str:
    """The page. ``first``: {kind: audio [T]} of the first sentence for the spectrograms (None: none drawn)."""
    from edgeflow.validate.html import CSS
    from edgeflow.validate.tts_report import _spectrograms

    held = report["budget_held"]
    budget = ", ".join(f"{k} {v:g}" for k, v in report["budget"].items()) or "none"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeflow report</title><style>{CSS}</style>"
             f"</head><body><h1>edgeflow report: {html.escape(str(report['model']['path']))} → "
             f"{html.escape(report['target'])} ({html.escape(report['recipe'])})</h1>",
             f"<p>Budget ({html.escape(budget)}; wer: rise, dnsmos: P.808 fall, mcd: dB vs the teacher with the same "
             f"noise): <span class='{'ok' if held else 'bad'}'>{'held' if held else 'broken'}</span>.</p>"]
    parts += _summary(report) + _sanity(report)
    if first and sr:
        labels: Sequence[str] = list(first)
        parts.append(f"<h2>Spectrograms (first sentence)</h2>"
                     f"<img src='{_spectrograms(list(first.values()), labels, sr)}'>")
    parts += _passes(report) + _samples(report)
    parts.append("</body></html>")
    return "\n".join(parts)

"""The text-to-speech bench report: statistics over sentences and report.html (the vocoder report's look).

``report.json`` (written by :func:`edgeflow.bench_tts.bench_tts`) has ``task`` "tts", ``systems`` (one
entry per system: label, kind, path, size, sample rate, ``summary`` as
:func:`edgeflow.validate.tts.evaluate_voice` plus ``rtf_streaming``, ``spread`` of the per-sentence scores,
``rows``), and with two systems ``comparison``: RTF ratio, paired differences of the scores with their
95% interval, and ``same_noise`` / ``zero_noise`` distances (:func:`distances`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgeflow.core.io import atomic_write_text

#: per-sentence scores summarised with their spread: (key in a row, label)
SCORES = (("wer", "WER (pocketsphinx)"), ("p808", "DNSMOS P.808"), ("sig", "DNSMOS P.835 SIG"),
          ("bak", "DNSMOS P.835 BAK"), ("ovrl", "DNSMOS P.835 OVRL"))
#: 95% two-sided normal quantile (intervals are mean +- Z95 * std / sqrt(n))
Z95 = 1.959964


def spread(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, sample std and the 95% interval half-width of the mean (None below 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()), "std": std, "ci95": Z95 * std / math.sqrt(v.size) if std is not None else None,
            "n": int(v.size)}


def row_score(row: Dict[str, Any], key: str) -> Optional[float]:
    """A row's score ``key`` (``wer`` or a DNSMOS field), None when not scored."""
    if key == "wer":
        return row.get("wer")
    return (row.get("dnsmos") or {}).get(key)


def score_spread(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Optional[float]]]:
    """:func:`spread` of each scored per-sentence score."""
    out = {}
    for key, _ in SCORES:
        vals = [row_score(r, key) for r in rows]
        if vals and all(v is not None for v in vals):
            out[key] = spread(vals)
    return out


def paired(rows_a: Sequence[Dict[str, Any]], rows_b: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per score, the per-sentence difference a - b over the same sentences: mean, 95% interval, and
    ``equal_within_spread`` (the interval holds 0, i.e. no difference the sentences can show)."""
    out = {}
    for key, _ in SCORES:
        a, b = [row_score(r, key) for r in rows_a], [row_score(r, key) for r in rows_b]
        if not a or len(a) != len(b) or any(v is None for v in a + b):
            continue
        s = spread(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
        held = s["ci95"] is not None and abs(s["mean"]) <= s["ci95"] or s["std"] == 0.0 and s["mean"] == 0.0
        out[key] = {"diff_mean": s["mean"], "diff_std": s["std"], "ci95": s["ci95"], "equal_within_spread": held}
    return out


def distances(pa: Sequence[np.ndarray], pb: Sequence[np.ndarray], sr: int, texts: Sequence[str]) -> Dict[str, Any]:
    """Per sentence: both lengths, and where they agree (same durations) the max abs difference and the
    mel-cepstral distance (dB). Summary: worst max abs difference and mean MCD over the comparable ones."""
    from edgeflow.validate.tts import mel_cepstral_distance

    rows = []
    for a, b, text in zip(pa, pb, texts):
        row: Dict[str, Any] = {"text": text, "samples": [int(a.size), int(b.size)]}
        if a.size == b.size:
            row["max_abs_diff"] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            row["mcd"] = mel_cepstral_distance(a, b, sr)
        rows.append(row)
    ok = [r for r in rows if "mcd" in r]
    return {"sentences": len(rows), "comparable": len(ok), "rows": rows,
            "max_abs_diff": max((r["max_abs_diff"] for r in ok), default=None),
            "mcd": float(np.mean([r["mcd"] for r in ok])) if ok else None}


# -- HTML ---------------------------------------------------------------------------------------------

def _pm(s: Optional[Dict[str, Any]]) -> str:
    from edgeflow.validate.html import _fmt

    if not s or s.get("mean") is None:
        return "–"
    return _fmt(s["mean"]) + (f" ± {_fmt(s['ci95'])}" if s.get("ci95") is not None else "")


def _head(s: Dict[str, Any]) -> str:
    """A column heading: role, what runs it, the file."""
    return (f"{html.escape(s.get('role', ''))}: {html.escape(s['label'])}<br><span class='note'>"
            f"{html.escape(Path(s['path']).name)}</span>")


def _verdict(report: Dict[str, Any]) -> str:
    """One line: the RTF ratio and whether every score is equal within its spread."""
    c = report.get("comparison")
    if not c:
        return ""
    equal = [d["equal_within_spread"] for d in c["paired"].values()]
    held = c["rtf_ratio"] <= 1.0
    words = (f"<p>RTF ratio (subject / against, sentence by sentence): <span class='{'ok' if held else 'bad'}'>"
             f"{c['rtf_ratio']:.3f} ({'no slower' if held else 'slower'})</span>.")
    if equal:
        words += (f" WER and DNSMOS equal within their spread: <span class='{'ok' if all(equal) else 'bad'}'>"
                  f"{'yes' if all(equal) else f'no ({equal.count(False)} of {len(equal)} differ)'}</span>.")
    return words + "</p>"


def _summary(report: Dict[str, Any]) -> List[str]:
    from edgeflow.validate.html import _fmt
    from edgeflow.validate.report import human_bytes

    systems = report["systems"]
    parts = ["<h2>Summary</h2><table><tr><th></th>" + "".join(f"<th>{_head(s)}</th>" for s in systems) + "</tr>"]

    def row(name, cells):
        parts.append(f"<tr><td>{name}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")

    row("Size", [human_bytes(s["size_bytes"]) for s in systems])
    row("RTF, sentence by sentence", [_fmt(s["summary"]["rtf"]) for s in systems])
    row("RTF, streaming", [_fmt(s["summary"].get("rtf_streaming")) for s in systems])
    row("Time to first audio (s, median)", [_fmt(s["summary"]["time_to_first_audio"]) for s in systems])
    if all("wer" in s["summary"] for s in systems):
        row("WER, corpus", [_fmt(s["summary"]["wer"]) for s in systems])
    for key, label in SCORES:
        if all(key in s["spread"] for s in systems):
            row(f"{label}, mean ± 95%", [_pm(s["spread"][key]) for s in systems])
    row("Audio (s)", [_fmt(s["summary"]["audio_seconds"], 1) for s in systems])
    parts.append("</table>")
    parts.append(f"<p class='note'>{report['sentences']} evaluation sentences; {report['threads'] or 'default'} "
                 f"thread(s); seed {report['seed']}; timing: the fastest of {max(1, report['repeats']) + 1} runs, systems "
                 f"interleaved; load average {_fmt(report['machine']['load_average'], 2)} on "
                 f"{report['machine']['cpus']} CPU(s). Streaming: bundles decode in frame chunks (first audio "
                 "early); the others yield whole sentences. ± is the 95% interval of the mean over sentences.</p>")
    return parts


def _comparison(report: Dict[str, Any]) -> List[str]:
    from edgeflow.validate.html import _fmt

    c = report.get("comparison")
    if not c:
        return []
    parts = ["<h2>Subject vs against</h2><table><tr><th></th><th>difference (first − second)</th>"
             "<th>95% interval</th><th>equal within spread</th></tr>"]
    for key, label in SCORES:
        d = c["paired"].get(key)
        if d:
            cls = "ok" if d["equal_within_spread"] else "bad"
            parts.append(f"<tr><td>{label}</td><td>{_fmt(d['diff_mean'])}</td><td>± {_fmt(d['ci95'])}</td>"
                         f"<td class='{cls}'>{'yes' if d['equal_within_spread'] else 'no'}</td></tr>")
    parts.append(f"<tr><td>RTF ratio (sentence by sentence)</td><td>{_fmt(c['rtf_ratio'])}</td><td>–</td>"
                 f"<td class='{'ok' if c['rtf_ratio'] <= 1.0 else 'bad'}'>"
                 f"{'no slower' if c['rtf_ratio'] <= 1.0 else 'slower'}</td></tr></table>")
    for key, what in (("same_noise", "same seed (noise and durations), default scales"),
                      ("zero_noise", "noise scales 0 (deterministic)")):
        d = c.get(key)
        if d:
            parts.append(f"<p>Distance, {what}: mel-cepstral distance <b>{_fmt(d['mcd'])} dB</b>, max abs "
                         f"difference <b>{_fmt(d['max_abs_diff'])}</b> ({d['comparable']} of {d['sentences']} "
                         "sentences with equal lengths).</p>")
    for note in c.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    return parts


def _rows(report: Dict[str, Any]) -> List[str]:
    from edgeflow.validate.html import _fmt

    systems = report["systems"]
    head = "".join(f"<th>{html.escape(s.get('role', s['kind']))} {k}</th>" for s in systems
                   for k in ("RTF", "WER", "P.808"))
    parts = [f"<h2>Per sentence</h2><table><tr><th>sentence</th><th>audio s</th>{head}</tr>"]
    for i, r0 in enumerate(systems[0]["rows"]):
        cells = "".join(f"<td>{_fmt(s['rows'][i]['rtf'])}</td><td>{_fmt(row_score(s['rows'][i], 'wer'))}</td>"
                        f"<td>{_fmt(row_score(s['rows'][i], 'p808'))}</td>" for s in systems)
        parts.append(f"<tr><td style='text-align:left'>{html.escape(r0['text'])}</td>"
                     f"<td>{_fmt(r0['seconds'], 2)}</td>{cells}</tr>")
    parts.append("</table>")
    return parts


def _samples(report: Dict[str, Any]) -> List[str]:
    systems = report["systems"]
    parts = ["<h2>Samples</h2><table><tr><th>sentence</th>" + "".join(f"<th>{_head(s)}</th>" for s in systems)
             + "</tr>"]
    for sample in report["samples"]:
        cells = "".join(f"<td><audio controls preload='none' src='samples/{html.escape(f)}'></audio></td>"
                        for f in sample["files"])
        parts.append(f"<tr><td style='text-align:left'>{html.escape(sample['text'])}</td>{cells}</tr>")
    parts.append("</table>")
    return parts


def _spectrograms(audios: Sequence[np.ndarray], labels: Sequence[str], sr: int) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeflow.audio.mel import MelConfig, log_mel
    from edgeflow.validate.html import _png

    cfg = MelConfig(sample_rate=sr, fmax=min(8000.0, sr / 2))
    fig, axes = plt.subplots(len(audios), 1, figsize=(10, 2.3 * len(audios) + 0.5), squeeze=False, sharex=True)
    mels = [log_mel(a, cfg) for a in audios]
    hi = max(float(m.max()) for m in mels)
    for ax, m, label in zip(axes[:, 0], mels, labels):
        ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=hi - 12, vmax=hi)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("mel band")
    axes[-1, 0].set_xlabel(f"frame (hop {cfg.hop_length} @ {sr} Hz)")
    fig.tight_layout()
    return _png(fig)


def render_tts_html(path: Path, report: Dict[str, Any], first_audio: Sequence[np.ndarray]) -> None:
    """Write report.html: verdict, summary side by side, comparison, spectrograms of the first sentence
    (``first_audio``: one wav per system), per-sentence table, audio players."""
    from edgeflow.validate.html import CSS

    names = " vs ".join(html.escape(Path(s["path"]).name) for s in report["systems"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeflow text-to-speech report</title>"
             f"<style>{CSS}</style></head><body><h1>edgeflow text-to-speech report: {names}</h1>",
             f"<p>Created {html.escape(report['created'])}.</p>", _verdict(report)]
    parts += _summary(report) + _comparison(report)
    srs = {s["sample_rate"] for s in report["systems"]}
    if len(srs) == 1 and first_audio:
        labels = [f"{s.get('role', '')}: {s['label']} ({Path(s['path']).name})" for s in report["systems"]]
        parts.append(f"<h2>Spectrograms (first sentence)</h2><img src='{_spectrograms(first_audio, labels, srs.pop())}'>")
    parts += _rows(report) + _samples(report)
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))

"""``bench_tts()``: the text-to-speech side of ``edgeflow bench``: a voice, optionally against another, side by side.

A *system* is one of (:mod:`edgeflow.validate.tts_systems`):

* an edgeflow VITS **bundle** in :class:`edgeflow.runtime.Voice` (a model.pt subject is exported to
  ``OUT/bundle`` first, and its PyTorch model is the default ``--against``);
* a VITS **model.pt** in PyTorch (``Vits.synthesize``, the same text front-end and seeded noise);
* a stock **Piper** ``VOICE.onnx`` (+ ``.onnx.json``) in bare onnxruntime with its own phoneme map
  (:class:`edgeflow.validate.tts.BarePiper`; its noise is internal, so ``seed`` does not reach it).

Each system speaks the evaluation sentences of :mod:`edgeflow.data.tts_text` (first ``n_eval``) at its own
default scales: pocketsphinx WER, DNSMOS P.808 / P.835 and their spread over sentences, RTF of
sentence-by-sentence synthesis (as Piper runs), RTF and time to first audio of streaming (bundles decode
in frame chunks; the others yield whole sentences), size. Timing: one warm-up sentence, then the scored
pass and ``repeats`` more, the systems interleaved sentence by sentence, the fastest of each kept (a
shared CPU disturbs both alike). Against each other: mel-cepstral distance and max abs difference with
the same noise and durations (same seed, for two edgeflow systems) and, when a stock Piper graph takes
part, at noise scales 0 (both deterministic then).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgeflow.core.errors import ConfigError, InputError
from edgeflow.validate.tts_systems import System, open_system

#: sentences scored for the zero-noise parity of an edgeflow system against a stock Piper graph
PARITY_SENTENCES = 5


def check_out(out: Path) -> None:
    """``out`` is new, empty, or a previous text-to-speech bench report (ConfigError otherwise)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        previous = json.loads((out / "report.json").read_text(encoding="utf-8")).get("task") == "tts"
    except (OSError, ValueError, AttributeError):
        previous = False
    if not out.is_dir() or not previous:
        raise ConfigError(f"output directory {out} holds something else (not an edgeflow text-to-speech bench); "
                          "choose an empty or new directory")


def measure(systems: Sequence[System], texts: Sequence[str], seed: int = 0, repeats: int = 2,
            wer: bool = True, dnsmos: bool = True, log=print) -> List[Dict[str, Any]]:
    """Score and time each system on ``texts`` (see the module doc). Returns one
    :func:`edgeflow.validate.tts.evaluate_voice` result per system (rows keep ``audio``, whole-sentence
    synthesis), with streaming timings (``wall_streaming``, ``time_to_first_audio``) added to the rows."""
    from edgeflow.data.tts_text import sentences
    from edgeflow.validate.tts import evaluate_voice

    warm = sentences("calibration")[0]
    results = []
    for s in systems:
        list(s.speak_stream(warm, seed=seed))
        list(s.speak_stream(warm, streaming=True, seed=seed))
        log(f"scoring {s.label} on {len(texts)} sentences ...")
        results.append(evaluate_voice(s, texts, wer=wer, dnsmos=dnsmos, keep_audio=True, seed=seed))
    runs = max(1, repeats)
    log(f"timing: {runs} more interleaved run(s) per sentence and system, the fastest kept ...")
    for _ in range(runs):
        for i, text in enumerate(texts):
            for s, res in zip(systems, results):
                _time_once(s, res["rows"][i], text, seed)
    for s, res in zip(systems, results):
        rows, summary = res["rows"], res["summary"]
        for r in rows:
            r["rtf"] = r["wall"] / max(r["seconds"], 1e-9)
            if s.kind != "bundle":                     # one piece per sentence: streaming is the same run
                r["wall_streaming"] = r["wall"]
        total = max(sum(r["seconds"] for r in rows), 1e-9)
        summary["rtf"] = sum(r["wall"] for r in rows) / total
        summary["rtf_streaming"] = sum(r["wall_streaming"] for r in rows) / total
        summary["time_to_first_audio"] = float(np.median([r["time_to_first_audio"] for r in rows]))
    return results


def _time_once(s: System, row: Dict[str, Any], text: str, seed: int) -> None:
    """One more timed run of ``text`` (and, for a bundle, one streaming run): keep the fastest figures. Each run
    waits :data:`edgeflow.validate.cost.SETTLE_SECONDS` first (another system's spinning threads)."""
    from edgeflow.validate.cost import SETTLE_SECONDS
    from edgeflow.validate.tts import timed_speak

    time.sleep(SETTLE_SECONDS)
    t = timed_speak(s, text, seed=seed)
    row["wall"] = min(row["wall"], t["wall"])
    if s.kind != "bundle":
        row["time_to_first_audio"] = min(row["time_to_first_audio"], t["time_to_first_audio"])
        return
    time.sleep(SETTLE_SECONDS)
    st = timed_speak(s, text, streaming=True, seed=seed)
    first = "wall_streaming" not in row
    row["wall_streaming"] = st["wall"] if first else min(row["wall_streaming"], st["wall"])
    row["time_to_first_audio"] = st["time_to_first_audio"] if first else \
        min(row["time_to_first_audio"], st["time_to_first_audio"])


def zero_noise_parity(a: System, b: System, texts: Sequence[str], seed: int = 0) -> Dict[str, Any]:
    """Both systems at noise_scale = noise_w = 0 (deterministic for any graph): per sentence, max abs
    difference and mel-cepstral distance where the lengths (durations) agree."""
    from edgeflow.validate.tts_report import distances

    zero = {"noise_scale": 0.0, "noise_w": 0.0}
    pa = [np.concatenate(list(a.speak_stream(t, seed=seed, **zero))) for t in texts]
    pb = [np.concatenate(list(b.speak_stream(t, seed=seed, **zero))) for t in texts]
    return distances(pa, pb, a.sample_rate, texts)


def open_systems(subject: str | Path, against: Optional[str | Path], out: Path, threads: Optional[int],
                 log=print) -> List[System]:
    """The systems of a bench: a model.pt subject is exported to ``OUT/bundle`` (and is the default
    ``against``, in PyTorch); every input is checked before the export starts."""
    first = open_system(subject, threads, "subject")
    other = open_system(against, threads, "--against") if against is not None else None
    if first.kind != "pytorch":
        return [first] + ([other] if other else [])
    from edgeflow.export.vits import export_vits_bundle

    log(f"exporting {first.path} to {out / 'bundle'} (float32, parity-checked) ...")
    export_vits_bundle(first.voice.model, out / "bundle", overwrite=True)
    bundle = open_system(out / "bundle", threads, "exported bundle")
    bundle.label = "edgeflow bundle (exported, onnxruntime)"
    return [bundle, other or first]


def _compare(systems: Sequence[System], results: Sequence[Dict[str, Any]], texts: Sequence[str],
             seed: int) -> Dict[str, Any]:
    from edgeflow.validate.tts_report import distances, paired

    a, b = systems
    ra, rb = results
    c: Dict[str, Any] = {"rtf_ratio": ra["summary"]["rtf"] / max(rb["summary"]["rtf"], 1e-12),
                         "rtf_streaming_ratio": ra["summary"]["rtf_streaming"] / max(rb["summary"]["rtf_streaming"],
                                                                                     1e-12),
                         "paired": paired(ra["rows"], rb["rows"]), "notes": []}
    if a.sample_rate != b.sample_rate:
        c["notes"].append(f"sample rates differ ({a.sample_rate} vs {b.sample_rate} Hz): no distances")
        return c
    if a.seeded and b.seeded:
        c["same_noise"] = distances([r["audio"] for r in ra["rows"]], [r["audio"] for r in rb["rows"]],
                                    a.sample_rate, texts)
    else:
        c["notes"].append("a stock Piper graph samples its own noise: its audio at the default scales differs "
                          "from run to run, so the distances are taken at noise scales 0")
        c["zero_noise"] = zero_noise_parity(a, b, texts[:PARITY_SENTENCES], seed)
    return c


def _system_entry(s: System, res: Dict[str, Any]) -> Dict[str, Any]:
    from edgeflow.validate.report import human_bytes
    from edgeflow.validate.tts_report import score_spread

    rows = [{k: v for k, v in r.items() if k != "audio"} for r in res["rows"]]
    return {"label": s.label, "kind": s.kind, "path": str(s.path), "size_bytes": s.size_bytes,
            "size": human_bytes(s.size_bytes), "sample_rate": s.sample_rate, "summary": res["summary"],
            "spread": score_spread(rows), "rows": rows}


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def bench_tts(subject: str | Path, out_dir: str | Path, against: Optional[str | Path] = None, n_eval: int = 20,
              threads: Optional[int] = None, seed: int = 0, repeats: int = 2, n_samples: int = 3,
              wer: bool = True, dnsmos: bool = True, log=print) -> Dict[str, Any]:
    """Write OUT/report.json, OUT/report.html and OUT/samples (and OUT/bundle for a model.pt subject).

    Args:
        subject: a VITS bundle, a VITS model.pt or a Piper .onnx.
        against: another of those (default: none; for a model.pt subject its PyTorch model).
        n_eval: evaluation sentences (the first n of :mod:`edgeflow.data.tts_text`'s 20).
        threads: onnxruntime intra-op threads (and torch threads) for every system.
        repeats: timed runs after the scored one (fastest kept).
        n_samples: sentences written as wavs for the report's players.

    Raises:
        InputError, BundleError, CheckpointError, ConfigError: bad inputs (one line; nothing written).
    """
    from edgeflow.audio.io import save_wav
    from edgeflow.core.io import atomic_write_json
    from edgeflow.data.tts_text import sentences
    from edgeflow.validate.tts_report import render_tts_html

    out = Path(out_dir)
    check_out(out)
    all_texts = sentences("evaluation")
    if not 1 <= n_eval <= len(all_texts):
        raise InputError(f"--n-eval must be between 1 and {len(all_texts)} (the evaluation sentences), got {n_eval}")
    texts = all_texts[:n_eval]
    systems = open_systems(subject, against, out, threads, log)
    results = measure(systems, texts, seed=seed, repeats=repeats, wer=wer, dnsmos=dnsmos, log=log)
    samples = []
    if (out / "samples").is_dir():                       # a previous TTS bench here (check_out): its wavs go
        import shutil

        shutil.rmtree(out / "samples")
    for i, text in enumerate(texts[:n_samples]):
        files = []
        for j, (s, res) in enumerate(zip(systems, results)):
            name = f"s{i + 1:02d}_{'subject' if j == 0 else 'against'}_{s.kind}.wav"
            save_wav(out / "samples" / name, res["rows"][i]["audio"], s.sample_rate)
            files.append(name)
        samples.append({"text": text, "files": files})
    report = {"edgeflow_report": 1, "task": "tts", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "subject": str(subject), "against": None if against is None else str(against),
              "sentences": len(texts), "seed": seed, "threads": threads, "repeats": repeats,
              "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                          "processor": platform.processor() or platform.machine()},
              "systems": [dict(_system_entry(s, r), role=role) for s, r, role in zip(systems, results,
                                                                                      ("subject", "against"))],
              "samples": samples}
    if len(systems) == 2:
        report["comparison"] = _compare(systems, results, texts, seed)
    report = json.loads(json.dumps(report, default=_plain))            # numpy scalars -> JSON numbers
    atomic_write_json(out / "report.json", report)
    render_tts_html(out / "report.html", report, [r["rows"][0]["audio"] for r in results])
    log(f"wrote {out / 'report.json'}, {out / 'report.html'}")
    return report

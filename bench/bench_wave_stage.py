"""The native INT8 waveform-rate stage (``tts_wave``) against the float stage in onnxruntime, on a voice bundle:
speed of the stage alone and the audio of each activation-plane choice.

The bundle must carry the ``tts_kernels`` pass's native flow (its cut decoder holds the float last stage). The
first ``--n`` evaluation sentences go through the bundle's text encoder and native flow; the cut decoder's head
(everything before the last stage) gives the stage's input, and the stage runs as

* ``float``: the cut decoder's last stage in onnxruntime (1-D convs, and 2-D where timed), the reference;
* ``one_plane``, ``search``, ``two_planes``: the native INT8 stage with one activation plane everywhere, the
  ``tts_wave`` search's choice at ``--min-snr-db``, and two planes everywhere (the ``balanced`` default).

Printed: per variant, the stage's milliseconds per second of audio at each thread count (fastest of ``--rounds``,
interleaved, 0.2 s settle pause before each), the audio SNR against ``float`` and, with ``--quality``, DNSMOS
P.808, WER and MCD against ``float``. Example (2026-12-05)::

    PYTHONPATH=. python bench/bench_wave_stage.py BALANCED_WITH_TTS_KERNELS/bundle --n 20 --quality \\
        --json bench/results/wave_stage_2026-12-05.json

The voice's bundle stays where it is; only the scores are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def stage_graph(cut: Path, out: Path, layout: str) -> Path:
    """The cut decoder's last stage alone (its input to the audio) as an ONNX file, convs in ``layout``."""
    import onnx

    from edgeflow.runtime.conv_layout import to_2d
    from edgeflow.runtime.native.vits_graph import extract
    from edgeflow.runtime.native.vits_stage import stage_convs, stage_input

    model = onnx.load(str(cut))
    sub = extract(model, [stage_input(model)], [o.name for o in model.graph.output],
                  stage_convs(model)[0][0]["weight"].shape[1])
    if layout == "2d":
        to_2d(sub)
    onnx.save(sub, str(out))
    return out


def voice_stage(bundle: Path, n: int, work: Path):
    """(voice, cut decoder, stage convs, texts, stage inputs, float-stage audio) of the first ``n`` evaluation
    sentences, through the bundle's native flow (:func:`edgeflow.passes.tts_wave.stage_inputs`)."""
    import onnxruntime as ort

    from edgeflow.data.tts_text import sentences
    from edgeflow.passes.tts_wave import stage_inputs
    from edgeflow.runtime import Voice
    from edgeflow.runtime.native.vits_stage import cut_before_stage, stage_convs

    voice = Voice.load(bundle, threads=2, engine="native")
    cut = bundle / voice.manifest["native"]["decoder"]
    stage = stage_convs(cut)
    cut_before_stage(cut, work / "head.onnx", int(stage[0][0]["weight"].shape[1]))
    head = ort.InferenceSession(str(work / "head.onnx"), providers=["CPUExecutionProvider"])
    texts = sentences("evaluation")[:n]
    return (voice, cut, stage, texts, *stage_inputs(voice, head, texts, 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="a voice bundle with the tts_kernels pass's native flow")
    ap.add_argument("--n", type=int, default=20, help="evaluation sentences")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-snr-db", type=float, default=43.0, help="the search variant's target")
    ap.add_argument("--quality", action="store_true", help="also DNSMOS P.808, WER and MCD (slow)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import onnxruntime as ort

    from edgeflow.core.ort import session_options
    from edgeflow.passes.kernels import compare
    from edgeflow.passes.tts_wave import choose_planes
    from edgeflow.runtime.native.vits_stage import stage_arrays
    from edgeflow.runtime.native.wave_stage import WaveStage, tile_samples
    from edgeflow.validate.cost import interleaved_best

    tmp = Path(tempfile.mkdtemp())
    voice, cut, stage, texts, xs_all, ref = voice_stage(args.bundle, args.n, tmp)
    sr, n_convs, xs = voice.sample_rate, len(stage[0]), xs_all[:4]
    graphs = {lay: stage_graph(cut, tmp / f"stage_{lay}.onnx", lay) for lay in ("1d", "2d")}
    name = ort.InferenceSession(str(graphs["1d"]), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    make = lambda planes: WaveStage(stage_arrays(stage, planes), threads=1)  # noqa: E731
    searched, _, _ = choose_planes(make, n_convs, xs, ref[:4], args.min_snr_db)
    variants = {"one_plane": [], "search": searched, "two_planes": list(range(n_convs))}
    audio = {k: [WaveStage(stage_arrays(stage, p)).run(x) for x in xs_all] for k, p in variants.items()}
    results = {"bundle": str(args.bundle), "sentences": len(texts), "tile_samples": tile_samples(),
               "seconds": round(sum(r.size for r in ref) / sr, 2), "variants": {}}
    for k, p in variants.items():
        results["variants"][k] = {"two_planes": p, "snr_db": compare(np.concatenate(audio[k]),
                                                                     np.concatenate(ref))["snr_db"]}
    x = np.concatenate(xs_all, axis=1)[:, :sr * 5]
    for th in (int(t) for t in args.threads.split(",")):
        fns = {}
        for lay, g in graphs.items():
            s = ort.InferenceSession(str(g), session_options(th), providers=["CPUExecutionProvider"])
            fns[f"float_{lay}"] = (lambda s=s: s.run(None, {name: x[None]}))
        for k, p in variants.items():
            fns[k] = (lambda st=WaveStage(stage_arrays(stage, p), threads=th): st.run(x))
        t = interleaved_best(fns, rounds=args.rounds, warmup=True)
        results[f"ms_per_s_{th}_threads"] = {k: round(v / (x.shape[1] / sr) * 1e3, 2) for k, v in t.items()}
        print(f"{th} thread(s), ms per second of audio:", results[f"ms_per_s_{th}_threads"], flush=True)
    if args.quality:
        from bench_tts_layouts import score

        items = [(t, None) for t in texts]
        results["float"] = score(ref, ref, items, sr)
        for k in variants:
            results["variants"][k].update(score(audio[k], ref, items, sr))
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

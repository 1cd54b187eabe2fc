"""Which HiFi-GAN convs INT8 can take: fixed node sets of a float HiFi-GAN bundle in INT8, side by side.

Each variant is written by edgeflow's QDQ writer (:func:`edgeflow.quant.qdq.insert_qdq`: int8 per-channel weights,
uint8 symmetric activations with percentile ranges from the calibration set, the HiFi-GAN residual stream of
fully quantized resblocks) without any search, so the table shows what each choice costs and buys:

- ``balanced-like``: stages 0-2 (resblocks; the first upsampler float), the shipped cpu ``balanced`` choice;
- ``all-but-last-resblocks``: every conv but the last stage's resblocks (conv_post always float);
- ``last-stage-first-convs``: the above plus the last stage's first conv of every resblock pair;
- ``all``: every conv but conv_post.

Speed: the float graph and every variant on the same mel (the calibration set's mels joined), 1 thread, interleaved,
fastest of ``--rounds``. Quality: PESQ-WB and DNSMOS P.808 against the recordings of ``--data`` (a folder of wavs,
e.g. the held-out asterisk prompts of ``bench_vocoders.py``), each variant vocoding the recording's log-mel.

    PYTHONPATH=. python bench/bench_hifigan_int8.py --bundle /tmp/d/out_q/bundle --calib /tmp/d/calib \\
        --data /tmp/d/heldout --work /tmp/hg_int8
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def variants(roles) -> Dict[str, Callable]:
    """name -> predicate over :class:`edgeflow.quant.graph.NodeRole` (conv_post never)."""
    last = max(int(r.flow[5:]) for r in roles if (r.flow or "").startswith("stage"))
    s = f"stage{last}"

    def first_conv(r):
        return r.flow == s and r.role == "resblock" and "convs1" in (r.weight or "")

    return {
        "balanced-like": lambda r: r.flow in {f"stage{i}" for i in range(last)} and r.role in ("resblock", "upsample")
        and not (r.flow == "stage0" and r.role == "upsample"),
        "all-but-last-resblocks": lambda r: not (r.flow == s and r.role == "resblock"),
        "last-stage-first-convs": lambda r: not (r.flow == s and r.role == "resblock") or first_conv(r),
        "all": lambda r: True,
    }


def build(bundle: Path, calib: Path, work: Path) -> Dict[str, Path]:
    """Write the float graph (with shapes) and every variant into ``work``; returns name -> path."""
    import onnx

    from edgeflow.quant.calibration import load_calibration_set
    from edgeflow.quant.graph import classify, residual_tensors, with_shapes
    from edgeflow.quant.qdq import collect_ranges, insert_qdq, tensors_for
    from edgeflow.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    model = with_shapes(onnx.load(str(bundle / "model.onnx")))
    feeds = [{"mel": m[None].astype(np.float32)} for m in load_calibration_set(calib, manifest["mel"]).mels]
    roles = [r for r in classify(model) if r.role != "waveform"]
    names = [r.name for r in roles]
    ranges = collect_ranges(model, tensors_for(model, names, True) | residual_tensors(model, names), feeds,
                            "percentile", 2)
    work.mkdir(parents=True, exist_ok=True)
    out = {"float": work / "float.onnx"}
    onnx.save(model, str(out["float"]))
    for name, pred in variants(roles).items():
        chosen = [r.name for r in roles if pred(r)]
        q, _ = insert_qdq(model, chosen, ranges, "uint8", True, True, residual_tensors(model, chosen))
        out[name] = work / f"{re.sub(r'[^a-z0-9-]', '_', name)}.onnx"
        onnx.save(q, str(out[name]))
        print(f"{name}: {len(chosen)} of {len(roles)} convs", flush=True)
    return out


def timing(paths: Dict[str, Path], mel: np.ndarray, rounds: int) -> Dict[str, float]:
    """Seconds per run (fastest of ``rounds``, interleaved) at 1 thread."""
    import onnxruntime as ort

    sessions = {}
    for k, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sessions[k] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        sessions[k].run(None, {"mel": mel})
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"mel": mel})
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def quality(paths: Dict[str, Path], clips: List[dict], sr: int) -> Dict[str, Dict[str, float]]:
    import onnxruntime as ort

    from edgeflow.validate.perceptual import dnsmos, pesq_wb

    out = {}
    for k, p in paths.items():
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        ys = [s.run(None, {"mel": c["mel"][None].astype(np.float32)})[0].reshape(-1) for c in clips]
        out[k] = {"pesq_wb": float(np.mean([pesq_wb(c["audio"], y, sr) for c, y in zip(clips, ys)])),
                  "dnsmos_p808": float(np.mean([dnsmos(y, sr)["p808"] for y in ys]))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a float32 HiFi-GAN bundle")
    ap.add_argument("--calib", type=Path, required=True, help="its calibration set")
    ap.add_argument("--data", type=Path, required=True, help="held-out recordings (folder of wavs)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from bench_vocoders import load_heldout

    from edgeflow.audio.mel import MelConfig
    from edgeflow.quant.calibration import load_calibration_set
    from edgeflow.runtime.bundle import read_manifest

    mel_cfg = MelConfig.from_dict(read_manifest(a.bundle)["mel"])
    paths = build(a.bundle, a.calib, a.work)
    mel = np.concatenate(load_calibration_set(a.calib, mel_cfg.to_dict()).mels, axis=1)[None].astype(np.float32)
    secs = timing(paths, mel, a.rounds)
    q = quality(paths, load_heldout(a.data, mel_cfg), mel_cfg.sample_rate)
    audio = mel.shape[2] * mel_cfg.hop_length / mel_cfg.sample_rate
    print("| graph | RTF 1 thr | x vs float | PESQ-WB | DNSMOS P.808 |\n|---|---:|---:|---:|---:|")
    for k in paths:
        print(f"| {k} | {secs[k] / audio:.3f} | {secs['float'] / secs[k]:.2f}x | {q[k]['pesq_wb']:.3f} | "
              f"{q[k]['dnsmos_p808']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

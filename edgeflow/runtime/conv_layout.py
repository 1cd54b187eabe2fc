"""The layout of a graph's 1-D convolutions, chosen when a session is created (no torch; onnx and numpy only).

A bundle stores its convolutions as 1-D ``Conv`` nodes (weights [O, I, k]). onnxruntime's CPU provider runs
those as im2col + GEMM, which scales well over threads; a 4-D ``Conv`` (weights [O, I, 1, k] on x.unsqueeze(2))
gets its blocked NCHWc kernels instead, faster on one thread but split only over channel blocks, so slower on
two. Measured on this project's CPU (x86-64, AVX-512, onnxruntime 1.32, 2026-12-04), a HiFi-GAN resblock "2"
stack on 2 s of 22.05 kHz audio, 32 / 64 channels: 1 thread 39.3 -> 28.8 ms / 137 -> 94 ms (1.37x / 1.46x
faster in 2-D), 2 threads 20.4 -> 23.4 ms / 66 -> 80 ms (1.15x / 1.20x slower). So the layout is a run-time
choice: :func:`choose_layout` picks 2-D for a single-threaded session on x86-64 (where onnxruntime has NCHWc
kernels) and keeps 1-D otherwise; ``Voice.load`` / ``Synthesizer.load`` take ``conv_layout`` to override it.

Only float convolutions are rewritten (their weight a plain initializer) whose channel counts suit the NCHWc
kernels (:func:`_blocked`); INT8 (QDQ) convs keep their ``DequantizeLinear -> Conv`` pattern, which onnxruntime
fuses into ``QLinearConv``. Each rewritten conv becomes ``Unsqueeze -> Conv(1 x k) -> Squeeze``: the same
arithmetic, float rounding aside.
"""

from __future__ import annotations

import platform
from typing import Any, Optional, Sequence, Tuple

import numpy as np

LAYOUTS = ("auto", "1d", "2d")
#: Channel block of onnxruntime's NCHWc kernels on AVX-512 (8 on AVX2: multiples of 16 suit both).
BLOCK = 16


def check_layout(layout: Any) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`.

    Raises:
        InputError: anything else.
    """
    if layout not in LAYOUTS:
        from edgeflow.core.errors import InputError

        raise InputError(f"conv_layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def choose_layout(layout: str, threads: Optional[int]) -> str:
    """The layout a session gets: ``layout`` itself unless "auto", which is "2d" for one intra-op thread on
    x86-64 and "1d" otherwise (more threads, or a CPU without onnxruntime's NCHWc kernels such as aarch64).

    Raises:
        InputError: an unknown layout.
    """
    if check_layout(layout) != "auto":
        return layout
    return "2d" if threads == 1 and platform.machine().lower() in ("x86_64", "amd64") else "1d"


def _attrs_2d(node: Any) -> Optional[dict]:
    """The Conv's attributes for a (1, k) kernel, or None when it cannot be rewritten (auto_pad)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    out = {"group": attrs.get("group", 1)}
    if "kernel_shape" in attrs:
        out["kernel_shape"] = [1, *attrs["kernel_shape"]]
    out["strides"] = [1, *attrs.get("strides", [1])]
    out["dilations"] = [1, *attrs.get("dilations", [1])]
    pads = attrs.get("pads", [0, 0])
    out["pads"] = [0, pads[0], 0, pads[1]]
    return out


def _blocked(node: Any, w: Any) -> bool:
    """Whether onnxruntime's NCHWc transformer takes this conv in 2-D: output channels a multiple of
    :data:`BLOCK`, input channels per group a multiple of it (or fewer, group 1), depthwise if grouped. Other convs
    would run 2-D im2col plus the Unsqueeze / Squeeze: slower than 1-D (measured on a pruned HiFi-GAN whose last
    stage has 24 and 8 channels: RTF 0.100 -> 0.107 at 1 thread)."""
    from onnx import helper

    group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    c_out, c_in = int(w.dims[0]), int(w.dims[1])                # c_in per group
    if c_out % BLOCK:
        return False
    if group == 1:
        return c_in % BLOCK == 0 or c_in < BLOCK
    return c_in == 1 and group == c_out                          # depthwise


def to_2d(model: Any) -> int:
    """Rewrite every float 1-D ``Conv`` of an onnx ModelProto as ``Unsqueeze -> Conv(1 x k) -> Squeeze``, in
    place. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    axes = "conv_layout_axes_h"
    nodes, done, count = [], {}, 0
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        attrs = _attrs_2d(node) if w is not None and len(w.dims) == 3 and _blocked(node, w) else None
        if attrs is None:
            nodes.append(node)
            continue
        if w.name not in done:
            done[w.name] = w.name + "_2d"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w)[:, :, None, :], done[w.name]))
        x4, y4, y = node.input[0] + f"_{count}_h", node.output[0] + "_h", node.output[0]
        conv = helper.make_node("Conv", [x4, done[w.name], *node.input[2:]], [y4], name=node.name, **attrs)
        tag = f"{node.name or 'conv'}_{count}"
        nodes += [helper.make_node("Unsqueeze", [node.input[0], axes], [x4], name=tag + "_unsqueeze_h"),
                  conv, helper.make_node("Squeeze", [y4, axes], [y], name=tag + "_squeeze_h")]
        count += 1
    if count:
        if axes not in inits:                                   # a graph rewritten before already has it
            graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
        used = {i for n in nodes for i in n.input}
        keep = [t for t in graph.initializer if t.name in used or t.name not in done]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def apply_layout(model: Any, conv_layout: str, threads: Optional[int],
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> str:
    """Give an onnx ModelProto the layout a session with ``threads`` and ``providers`` gets, in place.

    Args:
        conv_layout: "auto", "1d" or "2d" (see :func:`choose_layout`); anything but the CPU provider alone gets
            "1d" (other providers choose their own layouts), and so does a graph below opset 13 (Unsqueeze /
            Squeeze take their axes as inputs from 13 on) or with external data.
        threads: the session's intra-op threads (None: onnxruntime's default).
        providers: the resolved provider list.

    Returns:
        "2d" if any conv was rewritten, else "1d" (the model untouched).
    """
    from onnx.external_data_helper import uses_external_data

    if choose_layout(conv_layout, threads) == "1d" or list(providers) != ["CPUExecutionProvider"]:
        return "1d"
    opset = min((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13 or any(uses_external_data(t) for t in model.graph.initializer):
        return "1d"
    return "2d" if to_2d(model) else "1d"


def session_source(path: Any, conv_layout: str, threads: Optional[int], providers: Sequence[str]) -> Tuple[Any, str]:
    """What to hand ``onnxruntime.InferenceSession`` for the graph at ``path``, and the layout it has
    (:func:`apply_layout`): the path itself when nothing changes (the file is not parsed for "1d"), else the
    rewritten graph's bytes."""
    if choose_layout(conv_layout, threads) == "1d" or list(providers) != ["CPUExecutionProvider"]:
        return str(path), "1d"
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    layout = apply_layout(model, conv_layout, threads, providers)
    return (model.SerializeToString(), layout) if layout == "2d" else (str(path), layout)

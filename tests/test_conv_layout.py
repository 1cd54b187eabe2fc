"""The run-time layout of 1-D convolutions (edgeflow.runtime.conv_layout): exact rewrite, INT8 convs untouched,
the auto rule, and the loaders' option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeflow.core.errors import InputError
from edgeflow.runtime import conv_layout
from edgeflow.runtime.conv_layout import choose_layout, session_source, to_2d

CPU = ["CPUExecutionProvider"]


class _Stack(nn.Module):
    """Convs with every attribute the rewrite maps (padding, dilation, stride, depthwise groups, no bias, a shared
    weight), and two it must leave 1-D: 24 output channels, and a grouped conv that is not depthwise."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 16, 5, padding=4, dilation=2)
        self.b = nn.Conv1d(16, 16, 3, padding=1, groups=16, bias=False)
        self.c = nn.Conv1d(16, 32, 4, stride=2)
        self.d = nn.Conv1d(32, 24, 3, padding=1)
        self.e = nn.Conv1d(24, 32, 1, groups=2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = h + self.b(torch.relu(h))
        h = self.b(h)                                            # the same weight read twice
        return self.e(self.d(self.c(h)))


def _export(path, opset=17):
    import onnx

    torch.manual_seed(0)
    m = _Stack().eval()
    torch.onnx.export(m, (torch.randn(1, 4, 40),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "T"}, "y": {2: "T2"}}, opset_version=opset, dynamo=False)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, str(path))
    return m


def _run(source, x, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(source, so, providers=CPU).run(None, {"x": x})[0]


def test_rewrite_is_the_same_convolution(tmp_path):
    import onnx

    m = _export(tmp_path / "s.onnx")
    source, layout = session_source(tmp_path / "s.onnx", "2d", 1, CPU)
    assert layout == "2d" and isinstance(source, bytes)
    g = onnx.load_from_string(source).graph
    inits = {t.name: len(t.dims) for t in g.initializer}
    assert [inits[n.input[1]] for n in g.node if n.op_type == "Conv"] == [4, 4, 4, 4, 3, 3]
    assert sum(len(t.dims) == 3 for t in g.initializer) == 2          # the rewritten convs' 1-D weights are gone
    x = np.random.default_rng(0).standard_normal((1, 4, 57)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(source, x), ref, atol=1e-5)
    np.testing.assert_allclose(_run(str(tmp_path / "s.onnx"), x), ref, atol=1e-5)
    assert session_source(tmp_path / "s.onnx", "1d", 1, CPU) == (str(tmp_path / "s.onnx"), "1d")
    assert session_source(tmp_path / "s.onnx", "2d", 1, ["CUDAExecutionProvider"] + CPU)[1] == "1d"
    _export(tmp_path / "o11.onnx", opset=11)                  # axes are attributes before opset 13: left alone
    assert session_source(tmp_path / "o11.onnx", "2d", 1, CPU)[1] == "1d"


def test_int8_convs_keep_their_qdq_pattern():
    """A conv whose weight comes through DequantizeLinear (onnxruntime fuses it into QLinearConv) is not
    rewritten; a float one beside it is."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((16, 16, 3), np.int8), "wq"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.ones((16, 16, 3), np.float32), "wf")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1]),
             helper.make_node("Conv", ["h", "wf"], ["y"], pads=[1, 1])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16, "T"]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert to_2d(model) == 1
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == "w" and convs[1].input[1] == "wf_2d"


def test_auto_rule(monkeypatch):
    monkeypatch.setattr(conv_layout.platform, "machine", lambda: "x86_64")
    assert choose_layout("auto", 1) == "2d"
    assert choose_layout("auto", 2) == "1d" and choose_layout("auto", None) == "1d"
    assert choose_layout("1d", 1) == "1d" and choose_layout("2d", 4) == "2d"
    monkeypatch.setattr(conv_layout.platform, "machine", lambda: "aarch64")
    assert choose_layout("auto", 1) == "1d"
    with pytest.raises(InputError, match="conv_layout must be one of auto, 1d, 2d"):
        choose_layout("3d", 1)


def test_voice_and_synthesizer_take_the_option(tmp_path):
    from edgeflow.runtime import Synthesizer, Voice
    from tests.voice_helpers import make_bundle

    bundle = make_bundle(tmp_path / "v")
    assert session_source(bundle / "decoder.onnx", "2d", 1, CPU)[1] == "2d"       # its convs are rewritten
    ids = [1, 5, 6, 7, 2]
    a = Voice.load(bundle, threads=1, conv_layout="1d").speak_ids(ids, seed=3)
    b = Voice.load(bundle, threads=1, conv_layout="2d").speak_ids(ids, seed=3)
    assert a.size > 0 and np.abs(a - b).max() < 1e-5
    with pytest.raises(InputError, match="conv_layout"):
        Voice.load(bundle, conv_layout="nchw")
    with pytest.raises(InputError, match="conv_layout"):
        Synthesizer.load(bundle, conv_layout="nchw")

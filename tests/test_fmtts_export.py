"""fmtts export (text graph + one-evaluation field graph + vocoder) and the torch-free FmVoice runtime:
parity with PyTorch's ``synthesize`` (Euler, midpoint, sway, guidance), Voice.load dispatch, ``edgeflow say`` /
``edgeflow export``, torch-freedom, bad options."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.cli.main import main
from edgeflow.core.errors import BundleError, ConfigError, InputError
from edgeflow.export.fmtts import FIELD_FILE, export_fmtts_bundle
from edgeflow.export.onnx_export import runtime_ir_version
from edgeflow.models.fmtts import FmTts, FmTtsConfig
from edgeflow.models.hifigan import GeneratorConfig, HiFiGAN, HiFiGANConfig
from edgeflow.runtime import Voice
from export_helpers import run_torch_free
from edgeflow.runtime.fm_voice import FmVoice
from voice_helpers import make_bundle, snr_db, tiny_id_map

REPO = Path(__file__).resolve().parents[1]
MEL = MelConfig(sample_rate=16000, n_fft=512, hop_length=128, win_length=512, n_mels=32, fmax=8000.0)
GEN = GeneratorConfig(in_channels=32, resblock="2", resblock_kernel_sizes=[3, 5],
                      resblock_dilation_sizes=[[1, 2], [2, 6]], upsample_rates=[8, 4, 4],
                      upsample_kernel_sizes=[16, 8, 8], upsample_initial_channel=32)
TINY = dict(hidden=16, filter_channels=32, n_heads=2, n_layers=1, dec_channels=16, dec_levels=2, dec_blocks=1,
            prosody_channels=16, prosody_layers=1, prosody_flows=2, prosody_wn_channels=8, prosody_wn_layers=1,
            p_dropout=0.0, segment_frames=16, cfg_dropout=0.1)
IDS = [1, 20, 5, 3, 17, 30, 9, 44, 12, 2]
TEXT = "Hello, world. The second sentence is a little longer."
TOL = 1e-4


def tiny_fmtts(**kw) -> FmTts:
    idm = tiny_id_map()
    torch.manual_seed(0)
    model = FmTts(FmTtsConfig(num_symbols=max(i for v in idm.values() for i in v) + 1, phoneme_id_map=idm, mel=MEL,
                              **{**TINY, **kw})).eval()
    model.set_stats(-4.0, 2.0, [1.2, 5.0], [0.5, 0.3])          # non-trivial: the runtime must denormalize
    return model


def tiny_vocoder() -> HiFiGAN:
    torch.manual_seed(1)
    return HiFiGAN(HiFiGANConfig(mel=MEL, generator=GEN)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_fmtts()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fmtts") / "voice"
    export_fmtts_bundle(model, tiny_vocoder(), out, unroll=True)
    return out


@pytest.fixture(scope="module")
def voice(bundle):
    return Voice.load(bundle, threads=1)


def reference_mel(model, ids, seed, **opts) -> np.ndarray:
    out = model.synthesize(torch.tensor([ids]), seed=seed, **opts)
    return out["mel"][0, :, :int(out["mel_lens"][0])].numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_bundle_layout_manifest_and_graphs(bundle, model):
    import onnx

    man = json.loads((bundle / "manifest.json").read_text())
    assert (man["family"], man["task"], man["opset"]) == ("fmtts", "tts", 17)
    assert man["graphs"] == {"encoder": "model.onnx", "decoder": FIELD_FILE, "vocoder": "vocoder.onnx",
                             "unrolled": "ode_euler4.onnx"}
    assert set(man["files"]) == {"model.onnx", FIELD_FILE, "vocoder.onnx", "ode_euler4.onnx"}
    assert man["validation"]["passed"] and man["validation"]["rel_err"] < TOL
    assert man["sampling"]["unrolled"]["validation"]["passed"] and man["sampling"]["unrolled"]["nfe"] == 4
    assert all(c["durations_equal"] for c in man["validation"]["cases"] if c["graph"] == "text")
    assert man["stats"] == {"mel_mean": -4.0, "mel_std": 2.0} and man["sample_rate"] == 16000
    assert man["inference"] == {"noise_scale": model.config.temperature, "length_scale": 1.0,
                                "noise_w": model.config.tau}
    assert man["vocoder"]["family"] == "hifigan" and man["streaming"]["context_frames"]["left"] > 0
    for f in ("model.onnx", FIELD_FILE, "vocoder.onnx", "ode_euler4.onnx"):
        assert onnx.load(str(bundle / f)).ir_version <= runtime_ir_version()
    field = onnx.load(str(bundle / FIELD_FILE))
    assert [i.name for i in field.graph.input] == ["x", "cond", "mask", "t"]        # one evaluation per call
    convs = sum(n.op_type == "Conv" for n in field.graph.node)
    unrolled = onnx.load(str(bundle / "ode_euler4.onnx"))
    assert [i.name for i in unrolled.graph.input] == ["x0", "cond", "mask", "steps"]
    assert sum(n.op_type == "Conv" for n in unrolled.graph.node) == 4 * convs      # 4 evaluations, one field


def test_unrolled_graph_equals_the_field_loop(bundle, model):
    fast, loop = Voice.load(bundle, threads=1), Voice.load(bundle, threads=1)
    loop.unrolled = None
    for sway in (-1.0, 0.0, 0.7):
        a, b = fast.mel_ids(IDS, seed=8, sway=sway), loop.mel_ids(IDS, seed=8, sway=sway)
        assert rel_err(a, b) < 1e-5 and rel_err(a, reference_mel(model, IDS, 8, sway=sway)) < TOL
    real, calls = fast.unrolled["session"], []

    class Counting:
        def run(self, *args):
            calls.append(1)
            return real.run(*args)

    fast.unrolled = dict(fast.unrolled, session=Counting())
    fast.mel_ids(IDS, nfe=4, sway=0.2)                          # the exported NFE and solver: the unrolled graph
    fast.mel_ids(IDS, nfe=4, guidance=1.0)
    fast.mel_ids(IDS, nfe=2)
    fast.mel_ids(IDS, nfe=4, solver="midpoint")
    assert calls == [1]                                         # guidance, another NFE or solver: the field loop


@pytest.mark.parametrize("solver, nfe, sway, seed", [("euler", 4, -1.0, 3), ("euler", 1, 0.0, 4),
                                                     ("euler", 7, 0.8, 5), ("midpoint", 4, -1.0, 6),
                                                     ("midpoint", 6, 0.3, 7)])
def test_runtime_mel_equals_pytorch(voice, model, solver, nfe, sway, seed):
    opts = dict(nfe=nfe, solver=solver, sway=sway)
    got = voice.mel_ids(IDS, seed=seed, **opts)
    ref = reference_mel(model, IDS, seed, **opts)
    assert got.dtype == np.float32 and rel_err(got, ref) < TOL
    other = reference_mel(model, IDS, seed + 1, **opts)          # the comparison can fail: another seed differs
    assert got.shape != other.shape or rel_err(got, other) > 1e-2


def test_runtime_scales_and_guidance_match_pytorch(voice, model):
    got = voice.mel_ids(IDS, noise_scale=0.3, length_scale=1.4, noise_w=0.9, seed=2, nfe=3, guidance=1.5)
    ref = reference_mel(model, IDS, 2, temperature=0.3, length_scale=1.4, tau=0.9, nfe=3, guidance=1.5)
    assert rel_err(got, ref) < TOL
    plain = reference_mel(model, IDS, 2, temperature=0.3, length_scale=1.4, tau=0.9, nfe=3)
    assert rel_err(got, plain) > 1e-3                            # guidance changed the result


@pytest.mark.slow          # two exports (~25 s on a loaded 2-core machine)
def test_l2_prosody_and_unrolled_midpoint_export(tmp_path):
    model = tiny_fmtts(solver="midpoint", nfe=6, sway=0.3)
    export_fmtts_bundle(model, tiny_vocoder(), tmp_path / "l2", prosody="l2", unroll=True)
    v = Voice.load(tmp_path / "l2", threads=1)
    man = json.loads((tmp_path / "l2" / "manifest.json").read_text())
    assert man["sampling"]["prosody"] == "l2" and man["graphs"]["unrolled"] == "ode_midpoint6.onnx"
    assert v.unrolled["nfe"] == 6 and v.sampling["solver"] == "midpoint"
    assert rel_err(v.mel_ids(IDS, seed=1), reference_mel(model, IDS, 1, prosody="l2")) < TOL
    assert rel_err(v.mel_ids(IDS, seed=1, sway=-1.0), reference_mel(model, IDS, 1, prosody="l2", sway=-1.0)) < TOL
    export_fmtts_bundle(model, tiny_vocoder(), tmp_path / "plain")                 # default: no unrolled graph
    plain = Voice.load(tmp_path / "plain", threads=1)
    graphs = json.loads((tmp_path / "plain" / "manifest.json").read_text())["graphs"]
    assert plain.unrolled is None and "unrolled" not in graphs
    assert rel_err(plain.mel_ids(IDS, seed=1), reference_mel(model, IDS, 1)) < TOL


def test_voice_load_speaks_to_wav_and_streams(voice, tmp_path):
    assert isinstance(voice, FmVoice) and voice.kind == "fmtts" and voice.sample_rate == 16000
    audio, sr = voice.speak(TEXT, seed=3)
    assert sr == 16000 and audio.dtype == np.float32 and audio.size % 128 == 0 and np.all(np.isfinite(audio))
    assert np.array_equal(audio, voice.speak(TEXT, seed=3)[0])
    pieces = list(voice.speak_stream(TEXT, seed=3, chunk_frames=7, first_chunk_frames=3))
    assert len(pieces) > 4 and snr_db(audio, np.concatenate(pieces)) >= 40
    stats = voice.speak_to_wav(TEXT, tmp_path / "x.wav", seed=3, nfe=2, sway=0.0)
    info = sf.info(str(tmp_path / "x.wav"))
    assert info.samplerate == 16000 and abs(info.duration - stats["seconds"]) < 1e-3 and info.frames > 0


@pytest.mark.parametrize("opts, message", [({"nfe": 0}, "nfe"), ({"nfe": -2}, "nfe"), ({"nfe": 2.5}, "nfe"),
                                           ({"nfe": 3, "solver": "midpoint"}, "even"),
                                           ({"solver": "rk4"}, "solver"), ({"sway": 5.0}, "sway"),
                                           ({"guidance": float("nan")}, "guidance")])
def test_bad_ode_options_are_one_line_input_errors(voice, opts, message):
    for call in (lambda: voice.speak("Hi.", **opts), lambda: voice.mel_ids(IDS, **opts),
                 lambda: voice.speak_stream("Hi.", **opts)):
        with pytest.raises(InputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_say_cli_with_ode_options(bundle, voice, tmp_path, capsys):
    out = tmp_path / "say.wav"
    assert main(["say", str(bundle), "--text", TEXT, "-o", str(out), "--seed", "4", "--nfe", "2", "--sway", "0",
                 "--solver", "midpoint", "--threads", "1"]) == 0
    assert "fmtts" in capsys.readouterr().out
    audio, sr = sf.read(str(out), dtype="float32")
    ref, _ = voice.speak(TEXT, seed=4, nfe=2, sway=0.0, solver="midpoint")
    assert sr == 16000 and audio.shape == ref.shape and snr_db(np.clip(ref, -1, 1), audio) > 35
    for args, message in ((["--nfe", "0"], "nfe"), (["--nfe", "-1"], "nfe"), (["--sway", "9"], "sway")):
        assert main(["say", str(bundle), "--text", "Hi.", "-o", str(tmp_path / "bad.wav"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    vits = make_bundle(tmp_path / "vits")                       # a VITS bundle has no ODE options
    assert main(["say", str(vits), "--text", "Hi.", "-o", str(tmp_path / "bad.wav"), "--nfe", "4"]) == 2
    assert "fmtts" in capsys.readouterr().err
    assert not (tmp_path / "bad.wav").exists()


def test_export_bad_inputs_fail_early_and_write_nothing(model, bundle, tmp_path, capsys):
    from edgeflow.models.checkpoint import save_model

    save_model(tmp_path / "model.pt", model)
    assert main(["export", str(tmp_path / "model.pt"), "-o", str(tmp_path / "b")]) == 2
    assert "--vocoder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "model.pt"), "--vocoder", str(tmp_path / "none"),
                 "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocoder not found" in err
    with pytest.raises(BundleError, match="already exists"):
        export_fmtts_bundle(model, tiny_vocoder(), bundle)
    other = HiFiGAN(HiFiGANConfig(mel=MelConfig(sample_rate=16000, n_fft=512, hop_length=128, win_length=512,
                                                n_mels=32, fmax=7000.0), generator=GEN))
    with pytest.raises(ConfigError, match="fmax"):
        export_fmtts_bundle(model, other, tmp_path / "c")
    with pytest.raises(ConfigError, match="phoneme_id_map"):
        export_fmtts_bundle(FmTts(FmTtsConfig(num_symbols=20, mel=MEL, **TINY)), tiny_vocoder(), tmp_path / "d")
    voc = tmp_path / "voc"
    shutil.copytree(bundle, voc)                                 # a voice bundle is not a vocoder bundle
    with pytest.raises(BundleError, match="vocoder"):
        export_fmtts_bundle(model, voc, tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "voc"]


@pytest.mark.slow          # two exports (~25 s on a loaded 2-core machine)
def test_export_cli_from_model_pt(model, tmp_path, capsys):
    from edgeflow.models.checkpoint import save_model

    save_model(tmp_path / "model.pt", model)
    save_model(tmp_path / "voc.pt", tiny_vocoder())
    assert main(["export", str(tmp_path / "model.pt"), "--vocoder", str(tmp_path / "voc.pt"),
                 "-o", str(tmp_path / "b")]) == 0
    assert "fmtts" in capsys.readouterr().out
    v = Voice.load(tmp_path / "b", threads=1)
    assert rel_err(v.mel_ids(IDS, seed=9), reference_mel(model, IDS, 9)) < TOL
    assert main(["export", str(tmp_path / "model.pt"), "--vocoder", str(tmp_path / "b"),   # a bundle as vocoder
                 "-o", str(tmp_path / "b2")]) == 2


def test_tampered_graph_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / FIELD_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        Voice.load(copy)


TORCH_FREE = r"""
from edgeflow.runtime import Voice
import edgeflow.runtime.fm_voice  # registers the fmtts loader (a no-op once edgeflow.runtime imports it)
v = Voice.load(sys.argv[1], threads=1)
audio, sr = v.speak("Hello there. Bye.", nfe=2, solver="midpoint", guidance=0.5)
assert type(v).__name__ == "FmVoice" and audio.size > 0 and sr == 16000 and list(v.speak_stream("Hi."))
"""


def test_fm_voice_runtime_is_torch_free(bundle):
    run_torch_free(TORCH_FREE, str(bundle))
    assert re.search(r"^import torch", (REPO / "edgeflow/runtime/fm_voice.py").read_text(), re.M) is None


def test_shipped_demo_checkpoint_loads_and_matches_its_card():
    """models/fm-tts-demo/model.pt: a weights-only load gives the fmtts family at the card's size, and a short
    synthesis is finite and of the length its durations say (speech quality is measured in the card, not here)."""
    from pathlib import Path

    from edgeflow.models.checkpoint import load_model

    path = Path(__file__).resolve().parents[1] / "models" / "fm-tts-demo" / "model.pt"
    model, ckpt = load_model(path)
    assert ckpt["family"] == "fmtts" and ckpt["meta"]["step"] == 4675 and ckpt["meta"]["init"]["step"] == 3204
    assert sum(p.numel() for p in model.parameters()) == 3_284_602
    card = (path.parent / "README.md").read_text()
    assert "3,284,602 parameters" in card and "step-4675" in card
    assert model.config.guidance == ckpt["meta"]["sampling_defaults"]["guidance"] == 0.75   # the card's default
    assert "guidance 0.75" in card
    import torch

    with torch.no_grad():
        out = model.eval().synthesize(torch.tensor([IDS]), seed=0)
    mel, frames = out["mel"], int(out["mel_lens"][0])
    assert torch.isfinite(mel).all() and mel.shape[1] == 80
    assert frames == int(out["durations"].sum()) > len(IDS)
    assert mel[0, :, :frames].std() > 0.5                   # a mel with structure, not a constant

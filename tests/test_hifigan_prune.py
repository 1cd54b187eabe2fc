"""Pass ``generator_prune`` (edgeflow/passes/vocoder_generator.py) on a tiny random HiFi-GAN: the generator's
channel groups cut by the ratio, distilled against the teacher's own audio, the audio shape kept, the pruned model
exported with parity through the runtime; refused in one line for a flow vocoder; skipped without data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.audio.mel import MelConfig
from edgeflow.core.errors import ConfigError
from edgeflow.models.checkpoint import load_model, save_model
from edgeflow.models.hifigan import GeneratorConfig, HiFiGAN, HiFiGANConfig

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
MEL = MelConfig(sample_rate=SR, n_fft=512, hop_length=128, win_length=512, n_mels=32, fmax=8000.0)
#: V1's layout (resblock "1": inner channel groups too), three upsamplings, few channels; hop 128 = 8 * 4 * 4.
GEN = GeneratorConfig(in_channels=32, resblock="1", resblock_kernel_sizes=[3, 5],
                      resblock_dilation_sizes=[[1, 3], [1, 3]], upsample_rates=[8, 4, 4],
                      upsample_kernel_sizes=[16, 8, 8], upsample_initial_channel=32)
FINETUNE = {"steps": 6, "max_minutes": 1, "batch": 2, "valid_every": 3, "threads": 1, "lr": 1e-3}


def _speechlike(n: int, f0: float, rng) -> np.ndarray:
    t = np.arange(n) / SR
    voiced = sum(np.sin(k * 2 * np.pi * f0 * (t + 0.05 * t * t)) / k for k in range(1, 12))
    return (0.2 * voiced * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _model(seed: int = 0) -> HiFiGAN:
    """Random conv weights of variance 0.64 / fan-in (HiFi-GAN's own init gives near-silence), zero biases,
    conv_pre / conv_post without a DC response: a zero-mean output of std ~0.1, far from tanh's saturation."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HiFiGAN(HiFiGANConfig(mel=MEL, generator=GEN)).eval()
        with torch.no_grad():
            for name, mod in model.named_modules():
                if not isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                    continue
                w = mod.weight.detach()
                fan = w[0].numel() if isinstance(mod, torch.nn.Conv1d) else w.shape[0] * w.shape[2] / mod.stride[0]
                w = torch.randn(w.shape) * 0.8 / fan ** 0.5
                if name.endswith(("conv_pre", "conv_post")):
                    w = w - w.mean(dim=(1, 2), keepdim=True)
                mod.parametrizations.weight.original0.copy_(w.norm(dim=(1, 2), keepdim=True))
                mod.parametrizations.weight.original1.copy_(w)
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """A folder of training wavs (the pass's ``data`` option accepts one)."""
    d = tmp_path_factory.mktemp("gp") / "wavs"
    rng = np.random.default_rng(0)
    for i in range(6):
        save_wav(d / f"u{i}.wav", _speechlike(int(SR * (0.5 + 0.1 * i)), 100 + 20 * i, rng), SR)
    return d


def _run(model, wavs, tmp_path, **opts):
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    art = Artifact(model=model, reference=_model())
    ctx = PassContext(work_dir=tmp_path, progress=False, seed=0)
    opts = {"ratio": 0.5, "data": str(wavs), "windows": 8, "valid_windows": 2, "window_frames": 16,
            "score_windows": 4, "finetune": FINETUNE, **opts}
    record = apply_pass(art, make_config("generator_prune", opts), ctx)
    return art, record


def test_prunes_distills_and_keeps_the_output_shape(wavs, tmp_path):
    """Every channel group halved (inner groups too), FLOPs and parameters down, the distillation ran and its
    validation loss against the teacher's audio went down from the pruned start."""
    art, record = _run(_model(), wavs, tmp_path)
    gen = art.model.generator
    assert gen.config.widths() == [16, 8, 4, 2]
    assert gen.config.inner_channels == [[8, 8], [8, 8], [4, 4], [4, 4], [2, 2], [2, 2]]   # two blocks a stage
    d = record["details"]
    assert d["after"]["parameters"] < 0.35 * d["before"]["parameters"]
    assert d["after"]["gflops_per_audio_second"] < 0.35 * d["before"]["gflops_per_audio_second"]
    assert "teacher's audio" in d["data"] and any(g.startswith("stage0 16 -> 8") for g in d["groups"])
    t = d["training"]
    assert t["steps"] == FINETUNE["steps"] and t["valid_best"] < t["valid_before"]
    mel = torch.randn(1, MEL.n_mels, 11)
    out = art.model.synthesize(mel)
    assert out.shape == (1, 11 * MEL.hop_length) and torch.isfinite(out).all()


def test_refit_option_reaches_the_pruning(wavs, tmp_path):
    """The least-squares refit (default on) changes the pruned start the distillation sees. Whether it lowers
    the held-out distance is a property of a trained model (on this tiny random one, fitted on 8 windows of 16
    frames, it does not); that it lowers the error on its own inputs is tested in test_generator_prune.py."""
    opts = {"finetune": {**FINETUNE, "steps": 1}, "score_windows": 8}
    fit = _run(_model(), wavs, tmp_path / "a", **opts)[1]["details"]
    ind = _run(_model(), wavs, tmp_path / "c", refit_mode="independent", **opts)[1]["details"]
    raw = _run(_model(), wavs, tmp_path / "b", refit=False, **opts)[1]["details"]
    assert fit["refit"] == "sequential" and ind["refit"] == "independent" and raw["refit"] is False
    assert "caution" not in fit                                  # recordings, not a calibration set's mels
    starts = [d["training"]["valid_before"] for d in (fit, ind, raw)]
    assert len({round(v, 4) for v in starts}) == 3, starts


def test_pruned_model_saves_exports_and_matches_the_runtime(wavs, tmp_path):
    """The pruned model round-trips through model.pt and exports (phase-form upsamplers) with runtime parity."""
    from edgeflow.runtime import Synthesizer
    from edgeflow.validate.export import export_bundle

    art, _ = _run(_model(), wavs, tmp_path / "w", finetune={**FINETUNE, "steps": 2})
    save_model(tmp_path / "pruned.pt", art.model)
    model, _ = load_model(tmp_path / "pruned.pt")
    assert model.config.generator.widths() == [16, 8, 4, 2]
    mel = np.random.default_rng(1).standard_normal((MEL.n_mels, 23)).astype(np.float32) - 4.0
    with torch.no_grad():
        ref = art.model.synthesize(torch.from_numpy(mel[None]))[0].numpy()
    export_bundle(model, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["family"] == "hifigan"
    out = np.asarray(Synthesizer.load(tmp_path / "bundle", threads=1).synthesize(mel)).reshape(-1)
    assert out.shape == ref.shape and float(np.abs(out - ref).max()) < 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(ref).max()) > 1e-3                  # a real signal, not silence on both sides


def test_refused_on_a_flow_vocoder_in_one_line(tmp_path):
    """The pipeline asks the pass before anything runs: a WaveFlow model gets one line naming pass and family."""
    from edgeflow.models.family import get_family
    from edgeflow.passes.base import make_config
    from edgeflow.pipeline import check_family

    cfg = make_config("generator_prune", {"ratio": 0.5})
    assert cfg.refusal(get_family("hifigan")) is None
    why = cfg.refusal(get_family("waveflow"))
    assert why and "waveflow" in why
    model, _ = load_model(ROOT / "models" / "waveflow-demo" / "model.pt")
    with pytest.raises(ConfigError) as err:
        check_family([cfg], model, "fast", "cpu")
    msg = str(err.value)
    assert "\n" not in msg and "generator_prune" in msg and "waveflow" in msg


def test_bad_options_and_no_data(tmp_path):
    """Bad options are refused when the recipe is read; no training data: skipped, model unchanged."""
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    for bad in ({"ratio": 1.0}, {"windows": 0}, {"finetune": {"stepz": 3}}, {"score_windows": 0},
                {"refit_mode": "joint"}):
        with pytest.raises(ConfigError):
            make_config("generator_prune", bad)
    model = _model()
    art = Artifact(model=model, reference=_model())
    rec = apply_pass(art, make_config("generator_prune", {}), PassContext(work_dir=tmp_path, progress=False))
    assert "skipped" in rec["details"] and art.model is model

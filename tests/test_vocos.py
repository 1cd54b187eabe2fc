"""The "vocos" family: the written-out inverse STFT, the model's shapes and receptive field, training on the
shared loop, export and the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.mel import MelConfig, hann_window, log_mel
from edgeflow.models import get_family
from edgeflow.models.base import build_model
from edgeflow.models.vocos import ISTFT, Vocos, VocosConfig, flops_per_frame, receptive_field
from edgeflow.train.recipe import load_recipe
from edgeflow.train.trainer import Trainer

from test_train import make_corpus, read_log

TINY = {"net": {"channels": 16, "hidden": 32, "layers": 2, "kernel_size": 7}}


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Windowed frames [n_fft, F] of x in the log-mel framing (reflect pad (n_fft - hop) / 2, no centring)."""
    pad = (n_fft - hop) // 2
    xp = np.pad(x, pad, mode="reflect")
    window = hann_window(n_fft)
    count = len(x) // hop
    return np.stack([xp[t * hop:t * hop + n_fft] * window for t in range(count)], axis=1)


@pytest.mark.parametrize("n_fft,hop", [(1024, 256), (512, 128), (64, 32)])
def test_istft_inverts_the_mel_framing_stft(n_fft, hop):
    x = np.random.default_rng(0).standard_normal(hop * 37)
    spec = np.fft.rfft(_frames(x, n_fft, hop), axis=0)
    real, imag = (torch.from_numpy(v[None].astype(np.float32)) for v in (spec.real, spec.imag))
    y = ISTFT(n_fft, hop)(real, imag)[0].numpy()
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=2e-5)


def test_istft_frame_count_matches_the_mel():
    cfg = MelConfig()
    x = np.random.default_rng(1).standard_normal(cfg.hop_length * 20).astype(np.float32)
    assert log_mel(x, cfg).shape[1] == _frames(x, cfg.n_fft, cfg.hop_length).shape[1] == 20


def test_model_shape_and_receptive_field():
    torch.manual_seed(0)
    model = build_model("vocos", TINY).eval()
    hop = model.hop_length
    mel = torch.randn(1, 80, 60)
    with torch.no_grad():
        out = model(mel)
        assert out.shape == (1, 60 * hop)
        rf = receptive_field(model.config)["left"]
        changed = mel.clone()
        changed[..., 0] += 5.0                      # frame 0 changes: samples beyond its field must not
        diff = (model(changed) - out).abs()[0]
    assert diff[: hop].max() > 0
    assert diff[(rf + 1) * hop:].max() == 0


def test_config_checks():
    from edgeflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match="odd"):
        VocosConfig.from_dict({"net": {"kernel_size": 4}})
    with pytest.raises(ConfigError, match="multiple"):
        VocosConfig.from_dict({"mel": {"n_fft": 1000, "win_length": 1000}})


def test_cost_model_is_far_below_hifigan():
    from edgeflow.models.hifigan import HiFiGANConfig

    vocos = get_family("vocos").flops_breakdown(VocosConfig())
    hifigan = get_family("hifigan").flops_breakdown(HiFiGANConfig())
    assert sum(vocos.values()) == pytest.approx(flops_per_frame(VocosConfig()) * 22050 / 256)
    assert 30 * sum(vocos.values()) < sum(hifigan.values())


def test_trains_on_the_shared_loop_and_exports(tmp_path):
    corpus = make_corpus(tmp_path / "c", n=10, seconds=0.5)
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "edgeflow" / "recipes" / "vocos-small.json")
    data = recipe.to_dict()
    data["model"]["net"] = TINY["net"]
    data["train"].update({"batch_size": 4, "segment_length": 4096, "lr": 2e-3, "valid_every": 20,
                          "valid_clips": 2, "valid_segment": 4096, "log_every": 1, "ckpt_every": 0})
    (tmp_path / "r.json").write_text(json.dumps(data))
    trainer = Trainer(load_recipe(tmp_path / "r.json"), corpus, tmp_path / "run", device="cpu", progress=False)
    summary = trainer.train(steps=40)
    rows = read_log(tmp_path / "run" / "log.csv")
    losses = np.array([float(r["loss"]) for r in rows])
    assert summary["steps"] == 40 and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    valid = [float(r["valid_nll"]) for r in rows if r["valid_nll"]]
    assert len(valid) == 2 and valid[1] < valid[0]

    from edgeflow.export.onnx_export import export_bundle
    from edgeflow.models.checkpoint import load_model
    from edgeflow.runtime import Synthesizer

    model, _ = load_model(tmp_path / "run" / "model.pt", family="vocos")
    export_bundle(model, tmp_path / "bundle")
    synth = Synthesizer.load(tmp_path / "bundle", threads=1)
    mel = log_mel(np.random.default_rng(0).standard_normal(256 * 30).astype(np.float32) * 0.1, model.config.mel)
    with torch.no_grad():
        ref = model(torch.from_numpy(mel)[None])[0].numpy()
    np.testing.assert_allclose(synth.synthesize(mel), ref, atol=1e-4)

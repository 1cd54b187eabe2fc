"""Spectral fine-tuning (``Distiller`` with ``target="audio"``, ``edgeflow finetune``): the synthesis moves
towards the recordings, the settings refuse what cannot work, and the command resumes and fails cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.cli.main import main
from edgeflow.compress.data import DistillData, from_wav_folder
from edgeflow.compress.distill import DistillSettings, Distiller, segment_length
from edgeflow.core.errors import ConfigError
from edgeflow.models import build_model
from edgeflow.models.checkpoint import load_model, save_model
from export_helpers import SR, tiny_model
from test_train import TINY_RECIPE, make_corpus

AUDIO = dict(target="audio", l1_weight=0.0, stft_weight=0.0, mel_weight=1.0, nll_weight=0.05, steps=30, segment=512,
             batch_size=2, lr=2e-3, valid_every=10, patience=0, ckpt_every=10, valid_segments=4, device="cpu")


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """Four 1 s harmonic tones at the tiny models' 8 kHz: a clear spectral target."""
    d = tmp_path_factory.mktemp("tones")
    t = np.arange(SR) / SR
    for i in range(4):
        f0 = 180 + 50 * i
        audio = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in (1, 2, 3))
        save_wav(d / f"t{i}.wav", audio.astype(np.float32), SR)
    return d


def test_audio_target_settings_are_checked():
    with pytest.raises(ValueError, match="target"):
        DistillSettings(target="recordings")
    with pytest.raises(ValueError, match="l1_weight 0"):
        DistillSettings(target="audio")                      # l1_weight defaults to 1
    assert DistillSettings(target="audio", l1_weight=0.0).target == "audio"


def test_audio_target_needs_recordings():
    model = tiny_model("waveflow")
    s = DistillSettings(**AUDIO)
    mels = [np.full((model.config.mel.n_mels, 40), -5.0, np.float32)]
    data = DistillData(model.config.mel, segment_length(s, model), 0, mels=mels, valid=mels, source="mels only")
    with pytest.raises(ConfigError, match="needs recordings"):
        Distiller(model, tiny_model("waveflow"), data, s, "/nonexistent", progress=False)


def test_spectral_finetune_moves_synthesis_towards_the_recordings(tmp_path, tones):
    model = tiny_model("waveflow")
    s = DistillSettings(**AUDIO)
    data = from_wav_folder(tones, model.config.mel, segment_length(s, model), 0, 4)
    student = tiny_model("waveflow")
    d = Distiller(model, student, data, s, tmp_path, progress=False, log=lambda m: None)
    parts = d.loss(0)
    assert set(parts) == {"l1", "stft", "mel", "nll", "total"}
    total, mel, nll = (float(parts[k].detach()) for k in ("total", "mel", "nll"))
    assert total == pytest.approx(mel + 0.05 * nll, rel=1e-5)
    audio, lm = data.valid_batches(2)[0]
    half = d._distance(0.5 * audio, audio)                  # log 2 where no mel bin sits at the clamp
    assert d._distance(audio, audio) == 0.0 and 0.3 < half <= np.log(2) + 1e-6
    out = d.run()
    assert out["steps"] == 30
    assert out["valid_distance_best"] < 0.8 * out["valid_distance_before"]
    # the student was trained in place; the teacher (its starting point) was not
    assert not all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), model.state_dict().values()))


def test_finetune_command_writes_a_safe_checkpoint_and_resumes(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    torch.manual_seed(0)
    model = build_model("waveflow", TINY_RECIPE["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model(tmp_path / "in.pt", model, meta={"step": 7})
    args = ["finetune", str(tmp_path / "in.pt"), "--data", str(corpus), "--out", str(tmp_path / "run"),
            "--steps", "4", "--threads", "1", "--device", "cpu", "--no-progress",
            "--set", "segment=2048", "--set", "valid_every=2", "--set", "ckpt_every=2", "--set", "valid_segments=2",
            "--set", "sigma=0.3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "4 steps" in first and "validation spectral distance" in first
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ckpt["meta"]["step"] == 7 and ckpt["meta"]["finetune"]["settings"]["target"] == "audio"
    tuned, _ = load_model(tmp_path / "run" / "model.pt")
    assert tuned.config.sigma_infer == 0.3 and model.config.sigma_infer != 0.3    # synthesizes as trained
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))
    assert main(args) == 0                                   # done: resumes to the same weights, no training
    again, _ = load_model(tmp_path / "run" / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("bad", ["no_corpus", "bad_set"])
def test_finetune_bad_input_is_one_line_exit_2(tmp_path, capsys, bad):
    save_model(tmp_path / "in.pt", tiny_model("waveflow"))
    data = tmp_path / "empty"
    data.mkdir()
    extra = []
    if bad == "bad_set":
        data = make_corpus(tmp_path / "corpus", n=4)
        extra = ["--set", "l1_weight=1"]
    rc = main(["finetune", str(tmp_path / "in.pt"), "--data", str(data), "--out", str(tmp_path / "run"),
               "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("edgeflow: error:")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_log_magnitude_only_stft_loss():
    from edgeflow.audio.losses import mr_stft_loss

    a = torch.randn(1, 8192, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(mr_stft_loss(0.5 * a, a, sc=False)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(mr_stft_loss(0.5 * a, a)) == pytest.approx(np.log(2) + 0.5, rel=1e-6)
    # against a target of other fine structure, spectral convergence is lowest for a quieter output
    # (about pi/4 of the level for independent noise); log-magnitudes are lowest at the target's level
    b = torch.randn(1, 8192, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sc = lambda x: float(mr_stft_loss(x, a)) - float(mr_stft_loss(x, a, sc=False))
    logmag = lambda x: float(mr_stft_loss(x, a, sc=False))
    assert sc(0.8 * b) < sc(b) and sc(0.8 * b) < sc(0.6 * b)
    assert logmag(b) < logmag(0.8 * b) and logmag(b) < logmag(1.25 * b)

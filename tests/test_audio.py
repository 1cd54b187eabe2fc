"""Audio front-end: numpy log-mel vs librosa (test-only reference), torch LogMel vs numpy, wav I/O and errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from edgeflow.audio.io import check_audio, load_wav, resample, save_wav
from edgeflow.audio.mel import MelConfig, hann_window, log_mel, mel_filterbank, num_frames
from edgeflow.audio.mel_torch import LogMel, log_mel_torch
from edgeflow.core.errors import AudioError, InputError

librosa = pytest.importorskip("librosa")

SR = 22050



def speech_like(n=SR // 2, sr=SR, seed=0):
    """Speech-like test audio: harmonics with vibrato plus noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 12)) + 0.02 * rng.standard_normal(n)
    return (x * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)).astype(np.float32)




def librosa_log_mel(audio: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """The HiFi-GAN convention computed with librosa's STFT and filterbank."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    x = np.pad(audio.astype(np.float64), (pad, pad), mode="reflect")
    spec = librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                        window="hann", center=False, dtype=np.complex128)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
                             dtype=np.float64)
    return np.log(np.maximum(fb @ mag, cfg.log_clamp))


# -- mel filterbank and log-mel vs librosa ---------------------------------------------------------------------------

def test_filterbank_equals_librosa():
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000, dtype=np.float64)
    ours = mel_filterbank(MelConfig())
    assert ours.shape == (80, 513)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [(16000, 512, 40, 50.0, 7600.0), (24000, 2048, 100, 0.0, 12000.0)])
def test_filterbank_equals_librosa_other_configs(sr, n_fft, n_mels, fmin, fmax):
    cfg = MelConfig(sample_rate=sr, n_fft=n_fft, hop_length=n_fft // 4, win_length=n_fft, n_mels=n_mels,
                    fmin=fmin, fmax=fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)
    np.testing.assert_allclose(mel_filterbank(cfg), ref, rtol=1e-9, atol=1e-12)


def test_hann_is_periodic():
    np.testing.assert_allclose(hann_window(1024), torch.hann_window(1024, dtype=torch.float64).numpy(), atol=1e-15)
    import scipy.signal
    np.testing.assert_allclose(hann_window(800), scipy.signal.get_window("hann", 800, fftbins=True), atol=1e-15)


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(win_length=800), MelConfig(n_fft=512, hop_length=128,
                                                                                    win_length=512, fmin=80.0)],
                         ids=["default", "win800", "n512"])
def test_log_mel_equals_librosa_reference(cfg):
    audio = speech_like(256 * 40)
    ours = log_mel(audio, cfg)
    ref = librosa_log_mel(audio, cfg)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (cfg.n_mels, 256 * 40 // cfg.hop_length)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # not trivially clamped: most of the spectrogram is above the floor
    assert (ref > np.log(cfg.log_clamp) + 1).mean() > 0.9


def test_log_mel_frames_batch_and_errors():
    cfg = MelConfig()
    assert num_frames(256 * 7, cfg) == 7 and log_mel(speech_like(256 * 7), cfg).shape == (80, 7)
    a, b = speech_like(2048, seed=1), speech_like(2048, seed=2)
    both = log_mel(np.stack([a, b]), cfg)
    assert both.shape == (2, 80, 8)
    np.testing.assert_array_equal(both[1], log_mel(b, cfg))
    silent = log_mel(np.zeros(1024, np.float32), cfg)
    assert np.isfinite(silent).all() and silent.min() >= np.log(cfg.log_clamp) - 1e-6
    with pytest.raises(InputError):
        log_mel(np.zeros((1, 2, 3)), cfg)
    with pytest.raises(InputError):
        log_mel(np.zeros(100), cfg)          # shorter than the reflect padding
    with pytest.raises(Exception):
        MelConfig(win_length=2048)


# -- torch LogMel vs numpy ------------------------------------------------------------------------------------------

def test_torch_log_mel_matches_numpy():
    cfg = MelConfig()
    audio = np.stack([speech_like(256 * 24, seed=3), speech_like(256 * 24, seed=4)])
    ref = log_mel(audio, cfg)
    out64 = LogMel(cfg)(torch.from_numpy(audio).double())
    assert out64.shape == ref.shape
    np.testing.assert_allclose(out64.numpy(), ref, rtol=1e-5, atol=1e-5)
    out32 = LogMel(cfg)(torch.from_numpy(audio))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-3, atol=2e-3)
    one = log_mel_torch(torch.from_numpy(audio[0]).double(), cfg)
    np.testing.assert_allclose(one.numpy(), ref[0], rtol=1e-5, atol=1e-5)
    small = MelConfig(n_fft=512, hop_length=128, win_length=400, n_mels=40)
    np.testing.assert_allclose(LogMel(small)(torch.from_numpy(audio).double()).numpy(), log_mel(audio, small),
                               rtol=1e-5, atol=1e-5)


def test_torch_log_mel_is_differentiable():
    x = torch.from_numpy(speech_like(2048)).double().requires_grad_()
    LogMel()(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


# -- wav I/O --------------------------------------------------------------------------------------------------------

def test_wav_round_trip(tmp_path):
    audio = speech_like(SR // 4)
    save_wav(tmp_path / "a.wav", audio, SR)
    back, sr = load_wav(tmp_path / "a.wav")
    assert sr == SR and back.dtype == np.float32 and back.shape == audio.shape
    assert np.abs(back - audio).max() <= 1.0 / 32768 + 1e-7       # 16-bit PCM quantisation only
    info = sf.info(str(tmp_path / "a.wav"))
    assert info.subtype == "PCM_16" and info.channels == 1
    assert not list(tmp_path.glob(".*.tmp"))                          # atomic write left nothing behind
    save_wav(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.5], np.float32), SR)   # clipped, not wrapped
    loud, _ = load_wav(tmp_path / "loud.wav")
    np.testing.assert_allclose(loud, [32767 / 32768, -1.0, 0.5], atol=1e-4)


def test_wav_resampling_and_stereo(tmp_path):
    sr_in = 16000
    t = np.arange(sr_in // 2) / sr_in
    save_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr_in)
    audio, sr = load_wav(tmp_path / "tone.wav", sample_rate=SR)
    assert sr == SR and abs(len(audio) - SR // 2) <= 1
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spec) * SR / len(audio)
    assert abs(peak_hz - 440) < 3
    mid = slice(len(audio) // 4, 3 * len(audio) // 4)
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(audio)) / SR)
    assert np.abs(audio[mid] - ideal[mid]).max() < 5e-3
    np.testing.assert_array_equal(resample(audio, SR, SR), audio)
    stereo = np.stack([0.4 * np.ones(1000), -0.2 * np.ones(1000)], axis=1)
    sf.write(str(tmp_path / "st.wav"), stereo, 8000, subtype="FLOAT")
    mono, sr = load_wav(tmp_path / "st.wav")
    assert sr == 8000 and mono.shape == (1000,) and np.allclose(mono, 0.1)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_unreadable_empty_missing_wav(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError) as info:
        load_wav(garbage)
    assert "garbage.wav" in _one_line(info)
    riff = tmp_path / "riff.wav"
    riff.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 10)    # a truncated header
    with pytest.raises(AudioError):
        load_wav(riff)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty") as info:
        load_wav(empty)
    _one_line(info)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError):
        load_wav(zero_bytes)
    with pytest.raises(AudioError, match="not found") as info:
        load_wav(tmp_path / "missing.wav")
    _one_line(info)
    with pytest.raises(AudioError, match="not found"):
        load_wav(tmp_path)                                                 # a folder is not a file


def test_bad_audio_values(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "nan.wav", np.array([0.0, np.nan], np.float32), SR)
    assert not (tmp_path / "nan.wav").exists()
    with pytest.raises(AudioError, match="empty"):
        save_wav(tmp_path / "e.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError):
        check_audio(np.zeros((2, 10)))
    save_wav(tmp_path / "long.wav", np.zeros(SR * 3, np.float32), SR)
    with pytest.raises(AudioError, match="limit"):
        load_wav(tmp_path / "long.wav", max_seconds=2)
    assert load_wav(tmp_path / "long.wav", max_seconds=None)[0].shape == (SR * 3,)

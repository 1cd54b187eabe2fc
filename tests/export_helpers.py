"""Tiny perturbed models for the export and runtime tests (shared by test_export.py and test_runtime.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from edgeflow.audio.snr import snr_db  # noqa: F401 - the tests' SNR is the project's
from edgeflow.models import build_model
from edgeflow.models.checkpoint import save_model

#: A small front-end (8 kHz, hop 64, 20 mels) so graphs and runs stay tiny.
MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 20, "fmax": 4000.0}
HOP, N_MELS, SR = 64, 20, 8000

CONFIGS = {
    "waveflow": {"n_flows": 2, "n_layers": 2, "height": 8, "channels": 8, "upsample_factors": [8, 8], "mel": MEL},
    "waveglow": {"n_flows": 4, "n_group": 8, "n_early_every": 2, "n_early_size": 2, "wn_layers": 2,
                 "wn_channels": 16, "mel": MEL},
}


def tiny_model(family: str, seed: int = 0, scale: float = 0.05, **overrides) -> torch.nn.Module:
    """A small model whose parameters are perturbed (zero-initialised last layers would make every
    coupling the identity, hiding export bugs). Same seed, same weights. Eval mode, weight norm kept."""
    cfg = dict(CONFIGS[family], **overrides)
    with torch.random.fork_rng():           # deterministic init without touching the global RNG
        torch.manual_seed(seed)
        model = build_model(family, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def save_tiny(path: Path, family: str, **kw) -> Path:
    save_model(path, tiny_model(family, **kw), history=[{"name": "train", "config": {"steps": 1},
                                                          "metrics": {"nll": 0.0}, "seconds": 0.1}])
    return path


def test_mel(frames: int, batch: int | None = None, seed: int = 0) -> np.ndarray:
    """Log-mel-like float32 values [N_MELS, frames] (or [batch, N_MELS, frames])."""
    shape = (N_MELS, frames) if batch is None else (batch, N_MELS, frames)
    return np.random.default_rng(seed).normal(-5.0, 2.0, shape).astype(np.float32)


test_mel.__test__ = False  # not a pytest test


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch single-threaded (the CPU is shared; 2 threads are much slower under contention)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_threads_match_serial(synth, mels, rounds: int = 3) -> None:
    """Synthesize ``mels`` from one thread each (all started together, ``rounds`` times) and assert every result
    equals the serial one bit for bit: the synthesizer is safe to share between threads."""
    import threading

    import numpy as np

    serial = [synth.synthesize(m, seed=i) for i, m in enumerate(mels)]
    results, errors = [None] * len(mels), []
    barrier = threading.Barrier(len(mels))

    def work(i):
        try:
            barrier.wait()
            for _ in range(rounds):
                results[i] = synth.synthesize(mels[i], seed=i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(mels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


_NO_TORCH = r"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""
_NO_TORCH_END = r"""
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("ok")
"""


def run_torch_free(body: str, *args: str) -> None:
    """Run ``body`` (Python source; ``sys.argv[1:]`` = ``args``) in a fresh interpreter where importing torch
    raises, and assert it ran to the end without torch being imported."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH + body + _NO_TORCH_END, *args],
                          env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]

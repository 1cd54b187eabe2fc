"""Export with a verified streaming context: the export layer's bundle writer plus a streaming check that
runs the exported graph through the runtime (:class:`edgeflow.runtime.Synthesizer`).

``export_bundle`` here is what the ``export`` pass and ``edgeflow export`` call; the export layer's own
:func:`edgeflow.export.onnx_export.export_bundle` never imports the runtime and, without a
``stream_context`` callback, records the one-pass receptive field unverified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.audio.snr import snr_db

#: Streaming context is grown until stitched audio is this close to whole synthesis (dB).
STREAM_TARGET_SNR_DB = 50.0
STREAM_CHUNK_FRAMES = 16


def speech_like_mel(mel_cfg: Any, frames: int) -> np.ndarray:
    """A speech-like log-mel [n_mels, frames] from the numpy front-end: gliding harmonics + noise bursts."""
    from edgeflow.audio.mel import log_mel

    sr, n = mel_cfg.sample_rate, frames * mel_cfg.hop_length
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t) ** 2)
    audio = 0.1 * audio + 0.02 * rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t) > 0.6)
    return log_mel(audio.astype(np.float32), mel_cfg)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def choose_stream_context(synth, mel_cfg: Any, field: Dict[str, int], frame_multiple: int) -> Dict[str, Any]:
    """Smallest verified streaming context, starting from the one-pass receptive field.

    The context doubles (up to the worst-case bound ``field["left"/"right"]``) until streaming a
    speech-like mel in chunks of 16 frames matches whole synthesis with SNR >= 50 dB.

    Args:
        synth: a runtime Synthesizer over the exported graph.
        mel_cfg: the model's front-end (of the test mel).
        field: the spec's receptive field (frames).
        frame_multiple: chunk sizes are rounded up to this.

    Returns:
        The manifest's ``streaming`` section.
    """
    left, right = field["net_left"], field["net_right"]
    chunk = _round_up(STREAM_CHUNK_FRAMES, frame_multiple)
    tried = []
    while True:
        frames = left + right + 3 * chunk
        mel = speech_like_mel(mel_cfg, frames)
        whole = synth.synthesize(mel, seed=0)
        pieces = [mel[:, i:i + chunk] for i in range(0, frames, chunk)]
        streamed = np.concatenate(list(synth.synthesize_stream(pieces, seed=0, left_context=left,
                                                               right_context=right)))
        snr = snr_db(whole, streamed)
        tried.append({"left": left, "right": right, "snr_db": round(snr, 2)})
        if snr >= STREAM_TARGET_SNR_DB or (left >= field["left"] and right >= field["right"]):
            break
        left, right = min(2 * left, field["left"]), min(2 * right, field["right"])
    return {"receptive_field_frames": dict(field), "context_frames": {"left": left, "right": right},
            "check": {"target_snr_db": STREAM_TARGET_SNR_DB, "chunk_frames": chunk, "tried": tried}}


def verified_context(session, manifest: Dict[str, Any], field: Dict[str, int], frame_multiple: int
                     ) -> Dict[str, Any]:
    """The export layer's ``stream_context`` callback: :func:`choose_stream_context` on the new graph."""
    from edgeflow.audio.mel import MelConfig
    from edgeflow.runtime.synthesizer import Synthesizer

    synth = Synthesizer(session, dict(manifest, streaming={"context_frames": {"left": 0, "right": 0}}))
    return choose_stream_context(synth, MelConfig.from_dict(manifest["mel"]), field, frame_multiple)


def export_bundle(model: Any, out_dir: str | Path, history: Optional[List[Dict[str, Any]]] = None,
                  overwrite: bool = False, cached: bool = True, check_streaming: bool = True) -> Dict[str, Any]:
    """Export ``model`` (left untouched) as a validated bundle (:func:`edgeflow.export.onnx_export.export_bundle`)
    whose streaming context is verified by synthesis (``check_streaming=False``: the one-pass receptive
    field, unverified; for quick benchmark bundles). Returns the manifest written."""
    from edgeflow.export.onnx_export import export_bundle as write_bundle

    return write_bundle(model, out_dir, history=history, overwrite=overwrite, cached=cached,
                        stream_context=verified_context if check_streaming else None)

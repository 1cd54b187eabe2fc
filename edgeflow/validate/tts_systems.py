"""The systems a text-to-speech bench compares, opened from a path (:func:`open_system`):

* ``bundle``: an edgeflow VITS bundle in :class:`edgeflow.runtime.Voice` (seeded noise; streaming decodes
  frame chunks);
* ``pytorch``: a VITS model.pt in PyTorch (:class:`TorchVoice`: the runtime's text front-end, the same seeded
  noise, sentence ``i`` with ``seed + i``);
* ``piper``: a stock Piper ``VOICE.onnx`` (+ ``.onnx.json``) in bare onnxruntime
  (:class:`edgeflow.validate.tts.BarePiper`; its noise is internal).

Every system has ``speak_stream(text, streaming=False, seed=0, **scales)`` and ``sample_rate``, so
:func:`edgeflow.validate.tts.evaluate_voice` and ``timed_speak`` take it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgeflow.core.errors import BundleError, CheckpointError, ConfigError, InputError


class TorchVoice:
    """A VITS model.pt in PyTorch with the runtime's text front-end: sentence ``i`` uses ``seed + i``."""

    def __init__(self, model: Any, threads: Optional[int] = None):
        from edgeflow.runtime.voice_config import VoiceConfig

        c = model.config
        self.model = model.eval()
        self.threads = threads
        self.config = VoiceConfig.from_dict(
            {"sample_rate": c.sample_rate, "phoneme_type": c.phoneme_type, "espeak": {"voice": c.espeak_voice},
             "phoneme_id_map": c.phoneme_id_map, "num_symbols": c.num_symbols,
             "inference": {"noise_scale": c.noise_scale, "length_scale": c.length_scale, "noise_w": c.noise_w}},
            "model.pt")

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def speak_stream(self, text: str, seed: int = 0, noise_scale: Optional[float] = None,
                     length_scale: Optional[float] = None, noise_w: Optional[float] = None):
        """Sentence audio float32 [T] in order."""
        import torch

        from edgeflow import text as frontend
        from edgeflow.runtime.voice_config import resolve_scales

        if self.threads:
            torch.set_num_threads(self.threads)
        scales = resolve_scales(self.config, noise_scale, length_scale, noise_w)
        for i, phonemes in enumerate(self.config.phonemize_iter(text)):
            ids = frontend.phonemes_to_ids(phonemes, self.config.phoneme_id_map)
            yield self.model.synthesize(ids, seed=seed + i, **scales).float().numpy()


@dataclass
class System:
    """One voice under test: ``kind`` "bundle", "pytorch" or "piper"; ``voice`` has ``speak_stream``."""

    label: str
    kind: str
    path: Path
    voice: Any
    size_bytes: int

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    @property
    def seeded(self) -> bool:
        """Its noise comes from the seed (edgeflow), so two seeded systems share noise and durations."""
        return self.kind in ("bundle", "pytorch")

    def speak_stream(self, text: str, streaming: bool = False, seed: int = 0, **scales: Any):
        """Audio pieces of ``text``: whole sentences, or (bundles, ``streaming``) decoder chunks."""
        if self.kind == "bundle":
            chunks = {} if streaming else {"chunk_frames": None, "first_chunk_frames": None}
            return self.voice.speak_stream(text, seed=seed, **chunks, **scales)
        return self.voice.speak_stream(text, seed=seed, **scales)


def _bytes(path: Path) -> int:
    if path.is_dir():
        return int(sum(f.stat().st_size for f in path.iterdir() if f.is_file()))
    return int(path.stat().st_size)


def task_of(path: str | Path) -> Optional[str]:
    """"tts" or "vocoder" for a bundle, model.pt or .onnx (a .onnx is taken for a Piper voice); None if
    it cannot tell (missing or unreadable: the bench that runs it says why)."""
    p = Path(path)
    if p.is_dir():
        try:
            m = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
            return m.get("task") or ("tts" if m.get("family") == "vits" else "vocoder")
        except (OSError, ValueError, AttributeError):
            return None
    if p.is_file() and p.suffix == ".onnx":
        return "tts"
    return family_task(checkpoint_family(p))


def family_task(family: Optional[str]) -> Optional[str]:
    """The task ("tts" / "vocoder") of a registered model family, None for None or an unknown family."""
    if family is None:
        return None
    from edgeflow.models.family import get_family

    try:
        return get_family(family).task
    except ConfigError:
        return None


def checkpoint_family(path: str | Path) -> Optional[str]:
    """The ``family`` of an edgeflow model.pt (one read of the file), or None for a directory, a .onnx, a missing
    or unreadable file (its loader then says why)."""
    p = Path(path)
    if not p.is_file() or p.suffix == ".onnx":
        return None
    from edgeflow.models.checkpoint import read_checkpoint

    try:
        family = read_checkpoint(p).get("family")
    except CheckpointError:
        return None
    return family if isinstance(family, str) else None


def open_system(path: str | Path, threads: Optional[int] = None, what: str = "subject",
                conv_layout: str = "auto") -> System:
    """The system at ``path`` (a VITS bundle, a VITS model.pt or a Piper .onnx); ``conv_layout``: a bundle's
    run-time conv layout (:mod:`edgeflow.runtime.conv_layout`).

    Raises:
        BundleError / CheckpointError / ConfigError / InputError: not found, not a voice (a vocoder bundle
            or model), tampered, or a Piper graph without its json (one line naming ``what`` and the path).
    """
    from edgeflow.runtime import Voice

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if p.is_dir():
        from edgeflow.runtime.bundle import read_manifest

        m = read_manifest(p, task=None)
        if m.get("task", "vocoder") != "tts":
            raise BundleError(f"{what} {p}: a {m.get('family')!r} vocoder bundle is not a text-to-speech voice "
                              "(bench a vocoder against a vocoder)")
        voice = Voice.load(p, threads=threads, conv_layout=conv_layout)
        engine = "onnxruntime"
        if voice.engine == "native":
            stages = "stages" if len(getattr(voice.wave, "stages", ())) > 1 else "stage"
            engine = "native flow + onnxruntime" + ("" if voice.wave is None else f" + native INT8 {stages}")
        return System(f"edgeflow bundle ({engine})", "bundle", p, voice, _bytes(p))
    if p.suffix == ".onnx":
        from edgeflow.validate.tts import BarePiper

        Voice.load(p, threads=threads)            # checks: a Piper graph, its json, a phoneme map that fits
        return System("stock Piper (bare onnxruntime)", "piper", p, BarePiper(p, threads=threads),
                      _bytes(p) + _bytes(Path(f"{p}.json")))
    from edgeflow.models.checkpoint import model_from_checkpoint, read_checkpoint
    from edgeflow.models.family import get_family

    ckpt = read_checkpoint(p)
    if get_family(ckpt["family"]).task != "tts":
        raise CheckpointError(f"{what} {p}: a {ckpt['family']} model is a vocoder, not a text-to-speech voice "
                              "(bench a vocoder against a vocoder)")
    model = model_from_checkpoint(ckpt, str(p))
    return System("VITS model.pt (PyTorch)", "pytorch", p, TorchVoice(model, threads), _bytes(p))

"""A text-to-speech voice's sidecar configuration: a Piper ``VOICE.onnx.json`` or an edgeflow VITS bundle's
manifest (the same keys). No torch.

Piper json keys read: ``audio.sample_rate``, ``espeak.voice``, ``inference.{noise_scale, length_scale,
noise_w}``, ``phoneme_id_map``, ``phoneme_type`` ("espeak" or "text"), ``num_symbols``, ``num_speakers``.
A bundle manifest has ``sample_rate`` at the top level and the rest under the same names.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from edgeflow.core.errors import ConfigError, InputError, not_a_file, short_reason
from edgeflow import text as frontend

#: Bounds on the synthesis scales (length_scale above this would make absurdly slow speech).
MAX_LENGTH_SCALE = 20.0
MAX_NOISE = 10.0


@dataclass(frozen=True)
class VoiceConfig:
    """What the runtime needs besides the graph(s).

    Attributes:
        sample_rate: output rate (Hz).
        espeak_voice: espeak-ng voice name for ``phoneme_type`` "espeak".
        phoneme_type: "espeak" (IPA from espeak-ng) or "text" (the text's own codepoints).
        phoneme_id_map: {symbol: [id, ...]} with ``^ $ _``.
        num_symbols: rows of the model's phoneme embedding the config claims (0: unknown).
        num_speakers: speakers of the model (1: single speaker; more: speaker 0 is used).
        noise_scale, length_scale, noise_w: default synthesis scales.
    """

    sample_rate: int
    espeak_voice: str
    phoneme_type: str
    phoneme_id_map: Mapping[str, List[int]]
    num_symbols: int = 0
    num_speakers: int = 1
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8

    @property
    def max_id(self) -> int:
        """Largest id the map can produce."""
        return max(i for ids in self.phoneme_id_map.values() for i in ids)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "VoiceConfig":
        """Parse a Piper voice json or a VITS bundle manifest.

        Raises:
            ConfigError: missing or malformed keys, unknown phoneme type, map ids beyond ``num_symbols``.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: not a voice config (a JSON object is expected)")
        try:
            rate = d["sample_rate"] if "sample_rate" in d else d["audio"]["sample_rate"]
            ptype = str(d.get("phoneme_type", "espeak"))
            voice = (d.get("espeak") or {}).get("voice", "") if ptype == "espeak" else ""
            inference = d.get("inference") or {}
            cfg = cls(sample_rate=int(rate), espeak_voice=str(voice), phoneme_type=ptype,
                      phoneme_id_map=frontend.check_id_map(d.get("phoneme_id_map"), where),
                      num_symbols=int(d.get("num_symbols", 0) or 0),
                      num_speakers=int(d.get("num_speakers", 1) or 1),
                      **{k: float(inference.get(k, v)) for k, v in
                         (("noise_scale", 0.667), ("length_scale", 1.0), ("noise_w", 0.8))})
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a voice config ({type(exc).__name__}: {exc})") from None
        if ptype not in ("espeak", "text"):
            raise ConfigError(f"{where}: phoneme_type {ptype!r} is not supported (espeak or text)")
        if ptype == "espeak" and not cfg.espeak_voice:
            raise ConfigError(f"{where}: espeak.voice is missing")
        if cfg.sample_rate <= 0:
            raise ConfigError(f"{where}: sample rate {cfg.sample_rate} is not positive")
        if cfg.num_symbols and cfg.max_id >= cfg.num_symbols:
            raise ConfigError(f"{where}: phoneme_id_map uses id {cfg.max_id}, beyond num_symbols "
                              f"{cfg.num_symbols}")
        check_scales(cfg.noise_scale, cfg.length_scale, cfg.noise_w)
        return cfg

    @classmethod
    def read(cls, path: str | Path) -> "VoiceConfig":
        """Read a Piper ``.onnx.json`` file (ConfigError if missing or not JSON)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{not_a_file('voice config', path)} (Piper voices come as VOICE.onnx + VOICE.onnx.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a JSON voice config ({short_reason(exc)})") from None
        return cls.from_dict(data, str(path))

    def phonemize_iter(self, text: str):
        """Sentences of phoneme codepoints for ``text`` (espeak-ng, or the text's own NFD codepoints)."""
        if self.phoneme_type == "text":
            cleaned = unicodedata.normalize("NFD", frontend.clean_text(text).casefold())
            return iter([list(cleaned)] if cleaned.strip() else [])
        return frontend.phonemize_iter(text, self.espeak_voice)


def check_scales(noise_scale: Any, length_scale: Any, noise_w: Any) -> Dict[str, float]:
    """Validated synthesis scales: finite, noise_scale and noise_w in [0, 10], length_scale in (0, 20].

    Raises:
        InputError: NaN, Inf, negative, or out of range.
    """
    out = {}
    for name, value, low_open, high in (("noise_scale", noise_scale, False, MAX_NOISE),
                                        ("length_scale", length_scale, True, MAX_LENGTH_SCALE),
                                        ("noise_w", noise_w, False, MAX_NOISE)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(v) or v < 0 or (low_open and v == 0) or v > high:
            bound = f"{'>' if low_open else '>='} 0 and <= {high:g}"
            raise InputError(f"{name} must be finite, {bound}; got {value!r}")
        out[name] = v
    return out


def resolve_scales(cfg: VoiceConfig, noise_scale: Optional[float], length_scale: Optional[float],
                   noise_w: Optional[float]) -> Dict[str, float]:
    """The call's scales, None meaning the voice's default, checked with :func:`check_scales`."""
    return check_scales(cfg.noise_scale if noise_scale is None else noise_scale,
                        cfg.length_scale if length_scale is None else length_scale,
                        cfg.noise_w if noise_w is None else noise_w)


def read_vits_manifest(bundle_dir: Path) -> Dict[str, Any]:
    """Read and check a text-to-speech bundle's manifest with the shared reader
    (:func:`edgeflow.runtime.bundle.read_manifest` with ``task="tts"``): format and version, the
    ``manifest.sha256`` sidecar, every listed file's sha256, the encoder/decoder graph names and the fields the
    runtime uses; a vocoder bundle is refused.

    Raises:
        BundleError: anything missing, foreign, tampered or out of range (one line naming it).
    """
    from edgeflow.runtime.bundle import read_manifest

    return read_manifest(bundle_dir, task="tts")


#: Engines :meth:`edgeflow.runtime.Voice.load` can run a voice's prior flow with.
VOICE_ENGINES = ("auto", "onnxruntime", "native")
#: The native prior flow's engines (manifest ``native.engine``): float32 (``tts_kernels``) or with every WaveNet
#: layer's dilated conv in INT8, and its res / skip conv where ``native.int8_convs`` names "rs" (``tts_flow_int8``).
FLOAT_FLOW, INT8_FLOW = "vits-flow-float32", "vits-flow-int8"
FLOW_ENGINES = (FLOAT_FLOW, INT8_FLOW)
#: The native text encoder's engine (manifest ``native.text_encoder``, the ``tts_text_encoder`` pass): the
#: transformer's convs in INT8, attention and LayerNorm float; the rest of model.onnx runs as the part's ``file``.
TEXT_ENCODER = "vits-text-encoder-int8"


def native_files(native: Any) -> List[str]:
    """The file names a VITS bundle's ``native`` section names (flow weights, cut decoder, waveform stage), unchecked:
    the strings found."""
    if not isinstance(native, dict):
        return []
    parts = [native.get(k) if isinstance(native.get(k), dict) else {} for k in ("wave_stage", "text_encoder")]
    return [v for v in (native.get("file"), native.get("decoder")) + tuple(p.get("file") for p in parts)
            if isinstance(v, str) and v]


def vits_native_section(manifest: Dict[str, Any], where: Any) -> Optional[Dict[str, Any]]:
    """A VITS bundle's ``native`` section (the ``tts_kernels`` pass's), checked. None when the bundle has none,
    when its flow weights or cut decoder are not among the files the manifest hashes (a copy that kept the graphs
    only), or when it is stale (``decoder.onnx`` was replaced after the pass: the cut no longer matches it).

    Raises:
        BundleError: a malformed section.
    """
    from edgeflow.core.errors import BundleError

    native = manifest.get("native")
    if native is None:
        return None
    files = manifest.get("files") or {}
    names = [native.get(k) for k in ("file", "decoder")] if isinstance(native, dict) else [None]
    if not all(isinstance(n, str) and n and "/" not in n and "\\" not in n for n in names) \
            or not isinstance(native.get("decoder_input"), str) or native.get("engine") not in FLOW_ENGINES:
        raise BundleError(f"{where}: manifest field native must name the flow weights, the cut decoder and its "
                          "input")
    wave = native.get("wave_stage")
    if wave is not None:
        if not isinstance(wave, dict) or not isinstance(wave.get("file"), str) or "/" in wave["file"] or \
                "\\" in wave["file"] or wave.get("engine") != "hifigan-stage-int8-blocks":
            raise BundleError(f"{where}: manifest field native.wave_stage must name the stage weights")
        names.append(wave["file"])
    convs = native.get("int8_convs")
    if convs is not None and (convs not in (["in"], ["in", "rs"]) or native["engine"] != INT8_FLOW):
        raise BundleError(f"{where}: manifest field native.int8_convs must be [\"in\"] or [\"in\", \"rs\"] on an "
                          f"INT8 flow (got {native.get('int8_convs')!r})")
    if any(n not in files for n in names) or native.get("source_decoder_sha256") != \
            files.get(manifest["graphs"]["decoder"]):
        return None                 # files not carried over (a copy of the graphs only), or decoder.onnx replaced
    return _with_text_encoder(native, files, manifest["graphs"]["encoder"], where)


def _with_text_encoder(native: Dict[str, Any], files: Dict[str, Any], encoder: str, where: Any) -> Dict[str, Any]:
    """``native`` with its ``text_encoder`` part checked, or without it where its file was not carried over or
    model.onnx was replaced after the pass (the cut no longer matches it)."""
    from edgeflow.core.errors import BundleError

    te = native.get("text_encoder")
    if te is None:
        return native
    if not isinstance(te, dict) or not isinstance(te.get("file"), str) or "/" in te["file"] or "\\" in te["file"] \
            or te.get("engine") != TEXT_ENCODER or not isinstance(te.get("input"), str):
        raise BundleError(f"{where}: manifest field native.text_encoder must name the cut encoder graph and its "
                          "input")
    if te["file"] not in files or te.get("source_encoder_sha256") != files.get(encoder):
        return {k: v for k, v in native.items() if k != "text_encoder"}
    return native


def choose_voice_engine(manifest: Optional[Dict[str, Any]], engine: Any, providers: Any, where: Any,
                        layout: str = "1d") -> str:
    """"native" or "onnxruntime" for the prior flow of a voice: "onnxruntime" as asked; "native" as asked
    (BundleError without native kernels, DependencyError without the library); "auto": native only where the
    bundle's ``tts_kernels`` pass measured it faster than onnxruntime in ``layout`` (the conv layout the voice's
    sessions would run), the providers are the CPU and the library loads.

    Raises:
        InputError: an unknown engine name.
    """
    from edgeflow.runtime.checks import resolve_engine
    from edgeflow.runtime.native.wave_stage import tile_samples
    from edgeflow.runtime.native.wn import library

    if engine not in VOICE_ENGINES:
        raise InputError(f"engine must be one of {', '.join(VOICE_ENGINES)}, got {engine!r}")
    native = vits_native_section(manifest, where) if manifest is not None else None
    load = (lambda: (library(), tile_samples())) if native and native.get("wave_stage") else library
    return resolve_engine(engine, native, providers, where,
                          "the voice has no native flow kernels (add them with the tts_kernels pass)", load, layout)

"""Opening an edgeflow VITS bundle for :class:`edgeflow.runtime.voice.Voice`: its onnxruntime sessions and, with the
native engine, the C kernels its passes packed (prior flow, decoder stages, text encoder). No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Type, TypeVar

from edgeflow.core.errors import BundleError
from edgeflow.runtime.conv_layout import choose_layout
from edgeflow.runtime.voice_config import VoiceConfig, choose_voice_engine, read_vits_manifest, vits_native_section
from edgeflow.runtime.voice_io import open_session

V = TypeVar("V")


def open_vits_bundle(cls: Type[V], path: Path, threads: Optional[int], providers: Any, engine: str = "auto",
                     conv_layout: str = "auto") -> V:
    """A ``cls`` (:class:`edgeflow.runtime.voice.Voice`) on the VITS bundle at ``path``: its encoder and decoder
    sessions, and with ``engine`` native (or auto where the bundle measured native faster) the native prior flow,
    decoder stages and text encoder its passes added. Arguments and errors: :meth:`Voice.load`."""
    manifest = read_vits_manifest(path)
    cfg = VoiceConfig.from_dict(manifest, f"{path}/manifest.json")
    graphs = dict(manifest["graphs"])
    native = choose_voice_engine(manifest, engine, providers, path, choose_layout(conv_layout, threads)) == "native"
    section = vits_native_section(manifest, path) if native else None
    if section is not None:
        graphs["decoder"] = section["decoder"]
        if section.get("text_encoder"):
            graphs["encoder"] = section["text_encoder"]["file"]
    # The decoder's pool spins after a run unless the native flow runs next (its OpenMP threads then wait for
    # the cores: joe at 2 threads, RTF 0.0353 -> 0.0320 without the spinning, 2026-12-05).
    spin = {"encoder": "run", "decoder": "always" if section is None else "never"}
    # The encoder graph after a native text encoder is ~1,300 small nodes that do not scale with threads: one
    # thread, beside the kernel's idle OpenMP thread (joe at 2 threads: 2.13 -> 1.31 ms per second of audio).
    n = {"encoder": 1 if section is not None and section.get("text_encoder") else threads, "decoder": threads}
    # onnxruntime's NHWC transformer wraps each INT8 conv of a decoder with float residual Adds in Transposes:
    # without it joe's balanced head runs 11.6 -> 8.7 ms per second of audio at 1 thread, 7.8 -> 6.1 at 2 (fast's,
    # with INT8 Adds, and the encoder gain nothing; the same numbers either way; 2026-12-05).
    sessions = [open_session(path / graphs[role], n[role], providers, f"{role} graph", spin=spin[role],
                             conv_layout=conv_layout, nhwc=role != "decoder")
                for role in ("encoder", "decoder")]
    voice = cls(cfg, sessions[0], sessions[1], manifest, path)
    if section is not None:
        from edgeflow.runtime.native.vits_graph import flow_from_bundle
        from edgeflow.runtime.native.wn import NativeFlow

        voice.flow = NativeFlow(arrays=flow_from_bundle(path, section), threads=threads)
        if voice.flow.channels != voice.channels or voice.flow.n_cond:
            raise BundleError(f"{path}: the native flow weights do not fit the voice ({voice.flow.channels} "
                              f"channels, expected {voice.channels})")
        voice.engine, voice.flow_output = "native", section["decoder_input"]
        if section.get("wave_stage"):
            from edgeflow.runtime.native.wave_chain import load_wave
            from edgeflow.runtime.native.wave_stage import load_arrays

            voice.wave = load_wave(load_arrays(path / section["wave_stage"]["file"]), threads=threads)
        if section.get("text_encoder"):
            from edgeflow.runtime.native.text_encoder import from_bundle

            voice.text_encoder = from_bundle(path, manifest, threads)
            voice.text_input = section["text_encoder"]["input"]
    return voice

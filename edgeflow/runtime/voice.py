"""The torch-free text-to-speech runtime: :class:`Voice` = onnxruntime session(s) + a voice config.

Two sources load the same way (``Voice.load(path)``):

* an **edgeflow VITS bundle** (a directory, ``family`` "vits"): ``model.onnx`` (encoder: phoneme ids ->
  frame-level prior mean / log-std and durations) and ``decoder.onnx`` (prior + noise -> audio, frame-local).
  Every noise is a graph input drawn from the seed, so output is deterministic; ``speak_stream`` decodes
  a sentence in frame chunks with the manifest's context, equal to whole synthesis (>= 40 dB).
* a **stock Piper voice** (``VOICE.onnx`` + ``VOICE.onnx.json``): one graph (ids, lengths, scales ->
  audio). Its noise is sampled inside the graph (``RandomNormalLike`` without a seed): ``seed`` has no
  effect and output differs run to run unless ``noise_scale`` and ``noise_w`` are 0; streaming is by
  sentence only.

A bundle whose ``tts_kernels`` pass added native kernels can run its prior flow in edgeflow's C engine
(``Voice.load(..., engine="native")``, or ``"auto"``: where the pass measured it faster): the flow's inverse
over each decoder chunk in one call, then the bundle's decoder graph cut after the flow in onnxruntime.

Text is turned into ids by :mod:`edgeflow.text` (espeak-ng, Piper's convention). Sentence ``i``
of a text uses seed ``seed + i``. A ``Voice`` holds no mutable state: threads may share one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, InputError, short_reason
from edgeflow.core.noise import noise
from edgeflow import text as frontend
from edgeflow.runtime.checks import check_seed, check_stream_options, chunk_windows
from edgeflow.runtime.conv_layout import check_layout
from edgeflow.runtime.voice_io import open_session, write_wav_stream  # noqa: F401  (write_wav_stream: public here too)
from edgeflow.runtime.voice_config import VoiceConfig, choose_voice_engine, resolve_scales

#: Longest audio of one sentence (seconds); a bundle's durations beyond it are refused.
MAX_SENTENCE_SECONDS = 600.0


class PhonemeWarning(UserWarning):
    """Symbols espeak-ng produced that the voice's phoneme_id_map lacks (they were dropped)."""


#: ``{family: load(path, threads, providers)}`` of voice bundles with their own runtime class, filled by the modules
#: that define them (:mod:`edgeflow.runtime.fm_voice` registers "fmtts"); :meth:`Voice.load` dispatches on it.
BUNDLE_LOADERS: Dict[str, Any] = {}


def _bundle_family(path: Path) -> Optional[str]:
    """The ``family`` a bundle directory's manifest names (None if unreadable: the full reader reports it)."""
    import json

    try:
        family = json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return family if isinstance(family, str) else None


class Voice:
    """A loaded voice. Build with :meth:`load`; ``speak`` / ``speak_stream`` / ``speak_to_wav``.

    Attributes:
        config: the :class:`VoiceConfig` (sample rate, phoneme map, default scales).
        kind: "bundle" (edgeflow VITS bundle, deterministic, chunked decoding) or "piper" (stock voice).
        manifest: the bundle manifest (None for a Piper voice).
    """

    def __init__(self, config: VoiceConfig, encoder: Any, decoder: Any = None,
                 manifest: Optional[Dict[str, Any]] = None, source: Optional[Path] = None):
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.manifest = manifest
        self.source = source
        self.kind = "bundle" if decoder is not None else "piper"
        self.hop_length = int(manifest.get("hop_length", 256)) if manifest else 256
        self.channels = int(manifest.get("inter_channels", 0)) if manifest else 0
        ctx = ((manifest or {}).get("streaming") or {}).get("context_frames") or {}
        self.context_frames = (int(ctx.get("left", 0)), int(ctx.get("right", 0)))
        #: "onnxruntime", or "native": the prior flow in the native engine (:attr:`flow`), the rest of the
        #: decoder in onnxruntime (the bundle's cut decoder graph, input :attr:`flow_output`) and, where the
        #: bundle has it, the waveform-rate stage in the native engine too (:attr:`wave`).
        self.engine = "onnxruntime"
        self.flow: Any = None
        self.flow_output: Optional[str] = None
        #: the decoder's waveform-rate stage in the native engine (INT8, block-scaled; the ``tts_wave`` pass; with
        #: the ``tts_head`` pass the earlier upsampling stages ahead of it, a WaveChain), or None: the cut decoder
        #: graph then ends before that stage.
        self.wave: Any = None
        #: the text encoder's transformer in the native engine (the ``tts_text_encoder`` pass), or None: the
        #: encoder session then runs the rest of model.onnx from its output (input :attr:`text_input`).
        self.text_encoder: Any = None
        self.text_input: Optional[str] = None

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @classmethod
    def load(cls, path: str | Path, threads: Optional[int] = None, providers: Any = None,
             config: Optional[str | Path] = None, engine: str = "auto", conv_layout: str = "auto") -> "Voice":
        """Open an edgeflow VITS bundle directory or a Piper ``VOICE.onnx`` (config ``VOICE.onnx.json``).

        Args:
            path: bundle directory or Piper .onnx file.
            threads: intra-op threads per session (None: onnxruntime's default).
            providers: as :func:`edgeflow.runtime.synthesizer.resolve_providers` (default CPU).
            config: Piper only: the json if it is not ``path + ".json"``.
            engine: the prior flow's engine: "onnxruntime" (the bundle's decoder.onnx), "native" (edgeflow's C
                kernels, from the ``tts_kernels`` pass; with the bundle's other native parts too: the waveform stage
                of ``tts_wave``, the text encoder of ``tts_text_encoder``) or "auto" (native where that pass
                measured it faster, the providers are the CPU's and the library loads; else onnxruntime).
            conv_layout: "1d", "2d" or "auto": how onnxruntime runs the graphs' float 1-D convolutions
                (:mod:`edgeflow.runtime.conv_layout`; auto: 2-D for one thread on x86-64, where it measured
                faster, 1-D otherwise).

        Raises:
            BundleError: missing, tampered, truncated or foreign graph/bundle, or a phoneme map with ids
                the model's embedding does not have; engine "native" for a voice without native kernels.
                ConfigError: a bad voice json. InputError: bad threads or engine. DependencyError: engine
                "native" where the C library is not built.
        """
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        check_layout(conv_layout)
        path = Path(path)
        loader = BUNDLE_LOADERS.get(_bundle_family(path)) if cls is Voice and path.is_dir() else None
        if loader is not None:                  # a family with its own runtime (fmtts: edgeflow.runtime.fm_voice)
            choose_voice_engine(None, engine, providers, path)
            return loader(path, threads, providers, conv_layout=conv_layout)
        if path.is_dir():
            from edgeflow.runtime.voice_bundle import open_vits_bundle

            voice = open_vits_bundle(cls, path, threads, providers, engine, conv_layout)
        elif path.is_file():
            choose_voice_engine(None, engine, providers, path)
            cfg = VoiceConfig.read(config if config is not None else Path(f"{path}.json"))
            voice = cls(cfg, open_session(path, threads, providers, "Piper voice graph", conv_layout=conv_layout),
                        source=path)
            names = {i.name for i in voice.encoder.get_inputs()}
            if not {"input", "input_lengths", "scales"} <= names:
                raise BundleError(f"{path}: not a Piper voice graph (inputs {sorted(names)}; expected "
                                  "input, input_lengths, scales)")
        else:
            raise BundleError(f"voice not found: {path} (expected a VITS bundle directory or a Piper .onnx)")
        voice._probe()
        return voice

    def _probe(self) -> None:
        """Run the largest id of the phoneme map once: a map beyond the model's embedding fails here."""
        ids = list(self.config.phoneme_id_map[frontend.BOS]) + [self.config.max_id] + \
            list(self.config.phoneme_id_map[frontend.EOS])
        try:
            self._encode(ids, {"noise_scale": 0.0, "length_scale": 1.0, "noise_w": 0.0}, 0, probe=True)
        except (BundleError, InputError) as exc:
            raise BundleError(f"{self.source}: the phoneme map (ids up to {self.config.max_id}) does not fit "
                              f"this model: {exc}") from None

    # -- text ---------------------------------------------------------------------------------------

    def phonemize(self, text: str) -> List[List[str]]:
        """Phoneme codepoints of each sentence of ``text``."""
        return list(self.config.phonemize_iter(text))

    def sentence_ids(self, text: str, missing=None) -> Iterator[List[int]]:
        """Phoneme ids of each sentence (lazy); unknown symbols are counted into ``missing``."""
        for phonemes in self.config.phonemize_iter(text):
            yield frontend.phonemes_to_ids(phonemes, self.config.phoneme_id_map, missing)

    # -- graphs -------------------------------------------------------------------------------------

    def _run(self, session: Any, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        try:
            return session.run(None, feeds)
        except Exception as exc:
            raise BundleError(f"the voice's graph failed ({short_reason(exc)})") from None

    def _encode(self, ids: Sequence[int], scales: Dict[str, float], seed: int, probe: bool = False):
        """Piper: the audio [T]. Bundle: (m_p [1, C, F], logs_p [1, C, F])."""
        x = np.asarray(ids, dtype=np.int64)[None]
        feeds = {"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64),
                 "scales": np.array([scales["noise_scale"], scales["length_scale"], scales["noise_w"]],
                                    dtype=np.float32)}
        if self.kind == "piper":
            if self.config.num_speakers > 1:
                feeds["sid"] = np.zeros(1, dtype=np.int64)
            return self._run(self.encoder, feeds)[0].reshape(-1).astype(np.float32, copy=False)
        feeds["noise_w_z"] = np.random.default_rng([seed, 0, 1]).standard_normal(
            2 * x.shape[1], dtype=np.float32).reshape(1, 2, x.shape[1])
        if self.text_encoder is not None:
            feeds[self.text_input] = self.text_encoder.run(x[0])
        names = [o.name for o in self.encoder.get_outputs()]
        out = dict(zip(names, self._run(self.encoder, feeds)))
        m_p, logs_p = out["m_p"], out["logs_p"]
        frames = m_p.shape[2]
        if not probe and frames * self.hop_length / self.sample_rate > MAX_SENTENCE_SECONDS:
            raise InputError(f"a sentence would be {frames * self.hop_length / self.sample_rate:.0f} s of audio, "
                             f"more than the {MAX_SENTENCE_SECONDS:.0f} s limit (lower length_scale)")
        return m_p, logs_p

    def _noise(self, seed: int, start: int, stop: int) -> np.ndarray:
        n = stop - start
        return np.ascontiguousarray(noise(seed, start, n, self.channels).reshape(1, n, self.channels)
                                    .transpose(0, 2, 1))

    def prior(self, m_p: np.ndarray, logs_p: np.ndarray, noise_scale: float, seed: int, start: int,
              stop: int) -> np.ndarray:
        """z_p [1, C, stop - start] = m_p + noise * exp(logs_p) * noise_scale over frames [start, stop) (float32,
        the decoder graph's order of operations): the prior flow's input."""
        z = self._noise(seed, start, stop)
        return m_p[:, :, start:stop] + z * np.exp(logs_p[:, :, start:stop]) * np.float32(noise_scale)

    def _decode(self, m_p: np.ndarray, logs_p: np.ndarray, noise_scale: float, seed: int,
                start: int, stop: int) -> np.ndarray:
        """Audio [(stop - start) * hop] of frames [start, stop), with the utterance's noise for them."""
        n = stop - start
        if self.flow is not None:
            z = self.flow.run(self.prior(m_p, logs_p, noise_scale, seed, start, stop))
            feeds = {self.flow_output: z}
        else:
            feeds = {"m_p": np.ascontiguousarray(m_p[:, :, start:stop]),
                     "logs_p": np.ascontiguousarray(logs_p[:, :, start:stop]),
                     "noise_z": self._noise(seed, start, stop),
                     "scales": np.array([noise_scale, 1.0, 0.0], dtype=np.float32)}
        out = self._run(self.decoder, feeds)[0]
        if self.wave is not None:
            out = self.wave.run(out[0])
        return out.reshape(-1)[:n * self.hop_length].astype(np.float32, copy=False)

    def _sentence_chunks(self, ids: Sequence[int], scales: Dict[str, float], seed: int,
                         chunk_frames: Optional[int], first_chunk_frames: Optional[int]) -> Iterator[np.ndarray]:
        if self.kind == "piper":
            yield self._encode(ids, scales, seed)
            return
        m_p, logs_p = self._encode(ids, scales, seed)
        for a, b, ws, we in chunk_windows(m_p.shape[2], chunk_frames, first_chunk_frames, self.context_frames):
            audio = self._decode(m_p, logs_p, scales["noise_scale"], seed, ws, we)
            yield audio[(a - ws) * self.hop_length:(b - ws) * self.hop_length]

    # -- public synthesis ---------------------------------------------------------------------------

    def speak_ids(self, ids: Sequence[int], noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                  noise_w: Optional[float] = None, seed: int = 0) -> np.ndarray:
        """Audio float32 [T] of one sentence's phoneme ids (as :func:`edgeflow.text.phonemes_to_ids`)."""
        scales = resolve_scales(self.config, noise_scale, length_scale, noise_w)
        ids = [int(i) for i in ids]
        if not ids or min(ids) < 0 or max(ids) > self.config.max_id:
            raise InputError(f"phoneme ids must be non-empty and within 0..{self.config.max_id}")
        return np.concatenate(list(self._sentence_chunks(ids, scales, check_seed(seed), None, None)))

    def speak_stream(self, text: str, noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                     noise_w: Optional[float] = None, seed: int = 0, chunk_frames: Optional[int] = 128,
                     first_chunk_frames: Optional[int] = 32, sentence_silence: float = 0.0) -> Iterator[np.ndarray]:
        """Audio chunks as they are ready: per sentence, and (bundles) per decoder chunk inside a sentence.

        Args:
            text: any text (see :mod:`edgeflow.text` for what espeak-ng does with it).
            noise_scale, length_scale, noise_w: None: the voice's defaults.
            seed: sentence i uses seed + i (bundles; a stock Piper voice ignores it).
            chunk_frames: decoder frames per chunk (bundles; None or 0: whole sentences).
            first_chunk_frames: a smaller first chunk of each sentence, for a short time to first audio.
            sentence_silence: seconds of silence after each sentence.

        Yields:
            float32 audio [n] pieces; their concatenation equals :meth:`speak` (>= 40 dB for bundles).

        Raises:
            InputError: bad scales or seed, or a text with nothing to speak (raised on first use).
        """
        scales = resolve_scales(self.config, noise_scale, length_scale, noise_w)
        seed = check_seed(seed)
        silence = check_stream_options(text, chunk_frames, first_chunk_frames, sentence_silence, self.sample_rate)
        return self._stream(text, scales, seed, chunk_frames, first_chunk_frames, silence)

    def _stream(self, text, scales, seed, chunk_frames, first_chunk_frames, silence) -> Iterator[np.ndarray]:
        missing = frontend.new_counter()
        count = 0
        for i, ids in enumerate(self.sentence_ids(text, missing)):
            yield from self._sentence_chunks(ids, scales, seed + i, chunk_frames, first_chunk_frames)
            if silence.size:
                yield silence
            count += 1
        if missing:
            warnings.warn(frontend.describe_missing(missing), PhonemeWarning, stacklevel=3)
        if count == 0:
            raise InputError("the text has nothing to speak (empty, or punctuation only)")

    def speak(self, text: str, noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
              noise_w: Optional[float] = None, seed: int = 0, sentence_silence: float = 0.0) -> Tuple[np.ndarray, int]:
        """Synthesize a whole text.

        Returns:
            (audio float32 [T], sample_rate).

        Raises:
            InputError: bad scales or seed, or nothing to speak.
        """
        pieces = list(self.speak_stream(text, noise_scale, length_scale, noise_w, seed, chunk_frames=None,
                                        first_chunk_frames=None, sentence_silence=sentence_silence))
        return np.concatenate(pieces), self.sample_rate

    def speak_to_wav(self, text: str, path: str | Path, **kwargs: Any) -> Dict[str, float]:
        """Stream ``text`` into a 16-bit wav with :func:`write_wav_stream` (bounded memory, atomic).

        ``kwargs`` go to :meth:`speak_stream`. Returns :func:`write_wav_stream`'s figures.
        """
        return write_wav_stream(self.speak_stream(text, **kwargs), self.sample_rate, path)

    def __repr__(self) -> str:
        return f"Voice({self.kind}, {self.source}, {self.sample_rate} Hz, {self.engine})"

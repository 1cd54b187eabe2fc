"""The torch-free synthesizer: a bundle's ONNX graph in onnxruntime (or its native kernels in edgeflow's C engine,
:mod:`edgeflow.runtime.native`) plus its manifest.

Only numpy, onnxruntime, soundfile/scipy (through edgeflow.audio), the native engine (ctypes) and torch-free
edgeflow.core modules are imported here. Both engines sit behind the same session interface (``run``), so
batching, padding, noise and streaming are one code path. Noise comes from :func:`edgeflow.core.noise.noise`, the function the
PyTorch models use, so a bundle and its source model.pt give the same audio for a seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from edgeflow.core.errors import BundleError, DependencyError, InputError, short_reason
from edgeflow.core.noise import noise
from edgeflow.core.ort import LARGE_GRAPH_NODES, session_options  # noqa: F401  (the one place)
from edgeflow.runtime.bundle import MODEL_FILE, read_manifest
from edgeflow.runtime.conv_layout import check_layout, choose_layout, session_source
from edgeflow.runtime.checks import check_mel, check_seed, check_sigma, resolve_engine  # noqa: F401  (check_mel: public here too)
from edgeflow.runtime.streaming import stream

#: Longest input accepted in one call (seconds of audio); longer input is refused, not truncated.
MAX_SECONDS = 600.0

_ACCELERATED = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"


def resolve_providers(providers: Union[None, str, Sequence[str]]) -> List[str]:
    """onnxruntime execution providers to use.

    Args:
        providers: None or "cpu": CPU only (the default). "auto": TensorRT / CUDA when this
            onnxruntime has them, then CPU. A name or list of names: those, in order (CPU appended
            as the fallback); each must be available.

    Raises:
        DependencyError: a requested provider is not available in the installed onnxruntime.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None or (isinstance(providers, str) and providers.lower() == "cpu"):
        return [CPU]
    if isinstance(providers, str) and providers.lower() == "auto":
        return [p for p in _ACCELERATED if p in available] + [CPU]
    names = [providers] if isinstance(providers, str) else list(providers)
    for name in names:
        if name not in available:
            raise DependencyError(f"onnxruntime provider {name} is not available here "
                                  f"(available: {', '.join(available)})")
    return names + ([CPU] if CPU not in names else [])


#: Engines :meth:`Synthesizer.load` can run a bundle with.
ENGINES = ("auto", "onnxruntime", "native")


def native_section(manifest: Dict[str, Any], where: Any) -> Optional[Dict[str, Any]]:
    """The manifest's ``native`` section (the kernels pass's), checked: its file is one the manifest hashes.
    None when the bundle has no native kernels, or has them for another precision (``waveflow-float32`` or
    ``waveglow-float32`` kernels in a bundle quantized after the kernels pass: the section is inherited without
    the file; a kernels pass run after quantize writes ``waveflow-int8`` or ``waveglow-int8`` kernels, which are
    used)."""
    native = manifest.get("native")
    if native is None or (isinstance(native, dict) and str(native.get("engine", "")).endswith("-float32")
                          and manifest.get("precision") != "float32"):
        return None
    if not isinstance(native, dict) or not isinstance(native.get("file"), str) \
            or native["file"] not in manifest["files"] or "/" in native["file"] or "\\" in native["file"]:
        raise BundleError(f"{where}: manifest field native must name a file listed in files")
    return native


def choose_engine(manifest: Dict[str, Any], engine: str, providers: Any, where: Any, layout: str = "1d") -> str:
    """"native" or "onnxruntime" for a requested ``engine`` (see :meth:`Synthesizer.load`); ``layout``: the conv
    layout an onnxruntime session would run (:func:`edgeflow.runtime.checks.resolve_engine`)."""
    from edgeflow.runtime.native import library

    return resolve_engine(engine, native_section(manifest, where), providers, where,
                          "the bundle has no native kernels (add them with the kernels pass)", library, layout)


class Synthesizer:
    """A loaded bundle: an onnxruntime session (or the native engine's) plus the manifest. Thread-safe (no
    mutable state).

    Build with :meth:`load`. ``synthesize`` runs whole utterances, ``synthesize_stream`` runs mel
    chunks as they arrive, ``vocode`` resynthesizes a wav through the bundle's own front-end.
    """

    def __init__(self, session: Any, manifest: Dict[str, Any], bundle_dir: Optional[Path] = None):
        self.session = session
        #: "onnxruntime" or "native" (set by :meth:`load`).
        self.engine = "onnxruntime"
        #: the layout onnxruntime runs the float 1-D convolutions in, "1d" or "2d" (set by :meth:`load`).
        self.conv_layout = "1d"
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        mel = manifest["mel"]
        self.n_mels = int(mel["n_mels"])
        self.hop_length = int(mel["hop_length"])
        self.sample_rate = int(manifest["sample_rate"])
        io = manifest["io"]
        self.input_names = [i["name"] for i in io["inputs"]]
        #: whether the graph takes noise (mel, z, sigma); False: mel only (HiFi-GAN), sigma and seed unused.
        self.has_noise = len(self.input_names) == 3
        self.sigma_default = float(io["sigma_default"]) if self.has_noise else None
        self.frame_multiple = int(io.get("frame_multiple", 1))
        self.output_name = io["outputs"][0]["name"]
        ctx = manifest["streaming"]["context_frames"]
        self.context_frames = (int(ctx["left"]), int(ctx["right"]))

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: Optional[int] = None,
             providers: Union[None, str, Sequence[str]] = None, engine: str = "auto",
             conv_layout: str = "auto") -> "Synthesizer":
        """Open a bundle (manifest and file hashes checked first).

        Args:
            bundle_dir: the bundle directory.
            threads: intra-op threads (None: the engine's default).
            providers: see :func:`resolve_providers`; default CPU (onnxruntime engine only).
            engine: "onnxruntime" (the bundle's model.onnx), "native" (edgeflow's C kernels on the bundle's
                kernels.npz, written by the ``kernels`` pass) or "auto": native where the bundle has kernels, the
                ``kernels`` pass measured them faster and the C library loads; onnxruntime otherwise (and whenever
                ``providers`` names more than the CPU).
            conv_layout: "1d", "2d" or "auto": how onnxruntime runs the graph's float 1-D convolutions
                (:mod:`edgeflow.runtime.conv_layout`; auto: 2-D for one thread on x86-64, 1-D otherwise).

        Raises:
            BundleError: missing/tampered/unknown-version bundle, a graph onnxruntime refuses, or no native
                kernels in the bundle (engine "native").
            DependencyError: onnxruntime missing, a requested provider unavailable, or the native engine's
                library not built (engine "native").
            InputError: bad threads or engine.
        """
        if engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        check_layout(conv_layout)
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        try:
            synth = cls(None, manifest, bundle_dir)   # manifest fields first: fail before the (slower) load
            nodes = int(manifest.get("export", {}).get("graph", {}).get("nodes", 0) or 0)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise BundleError(f"{bundle_dir}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if choose_engine(manifest, engine, providers, bundle_dir, choose_layout(conv_layout, threads)) == "native":
            from edgeflow.runtime.native import open_session

            synth.session = open_session(manifest["native"], bundle_dir, synth.input_names, synth.hop_length,
                                         threads)
            synth.engine = "native"
            return synth
        try:
            import onnxruntime as ort
        except ImportError:
            raise DependencyError("onnxruntime is not installed (pip install onnxruntime)") from None
        opts = session_options(threads, nodes)
        try:
            names = resolve_providers(providers)
            source, synth.conv_layout = session_source(bundle_dir / MODEL_FILE, conv_layout, threads, names)
            session = ort.InferenceSession(source, sess_options=opts, providers=names)
        except DependencyError:
            raise
        except Exception as exc:
            raise BundleError(f"{bundle_dir}: onnxruntime cannot load {MODEL_FILE} ({short_reason(exc)})") from None
        synth.session = session
        names = sorted(i.name for i in session.get_inputs())
        if names != sorted(synth.input_names):
            raise BundleError(f"{bundle_dir}: graph inputs {names} do not match the manifest's io spec")
        return synth

    @property
    def providers(self) -> List[str]:
        """Execution providers of the session, in priority order (the native engine: one name)."""
        return list(self.session.get_providers())

    @property
    def mel_config(self):
        """The bundle's front-end parameters as a :class:`edgeflow.audio.mel.MelConfig`."""
        from edgeflow.audio.mel import MelConfig

        return MelConfig.from_dict(self.manifest["mel"])

    def run_frames(self, mel: np.ndarray, sigma: float, seed: int, start_frame: int = 0) -> np.ndarray:
        """Run the graph on checked mel [B, n_mels, F] whose first frame is ``start_frame`` of the utterance.

        The noise is the utterance's noise for frames [start_frame, start_frame + F) (per item b,
        seed + b); a graph without noise inputs ignores sigma and seed. F is padded (edge frames) to a
        multiple of ``frame_multiple``; the padding is cut.

        Returns:
            float32 audio [B, F * hop].
        """
        b, _, f = mel.shape
        if f * self.hop_length / self.sample_rate > MAX_SECONDS:
            raise InputError(f"mel of {f} frames is {f * self.hop_length / self.sample_rate:.0f} s of audio, "
                             f"more than the {MAX_SECONDS:.0f} s limit")
        pad = (-f) % self.frame_multiple
        if pad:
            mel = np.concatenate([mel, np.repeat(mel[:, :, -1:], pad, axis=2)], axis=2)
        feeds = {self.input_names[0]: mel}
        if self.has_noise:
            z = noise(seed, start_frame, f + pad, self.hop_length, batch=b)
            feeds.update(zip(self.input_names[1:], (z, np.array([sigma], dtype=np.float32))))
        audio = self.session.run([self.output_name], feeds)[0]
        return np.ascontiguousarray(audio[:, :f * self.hop_length], dtype=np.float32)

    def _sigma(self, sigma: Any) -> float:
        """The checked sigma (the default when None; 0.0 for a graph without noise)."""
        if sigma is None:
            return self.sigma_default if self.has_noise else 0.0
        return check_sigma(sigma)

    def synthesize(self, mel: Any, sigma: Optional[float] = None, seed: int = 0) -> np.ndarray:
        """Audio from a mel spectrogram.

        Args:
            mel: [n_mels, F] or [B, n_mels, F] float log-mel (the bundle's front-end).
            sigma: noise scale; None: the manifest's default (the model's sigma_infer).
            seed: noise seed (batch item b uses seed + b).
            A bundle without noise inputs (:attr:`has_noise` False, e.g. HiFi-GAN) checks and ignores both.

        Returns:
            float32 audio [F * hop] or [B, F * hop].

        Raises:
            InputError: bad mel, sigma or seed.
        """
        arr, squeeze = check_mel(mel, self.n_mels)
        sigma = self._sigma(sigma)
        audio = self.run_frames(arr, sigma, check_seed(seed))
        return audio[0] if squeeze else audio

    def vocode(self, wav_path: str | Path, sigma: Optional[float] = None, seed: int = 0) -> np.ndarray:
        """Copy-synthesis: read a wav at the bundle's rate, take its log-mel (numpy), synthesize.

        Returns:
            float32 audio [F * hop].

        Raises:
            AudioError: unreadable, empty or too long audio. InputError: too short for the front-end.
        """
        from edgeflow.audio.io import load_wav
        from edgeflow.audio.mel import log_mel

        audio, _ = load_wav(wav_path, sample_rate=self.sample_rate, max_seconds=MAX_SECONDS)
        return self.synthesize(log_mel(audio, self.mel_config), sigma=sigma, seed=seed)

    def synthesize_stream(self, mel_chunks: Iterable[Any], sigma: Optional[float] = None, seed: int = 0,
                          left_context: Optional[int] = None, right_context: Optional[int] = None
                          ) -> Iterator[np.ndarray]:
        """Audio as mel chunks arrive; the concatenation matches :meth:`synthesize` on the whole mel.

        Args:
            mel_chunks: iterable of [n_mels, f] (or [B, n_mels, f]) chunks, f >= 0.
            sigma, seed: as in :meth:`synthesize`.
            left_context, right_context: frames of context around each emitted span; None: the
                manifest's ``streaming.context_frames`` (derived from the receptive field at export).

        Yields:
            float32 audio pieces [n * hop] (or [B, n * hop]), in order, as soon as enough right
            context has arrived.
        """
        sigma = self._sigma(sigma)
        left = self.context_frames[0] if left_context is None else left_context
        right = self.context_frames[1] if right_context is None else right_context
        for name, v in (("left_context", left), ("right_context", right)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(f"{name} must be a non-negative integer, got {v!r}")
        return stream(self, mel_chunks, sigma, check_seed(seed), int(left), int(right))

    def __repr__(self) -> str:
        return (f"Synthesizer({self.manifest['family']}, {self.sample_rate} Hz, "
                f"providers={self.providers})")

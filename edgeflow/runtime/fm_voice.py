"""The torch-free runtime of a flow-matching (``fmtts``) voice bundle: :class:`FmVoice`, a :class:`Voice`.

Bundle layout: :mod:`edgeflow.export.fmtts`. Per sentence (seed ``seed + i`` for sentence ``i``):

1. text graph: ids, scales, prosody noise ``noise(seed + offset, 0, N, 2)`` -> phone-level mu_x, f0, durations;
2. mu_x and f0 repeated by the durations -> cond [1, n_mels + 1, F] (F padded to the frame multiple), mask;
3. x0 = ``noise(seed, 0, F, n_mels)`` [1, n_mels, F] times noise_scale (the ODE temperature);
4. :func:`edgeflow.core.ode.solve` over the field graph (NFE, solver, sway per call; classifier-free guidance
   as one batch-2 evaluation of the conditional and the zero-condition field), or the bundle's unrolled ODE graph
   when the call's NFE and solver are the ones it was exported for (sway is its input), masked, denormalized;
5. the vocoder graph on the valid frames, whole or in chunks with the vocoder bundle's context frames.

This is what :meth:`edgeflow.models.fmtts.FmTts.synthesize` computes with the same seed and options.
``Voice.load`` on an fmtts bundle returns an ``FmVoice`` once this module is imported (it registers the
"fmtts" loader in ``edgeflow.runtime.voice.BUNDLE_LOADERS``); ``speak`` / ``speak_stream`` / ``speak_to_wav``
take the VITS names (noise_scale, length_scale, noise_w = the prosody temperature tau) plus ``nfe``,
``solver``, ``sway`` and ``guidance``. No torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, InputError
from edgeflow.core.noise import noise
from edgeflow.core.ode import METHODS, SWAY_MAX, SWAY_MIN, solve, step_table
from edgeflow.runtime.checks import check_seed, check_stream_options, chunk_windows
from edgeflow.runtime.voice import BUNDLE_LOADERS, MAX_SENTENCE_SECONDS, Voice
from edgeflow.runtime.conv_layout import check_layout
from edgeflow.runtime.voice_io import open_session
from edgeflow.runtime.voice_config import VoiceConfig, read_vits_manifest, resolve_scales

#: Largest number of function evaluations accepted per call.
MAX_NFE = 1000
#: Largest classifier-free guidance scale accepted.
MAX_GUIDANCE = 20.0
ODE_OPTIONS = ("nfe", "solver", "sway", "guidance")


def check_ode_options(defaults: Dict[str, Any], nfe: Any = None, solver: Any = None, sway: Any = None,
                      guidance: Any = None) -> Dict[str, Any]:
    """The call's ODE options (None: the bundle's default), checked.

    Raises:
        InputError: NFE not an integer in [1, MAX_NFE] (or odd for midpoint), an unknown solver, sway outside
            the monotone range, guidance not finite in [0, MAX_GUIDANCE] (one line naming the option).
    """
    o = {k: defaults[k] if v is None else v for k, v in zip(ODE_OPTIONS, (nfe, solver, sway, guidance))}
    n = o["nfe"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_NFE:
        raise InputError(f"nfe must be an integer in [1, {MAX_NFE}], got {n!r}")
    if o["solver"] not in METHODS:
        raise InputError(f"solver must be one of {', '.join(METHODS)}, got {o['solver']!r}")
    if o["solver"] == "midpoint" and n % 2:
        raise InputError(f"the midpoint solver uses 2 evaluations per step: nfe must be even, got {n}")
    for name, lo, hi in (("sway", SWAY_MIN, SWAY_MAX), ("guidance", 0.0, MAX_GUIDANCE)):
        try:
            v = float(o[name])
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {o[name]!r}") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise InputError(f"{name} must be in [{lo:g}, {hi:.4g}], got {o[name]!r}")
        o[name] = v
    o["nfe"] = int(n)
    return o


class FmVoice(Voice):
    """A loaded fmtts voice bundle (``kind`` "fmtts"). Build with :meth:`load` (or ``Voice.load``).

    Attributes:
        config: the :class:`VoiceConfig`. manifest: the bundle manifest. sampling: default ODE options.
        encoder, field, vocoder: the onnxruntime sessions of the text graph, the field and the vocoder.
        unrolled: the ODE graph unrolled for one NFE and solver ({nfe, solver, session, ...}) or None.
    """

    def __init__(self, config: VoiceConfig, sessions: Dict[str, Any], manifest: Dict[str, Any], source: Path):
        super().__init__(config, sessions["encoder"], sessions["decoder"], manifest, source)
        self.field, self.vocoder = sessions["decoder"], sessions["vocoder"]
        self.kind, self.unrolled = "fmtts", None
        try:
            s = manifest["sampling"]
            self.sampling = check_ode_options({}, *(s[k] for k in ODE_OPTIONS))
            if "unrolled" in sessions:
                u = s["unrolled"]
                self.unrolled = dict(check_ode_options({}, u["nfe"], u["solver"], 0.0, 0.0),
                                     session=sessions["unrolled"])
            self.n_mels = int(manifest["inter_channels"])
            self.frame_multiple = int(manifest["io"]["frame_multiple"])
            self.mel_mean, self.mel_std = (float(manifest["stats"][k]) for k in ("mel_mean", "mel_std"))
            self.seed_offset = int(manifest["noise"]["prosody_seed_offset"])
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise BundleError(f"{source}: not an fmtts bundle manifest ({type(exc).__name__}: {exc})") from None
        if self.frame_multiple < 1 or not (math.isfinite(self.mel_std) and self.mel_std > 0):
            raise BundleError(f"{source}: fmtts manifest has a bad frame_multiple or mel_std")

    @classmethod
    def load(cls, path: str | Path, threads: Optional[int] = None, providers: Any = None,
             config: Optional[str | Path] = None, conv_layout: str = "auto") -> "FmVoice":
        """Open an fmtts bundle directory (manifest, hashes and graphs checked; see :meth:`Voice.load`, also for
        ``conv_layout``; ``config`` is for Piper voices and unused here).

        Raises:
            BundleError: not an fmtts bundle, or a missing, tampered or unloadable graph. InputError: bad threads.
        """
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        check_layout(conv_layout)
        path = Path(path)
        manifest = read_vits_manifest(path)
        if manifest.get("family") != "fmtts":
            raise BundleError(f"{path}: a {manifest.get('family')} bundle, not an fmtts voice")
        graphs = manifest["graphs"]
        roles = ("encoder", "decoder", "vocoder") + (("unrolled",) if "unrolled" in graphs else ())
        for role in roles[2:]:
            if not isinstance(graphs[role], str) or graphs[role] not in manifest["files"]:
                raise BundleError(f"{path}: manifest field graphs.{role} must name a file listed in files")
        cfg = VoiceConfig.from_dict(manifest, f"{path}/manifest.json")
        sessions = {role: open_session(path / graphs[role], threads, providers, f"{role} graph",
                                        spin="never" if role == "encoder" else "always",
                                        conv_layout=conv_layout) for role in roles}
        voice = cls(cfg, sessions, manifest, path)
        voice._probe()
        return voice

    # -- the acoustic model -------------------------------------------------------------------------

    def _encode(self, ids: Sequence[int], scales: Dict[str, float], seed: int, probe: bool = False):
        """(mu_x [1, n_mels, N], f0 [1, 1, N], durations [N] int64) of one sentence."""
        x = np.asarray(ids, dtype=np.int64)[None]
        n = x.shape[1]
        z = noise(seed + self.seed_offset, 0, n, 2).reshape(1, n, 2).transpose(0, 2, 1)
        feeds = {"input": x, "input_lengths": np.array([n], dtype=np.int64),
                 "scales": np.array([scales["noise_scale"], scales["length_scale"], scales["noise_w"]], np.float32),
                 "noise_p": np.ascontiguousarray(z)}
        mu, f0, dur = self._run(self.encoder, feeds)
        frames = int(dur.sum())
        if not probe and frames * self.hop_length / self.sample_rate > MAX_SENTENCE_SECONDS:
            raise InputError(f"a sentence would be {frames * self.hop_length / self.sample_rate:.0f} s of audio, "
                             f"more than the {MAX_SENTENCE_SECONDS:.0f} s limit (lower length_scale)")
        return mu, f0, dur.reshape(-1)

    def _field(self, cond: np.ndarray, mask: np.ndarray, guidance: float):
        """The vector field ``(x [1, C, F], t) -> v`` (guidance: conditional and unconditional in one batch)."""
        if not guidance:
            return lambda x, t: self._run(self.field, {"x": x, "cond": cond, "mask": mask,
                                                        "t": np.full(1, t, np.float32)})[0]
        cond2 = np.concatenate([cond, np.zeros_like(cond)])
        mask2 = np.concatenate([mask, mask])

        def field(x, t):
            v = self._run(self.field, {"x": np.concatenate([x, x]), "cond": cond2, "mask": mask2,
                                       "t": np.full(2, t, np.float32)})[0]
            return v[:1] + (v[:1] - v[1:]) * guidance

        return field

    def _solve(self, x0: np.ndarray, cond: np.ndarray, mask: np.ndarray, o: Dict[str, Any]) -> np.ndarray:
        """x(1) [1, n_mels, F] (masked): the unrolled graph when it was exported for this NFE and solver and no
        guidance is asked for, else :func:`edgeflow.core.ode.solve` over the field graph."""
        u = self.unrolled
        if u is not None and (u["nfe"], u["solver"]) == (o["nfe"], o["solver"]) and not o["guidance"]:
            steps = step_table(o["nfe"], o["solver"], o["sway"])
            return self._run(u["session"], {"x0": x0, "cond": cond, "mask": mask, "steps": steps})[0]
        return solve(self._field(cond, mask, o["guidance"]), x0, o["nfe"], o["solver"], o["sway"]) * mask

    def _mel(self, ids: Sequence[int], scales: Dict[str, Any], seed: int) -> np.ndarray:
        """Log-mel float32 [n_mels, frames] of one sentence (valid frames only)."""
        mu, f0, dur = self._encode(ids, scales, seed)
        total = int(dur.sum())
        frames = -(-total // self.frame_multiple) * self.frame_multiple
        cond = np.zeros((1, self.n_mels + 1, frames), np.float32)
        cond[0, :, :total] = np.repeat(np.concatenate([mu[0], f0[0]]), dur, axis=1)
        mask = np.zeros((1, 1, frames), np.float32)
        mask[..., :total] = 1.0
        x0 = noise(seed, 0, frames, self.n_mels).reshape(1, frames, self.n_mels).transpose(0, 2, 1)
        x0 = np.ascontiguousarray(x0 * np.float32(scales["noise_scale"]))
        y = self._solve(x0, cond, mask, scales)
        mel = (y * np.float32(self.mel_std) + np.float32(self.mel_mean)) * mask
        return np.ascontiguousarray(mel[0, :, :total], dtype=np.float32)

    def _vocode(self, mel: np.ndarray) -> np.ndarray:
        return self._run(self.vocoder, {"mel": np.ascontiguousarray(mel[None])})[0].reshape(-1) \
            .astype(np.float32, copy=False)

    def _sentence_chunks(self, ids: Sequence[int], scales: Dict[str, Any], seed: int,
                         chunk_frames: Optional[int], first_chunk_frames: Optional[int]) -> Iterator[np.ndarray]:
        mel = self._mel(ids, scales, seed)
        for a, b, ws, we in chunk_windows(mel.shape[1], chunk_frames, first_chunk_frames, self.context_frames):
            yield self._vocode(mel[:, ws:we])[(a - ws) * self.hop_length:(b - ws) * self.hop_length]

    def _options(self, noise_scale, length_scale, noise_w, ode: Dict[str, Any]) -> Dict[str, Any]:
        unknown = set(ode) - set(ODE_OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return dict(resolve_scales(self.config, noise_scale, length_scale, noise_w),
                    **check_ode_options(self.sampling, **ode))

    # -- public synthesis ---------------------------------------------------------------------------

    def mel_ids(self, ids: Sequence[int], noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                noise_w: Optional[float] = None, seed: int = 0, **ode: Any) -> np.ndarray:
        """Log-mel float32 [n_mels, frames] of one sentence's phoneme ids (``ode``: nfe, solver, sway, guidance)."""
        opts = self._options(noise_scale, length_scale, noise_w, ode)
        ids = [int(i) for i in ids]
        if not ids or min(ids) < 0 or max(ids) > self.config.max_id:
            raise InputError(f"phoneme ids must be non-empty and within 0..{self.config.max_id}")
        return self._mel(ids, opts, check_seed(seed))

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        """Audio float32 [frames * hop] of a log-mel [n_mels, frames] through the bundle's vocoder (whole)."""
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[0] != self.n_mels or mel.shape[1] < 1:
            raise InputError(f"mel must be [{self.n_mels}, frames], got {list(mel.shape)}")
        return self._vocode(mel)[:mel.shape[1] * self.hop_length]

    def speak_ids(self, ids: Sequence[int], noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                  noise_w: Optional[float] = None, seed: int = 0, **ode: Any) -> np.ndarray:
        """Audio float32 [T] of one sentence's phoneme ids."""
        mel = self.mel_ids(ids, noise_scale, length_scale, noise_w, seed, **ode)
        return self._vocode(mel)[:mel.shape[1] * self.hop_length]

    def speak_stream(self, text: str, noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                     noise_w: Optional[float] = None, seed: int = 0, chunk_frames: Optional[int] = 128,
                     first_chunk_frames: Optional[int] = 32, sentence_silence: float = 0.0,
                     **ode: Any) -> Iterator[np.ndarray]:
        """As :meth:`Voice.speak_stream` (chunks: vocoder frames; the ODE runs per sentence), plus ``ode``
        options nfe, solver, sway, guidance (None or absent: the bundle's defaults)."""
        opts = self._options(noise_scale, length_scale, noise_w, ode)
        seed = check_seed(seed)
        silence = check_stream_options(text, chunk_frames, first_chunk_frames, sentence_silence, self.sample_rate)
        return self._stream(text, opts, seed, chunk_frames, first_chunk_frames, silence)

    def speak(self, text: str, noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
              noise_w: Optional[float] = None, seed: int = 0, sentence_silence: float = 0.0,
              **ode: Any) -> Tuple[np.ndarray, int]:
        """Synthesize a whole text: (audio float32 [T], sample_rate); ``ode``: nfe, solver, sway, guidance."""
        pieces = list(self.speak_stream(text, noise_scale, length_scale, noise_w, seed, chunk_frames=None,
                                        first_chunk_frames=None, sentence_silence=sentence_silence, **ode))
        return np.concatenate(pieces), self.sample_rate

    def __repr__(self) -> str:
        return f"FmVoice({self.source}, {self.sample_rate} Hz, nfe {self.sampling['nfe']})"


BUNDLE_LOADERS["fmtts"] = FmVoice.load

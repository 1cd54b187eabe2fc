"""The ``tts_wave`` pass: a VITS voice's waveform-rate decoder stage in the native engine, INT8 with block-scaled
activations.

The last HiFi-GAN stage of a voice's decoder runs at the audio rate and is about half of a ``balanced`` voice's
time at one thread; INT8 with one activation scale per tensor (a QDQ graph) costs the voice 0.2-0.5 DNSMOS P.808,
so the recipes keep it float. The native stage kernel (:mod:`edgeflow.runtime.native.wave_stage`) gives every
conv's input one u8 scale per 128 output samples, so the quantization noise follows the signal's level; the convs
the audio is most sensitive to get a second u8 plane holding the rounding error (about 16-bit activations).

Runs after ``tts_kernels`` (the voice's native engine: native prior flow, onnxruntime for the rest of the decoder),
on a bundle whose last stage is float (``tts_quantize`` with ``float_last_stages`` >= 1, or a float32 bundle);
otherwise, or where the C library is not built, it records why and leaves the bundle as it is. Writes a NEW bundle
directory holding the same files, with the native engine's cut decoder replaced by ``decoder_head.onnx`` (the flow's
output to the last upsampler's output) and ``wave_stage.npz`` (the stage's int8 weights, per-channel scales, float
biases and conv_post), both hashed in the manifest, and the ``native`` section's ``wave_stage`` entry: which convs
got two planes (by default all; or chosen, most helpful first, until the audio's SNR against the float stage in
onnxruntime reaches ``min_snr_db`` on calibration sentences), the SNR, and both engines' times again
(``engine="auto"`` picks from them). The audio changes (INT8), so the pipeline scores the bundle's native engine against the budget.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassContext, register_pass
from edgeflow.passes.kernels import kernels_handler, snr_db
from edgeflow.passes.tts_kernels import NativePassConfig, retime

#: Files the pass adds to a bundle.
HEAD_DECODER = "decoder_head.onnx"
WAVE_FILE = "wave_stage.npz"
WAVE_ENGINE = "hifigan-stage-int8-blocks"
#: Calibration SNR (dB, against the float stage) below which the stage was not read as the graph computes it (joe-
#: medium: 39 dB with one plane everywhere; a tiny random voice: about 24 dB).
MIN_SNR_DB = 15.0


@dataclasses.dataclass
class TtsWaveConfig(NativePassConfig):
    """Options of the tts_wave pass (and :class:`NativePassConfig`'s: threads, time_seconds, sentences, the SNRs'
    calibration sentences).

    Attributes:
        two_planes: the convs given two activation planes (about 16-bit activations, twice the dot products):
            "all" (the default: the stage's error is then its INT8 weights', about 48 dB SNR on joe-medium, and
            the 6-sentence gate heard no difference, 2026-12-05), "search" (the fewest convs, most helpful
            first, whose calibration SNR reaches ``min_snr_db``), or a list of conv numbers (run order).
        min_snr_db: the search's target: audio SNR against the float stage (onnxruntime) over the calibration
            sentences (joe-medium, 2026-12-05: one plane everywhere 39 dB, DNSMOS P.808 -0.07 on 12 evaluation
            sentences; two on the last resblock's convs 43 dB, -0.03).
        upsampler: run the last upsampler (the float ConvTranspose ahead of the stage, 3 ms per second of audio in
            onnxruntime on joe-medium at 1 thread) in the kernel too, block-scaled INT8 like the stage's convs: the
            head graph then ends at its LeakyRelu's input, and conv number len(stage convs) is the upsampler.
    """

    two_planes: Any = "all"
    min_snr_db: float = 43.0
    upsampler: bool = False

    def __post_init__(self):
        ok = self.two_planes in ("all", "search") or (isinstance(self.two_planes, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.two_planes))
        if not ok:
            raise ValueError('tts_wave: two_planes must be "all", "search" or a list of conv numbers')
        super().__post_init__()


def stage_inputs(voice: Any, head: Any, texts: Sequence[str], seed: int):
    """(``head``'s outputs [C, T], ``voice.decoder``'s outputs flattened) of the first sentence of each of ``texts``
    (seed ``seed + k``) through ``voice``'s native flow. ``tts_wave``: ``head`` is the decoder cut before the stage
    (its outputs are the stage's inputs) and the voice's cut decoder gives the float stage's audio; ``tts_head``:
    ``head`` ends at the first native stage's input and the voice's decoder is onnxruntime's head graph."""
    from edgeflow.runtime.voice_config import resolve_scales

    xs, refs = [], []
    inp, scales = head.get_inputs()[0].name, resolve_scales(voice.config, None, None, None)
    for k, text in enumerate(texts):
        ids = next(voice.sentence_ids(text))
        m_p, logs_p = voice._encode(ids, scales, seed + k)
        z = voice.flow.run(voice.prior(m_p, logs_p, scales["noise_scale"], seed + k, 0, m_p.shape[2]))
        xs.append(head.run(None, {inp: z})[0][0])
        refs.append(voice._run(voice.decoder, {voice.flow_output: z})[0].reshape(-1))
    return xs, refs


def choose_planes(make_stage, n_convs: int, xs, refs, min_snr_db: float, fixed: Optional[Sequence[int]] = None):
    """The two-plane convs: ``fixed``, or greedily (the conv whose second plane raises the calibration SNR most,
    until ``min_snr_db``). ``make_stage(planes)`` builds a stage. Returns (planes, SNR, SNR of each step)."""
    def snr(planes):
        stage = make_stage(planes)
        return snr_db([stage.run(x)[:len(r)] for x, r in zip(xs, refs)], refs)

    planes = sorted(int(i) for i in fixed) if fixed is not None else []
    steps = [{"two_planes": list(planes), "snr_db": snr(planes)}]
    while fixed is None and steps[-1]["snr_db"] < min_snr_db and len(planes) < n_convs:
        best = max(((snr(sorted(planes + [i])), i) for i in range(n_convs) if i not in planes))
        planes = sorted(planes + [best[1]])
        steps.append({"two_planes": list(planes), "snr_db": best[0]})
    return planes, steps[-1]["snr_db"], steps


def add_tts_wave(bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[TtsWaveConfig] = None, seed: int = 0,
                 overwrite: bool = False) -> Dict[str, Any]:
    """Copy the VITS bundle ``bundle_dir`` (with the ``tts_kernels`` pass's native flow) to ``out_dir`` with the
    native INT8 waveform stage. Returns the manifest written.

    Raises:
        ConfigError: no float last stage, no native flow. BundleError: the stage's calibration SNR is below
            :data:`MIN_SNR_DB` (the graph was not read as it computes), or out_dir exists.
    """
    import onnxruntime as ort

    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.core.ort import session_options
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime.native.vits_stage import cut_before_stage, stage_arrays, stage_convs
    from edgeflow.runtime.native.wave_stage import WaveStage, chunk_samples, save_arrays, tile_samples
    from edgeflow.runtime.voice import Voice
    from edgeflow.runtime.voice_config import read_vits_manifest, vits_native_section

    cfg = cfg or TtsWaveConfig()
    src = Path(bundle_dir)
    manifest = read_vits_manifest(src)
    section = vits_native_section(manifest, src)
    if section is None or section.get("wave_stage"):
        raise ConfigError("tts_wave: needs a bundle with the tts_kernels pass's native flow and no waveform stage yet")
    cut, threads = src / section["decoder"], cfg.threads or 1
    stage = stage_convs(cut, cfg.upsampler)                   # read once: every candidate is packed from it
    n_convs = len(stage[0]) + bool(cfg.upsampler)
    channels = stage[1]["up"]["weight"].shape[0] if cfg.upsampler else int(stage[0][0]["weight"].shape[1])
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in src.iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR, section["decoder"], HEAD_DECODER, WAVE_FILE):
                shutil.copy2(p, tmp / p.name)
        name = cut_before_stage(cut, tmp / HEAD_DECODER, channels, stage[1]["input"] if cfg.upsampler else None)
        head = ort.InferenceSession(str(tmp / HEAD_DECODER), session_options(threads),
                                    providers=["CPUExecutionProvider"])
        xs, refs = stage_inputs(Voice.load(src, threads=threads, engine="native"), head,
                                sentences("calibration")[:cfg.sentences], seed)
        make = lambda planes: WaveStage(stage_arrays(stage, planes), threads=threads)  # noqa: E731
        fixed = list(range(n_convs)) if cfg.two_planes == "all" else \
            None if cfg.two_planes == "search" else list(cfg.two_planes)
        planes, snr, steps = choose_planes(make, n_convs, xs, refs, cfg.min_snr_db, fixed)
        if snr < MIN_SNR_DB:
            raise BundleError(f"tts_wave: the INT8 stage is {snr} dB from the float stage on calibration sentences "
                              f"(under {MIN_SNR_DB}): the graph was not read as it computes")
        save_arrays(tmp / WAVE_FILE, stage_arrays(stage, planes))
        draft = {k: v for k, v in manifest.items() if k != "files"}
        calibration = {"sentences": cfg.sentences, "snr_db": snr, "steps": steps, "min_snr_db": cfg.min_snr_db,
                       "reference": "the float stage in onnxruntime, same inputs"}
        draft["native"] = dict(section, decoder=HEAD_DECODER, wave_stage={
            "file": WAVE_FILE, "engine": WAVE_ENGINE, "input": name, "convs": n_convs, "two_planes": planes,
            "tile_samples": tile_samples(), "chunk_samples": chunk_samples(), "calibration": calibration,
            "upsampler": {"stride": stage[1]["up"]["stride"], "kernel": int(stage[1]["up"]["weight"].shape[2]),
                          "conv": n_convs - 1} if cfg.upsampler else None})
        draft["native"].pop("timings_other", None)
        write_manifest(tmp, draft)
        retime(tmp, manifest, draft["native"], cfg.time_seconds, threads)
        return write_manifest(tmp, json.loads(json.dumps(draft)))


def not_applicable(artifact: Artifact, upsampler: bool = False) -> Optional[str]:
    """Why the pass leaves this artifact as it is (no native flow, a quantized last stage, with ``upsampler`` a last
    upsampler the stage cannot run, no C library), or None."""
    from edgeflow.passes.tts_kernels import native_section
    from edgeflow.runtime.native import load_error
    from edgeflow.runtime.native.vits_stage import stage_convs

    section, why = native_section(artifact, "tts_wave")
    if why:
        return why
    if section.get("wave_stage"):
        return "the bundle already has a native waveform stage"
    try:
        stage_convs(Path(artifact.bundle_dir) / section["decoder"], upsampler)
    except ConfigError as exc:
        return str(exc)
    return load_error()


def _details(native: Dict[str, Any], ctx: PassContext) -> Dict[str, Any]:
    wave = native["wave_stage"]
    if ctx.progress:
        print(f"    tts_wave: two planes on convs {wave['two_planes']} of {wave['convs']}, "
              f"SNR {wave['calibration']['snr_db']} dB vs the float stage")
    return {"wave_stage": wave, "timing": native["timing"]}


register_pass("tts_wave", TtsWaveConfig, kernels_handler(
    "tts_wave", lambda a, cfg: not_applicable(a, cfg.upsampler),
    lambda a, out, cfg, ctx: add_tts_wave(a.bundle_dir, out, cfg, seed=ctx.seed, overwrite=True), _details))

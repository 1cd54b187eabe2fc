"""The ``kernels`` pass: the native engine's packed weights beside the bundle's ONNX, parity-checked and timed.

Runs after ``export`` on a float32 WaveFlow bundle, or after ``quantize`` on an INT8 one (on another family, an
FP16 bundle or where the C library is not built it records why and leaves the bundle as it is, so a recipe can
name it for every family). A WaveGlow bundle gets ``waveglow.npz`` instead
(:mod:`edgeflow.runtime.native.waveglow`, packed by :mod:`edgeflow.passes.kernels_waveglow`), checked and timed
the same way, float32 or INT8 (FP16 bundles: recorded as not applicable). INT8: the convs the quantized graph runs
in INT8 (its DequantizeLinear weights: the dilated and conditioning convs of the ``fast`` / ``balanced`` recipes)
run in INT8 in the engine too, with the graph's own int8 weights and per-channel scales (checked against the
model's folded float weights); activations are quantized dynamically (u8, scale and zero point per cached row for
WaveFlow, per layer input and conditioning for WaveGlow), everything else stays float. Parity against the
onnxruntime INT8 graph is then a quality budget (log-mel L1, ``int8_max_mel_l1``; SNR recorded), not
bit-closeness. Writes a NEW bundle directory in the work dir (the
current one is left as it is, so the pipeline can roll back) holding the same files plus ``kernels.npz``
(:mod:`edgeflow.runtime.native.format`, packed by :mod:`edgeflow.passes.kernels_waveflow`: weight norm folded,
the end convs folded into the skip convs, the upsampler in phase form, exactly as the exported graph computes),
hashed in the manifest like every file, and a ``native`` manifest section: the file, the parity of the native
engine against onnxruntime (same mel, z and sigma, at the export's validation lengths: max relative error and
SNR), and both engines' measured real-time factor, from which ``Synthesizer.load(..., engine="auto")`` picks the
faster one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.kernels_waveflow import int8_from_graph, pack_waveflow  # noqa: F401  (public here too)


@dataclasses.dataclass
class KernelsConfig(PassConfig):
    """Options of the kernels pass.

    Attributes:
        threads: threads both engines are timed with (0: the target's ``threads``, else 1).
        time_seconds: seconds of audio each engine is timed on (0: no timing; ``auto`` then keeps onnxruntime).
        max_rel_err: parity: max |native - onnxruntime| / max |onnxruntime| allowed, per length.
        min_snr_db: parity: SNR of the native audio against onnxruntime's, per length.
        int8_max_mel_l1: INT8 bundles: log-mel L1 of the native audio against onnxruntime's INT8 audio, per clip
            (the budget of the ``fast`` recipe's quantize pass against float; both engines quantize differently).
    """

    threads: int = 0
    time_seconds: float = 2.0
    max_rel_err: float = 1e-4
    min_snr_db: float = 80.0
    int8_max_mel_l1: float = 0.1

    def __post_init__(self):
        if self.threads < 0 or self.time_seconds < 0 or self.max_rel_err <= 0 or self.int8_max_mel_l1 <= 0:
            raise ValueError("kernels: threads and time_seconds must be >= 0, max_rel_err and int8_max_mel_l1 > 0")


def compare(native: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """max |a - b| / max |b| and SNR (dB) of ``native`` against ``reference``."""
    err = native.astype(np.float64) - reference
    peak, noise = float(np.max(np.abs(reference))), float(np.sum(err ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)
    return {"max_abs_err": float(np.max(np.abs(err))), "max_rel_err": float(np.max(np.abs(err)) / max(peak, 1e-12)),
            "snr_db": round(float(snr), 2) if np.isfinite(snr) else 999.0}


def snr_db(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """:func:`compare`'s SNR (dB) of several outputs against their references, all flattened and joined."""
    return compare(np.concatenate([np.ravel(o) for o in outputs]),
                   np.concatenate([np.ravel(r) for r in references]))["snr_db"]


def _parity(ort_synth, nat_synth, frames, cfg: KernelsConfig) -> Dict[str, Any]:
    rows = []
    for n in frames:
        rng = np.random.default_rng(n)
        mel = (rng.standard_normal((2, ort_synth.n_mels, n)) * 2.0 - 5.0).astype(np.float32)
        ref, out = ort_synth.synthesize(mel, seed=n), nat_synth.synthesize(mel, seed=n)
        row = dict(frames=n, batch=2, **compare(out, ref))
        row["passed"] = bool(np.all(np.isfinite(out)) and row["max_rel_err"] <= cfg.max_rel_err
                             and row["snr_db"] >= cfg.min_snr_db)
        rows.append(row)
    return {"reference": "onnxruntime on the bundle's model.onnx, same mel, z and sigma",
            "max_rel_err": cfg.max_rel_err, "min_snr_db": cfg.min_snr_db, "lengths": rows,
            "passed": all(r["passed"] for r in rows)}


def _int8_clips(manifest: Dict[str, Any], n_mels: int, frames) -> list:
    """(name, mel [n_mels, F], seed) clips for INT8 parity: up to 4 utterances of the calibration set the quantize
    pass recorded (real mels, inside the graph's calibrated ranges) where it still loads, else random log-mels at
    the validation lengths."""
    from edgeflow.audio.mel import MelConfig
    from edgeflow.data.calibration import load_calibration_set

    path = manifest.get("quantization", {}).get("calibration", {}).get("path")
    try:
        cset = load_calibration_set(path, MelConfig.from_dict(manifest["mel"])) if path else None
    except Exception:                                               # moved or changed: fall back to random mels
        cset = None
    if cset is not None and len(cset):
        return [(f"calibration:{i}", m, s) for i, m, s in list(zip(cset.ids, cset.mels, cset.seeds))[:4]]
    rng = np.random.default_rng(0)
    return [(f"random:{n}", (rng.standard_normal((n_mels, n)) * 2.0 - 5.0).astype(np.float32), n) for n in frames]


def _parity_int8(ort_synth, nat_synth, manifest, frames, cfg: KernelsConfig) -> Dict[str, Any]:
    from edgeflow.audio.mel import MelConfig
    from edgeflow.audio.snr import log_mel_l1, snr_db

    mel_cfg, rows = MelConfig.from_dict(manifest["mel"]), []
    for name, mel, seed in _int8_clips(manifest, ort_synth.n_mels, frames):
        ref, out = ort_synth.synthesize(mel, seed=seed), nat_synth.synthesize(mel, seed=seed)
        finite = bool(np.all(np.isfinite(out)))
        row = {"clip": name, "frames": int(mel.shape[-1]), "snr_db": round(snr_db(ref, out), 2) if finite else None,
               "mel_l1": round(log_mel_l1(ref, out, mel_cfg), 4) if finite else None}
        row["passed"] = finite and row["mel_l1"] <= cfg.int8_max_mel_l1
        rows.append(row)
    return {"reference": "onnxruntime on the bundle's INT8 model.onnx, same mel, z and sigma",
            "max_mel_l1": cfg.int8_max_mel_l1, "lengths": rows, "passed": all(r["passed"] for r in rows)}


def _rtf(synth, seconds: float) -> float:
    frames = max(1, int(round(seconds * synth.sample_rate / synth.hop_length)))
    mel = (np.random.default_rng(0).standard_normal((synth.n_mels, frames)) * 2.0 - 5.0).astype(np.float32)
    synth.synthesize(mel[:, :min(frames, 8)])                        # warm-up
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        synth.synthesize(mel)
        best = min(best, time.perf_counter() - t0)
    return round(best / (frames * synth.hop_length / synth.sample_rate), 4)


def _packed(model: Any, bundle_dir: str | Path, family: str, precision: str
            ) -> Tuple[Dict[str, np.ndarray], str, Callable]:
    """(arrays, file name, checked writer) of the native weights of ``model`` for its bundle.

    Raises:
        ConfigError: not a float32 / INT8 WaveFlow or WaveGlow bundle. BundleError: INT8 weights that do not
            match the model.
    """
    from edgeflow.runtime.native import format as fmt
    from edgeflow.runtime.native import waveglow

    if family not in ("waveflow", "waveglow") or precision not in ("float32", "int8"):
        raise ConfigError(f"kernels: needs a float32 / INT8 WaveFlow or WaveGlow bundle, got {precision} {family}")
    if family == "waveglow":
        from edgeflow.passes.kernels_waveglow import int8_from_graph as waveglow_int8, pack_waveglow

        arrays = pack_waveglow(model)
        if precision == "int8":
            arrays = waveglow_int8(Path(bundle_dir) / "model.onnx", model, arrays)
        return arrays, waveglow.WAVEGLOW_FILE, waveglow.save
    arrays = pack_waveflow(model)
    if precision == "int8":
        arrays = int8_from_graph(Path(bundle_dir) / "model.onnx", arrays)
    return arrays, fmt.KERNELS_FILE, fmt.save


def _int8_section(family: str, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The manifest's account of which convs the native engine runs in INT8."""
    from edgeflow.runtime.native.format import int8_parts

    weights = "the quantized graph's int8 initializers and per-output-channel scales (symmetric)"
    if family == "waveglow":
        n = sum(name.endswith(".in.qweight") for name in arrays)
        total = sum(name.endswith(".in.weight") for name in arrays)
        return {"dilated_convs": n, "cond_convs": n, "float_layers": total - n, "weights": weights,
                "activations": "u8, scale and zero point per layer input and for the conditioning, per call "
                               "(dynamic), int32 accumulation",
                "float": "upsampler, 1x1 invertible convs, start, res and skip convs, gate, exp, affine update"}
    parts = int8_parts(arrays)
    return {"dilated_convs": sum(p[2] == 0 for p in parts), "cond_convs": sum(p[2] == 1 for p in parts),
            "weights": weights, "activations": "u8, scale and zero point per cached row (dynamic), int32 accumulation",
            "float": "upsampler, start, res and skip convs, gate, exp, affine update, log-det"}


def _checked_parity(ort_synth, nat_synth, manifest: Dict[str, Any], cfg: KernelsConfig) -> Dict[str, Any]:
    """The native engine's parity against onnxruntime at the export's validation lengths (INT8: a log-mel
    budget); BundleError (one line, the worst length) when it fails."""
    frames = [r["frames"] for r in manifest.get("validation", {}).get("lengths", [])] or [8, 23, 50]
    if manifest["precision"] == "int8":
        parity = _parity_int8(ort_synth, nat_synth, manifest, frames, cfg)
        if not parity["passed"]:
            worst = max(parity["lengths"], key=lambda r: float("inf") if r["mel_l1"] is None else r["mel_l1"])
            raise BundleError(f"kernels: native INT8 vs onnxruntime INT8 parity failed (log-mel L1 "
                              f"{worst['mel_l1']} > {cfg.int8_max_mel_l1}, SNR {worst['snr_db']} dB, "
                              f"clip {worst['clip']})")
        return parity
    parity = _parity(ort_synth, nat_synth, frames, cfg)
    if not parity["passed"]:
        worst = max(parity["lengths"], key=lambda r: r["max_rel_err"])
        raise BundleError(f"kernels: native engine vs onnxruntime parity failed (max rel err "
                          f"{worst['max_rel_err']:.2e}, SNR {worst['snr_db']} dB at {worst['frames']} frames)")
    return parity


def add_kernels(model: Any, bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[KernelsConfig] = None,
                overwrite: bool = False) -> Dict[str, Any]:
    """Copy the float32 or INT8 WaveFlow or WaveGlow bundle ``bundle_dir`` to ``out_dir`` with the
    native weights of ``model`` (the model the bundle was exported from), checked against onnxruntime and timed.
    Returns the manifest written.

    Raises:
        ConfigError: not such a bundle / model. BundleError: parity failed, INT8 weights that do not match the
            model, or out_dir exists.
    """
    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.runtime.conv_layout import choose_layout
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.runtime.native.format import KERNELS_FILE
    from edgeflow.runtime.native.waveglow import WAVEGLOW_FILE
    from edgeflow.runtime.synthesizer import Synthesizer

    cfg = cfg or KernelsConfig()
    manifest = read_manifest(bundle_dir)
    precision, family = manifest["precision"], manifest["family"]
    arrays, file, write = _packed(model, bundle_dir, family, precision)
    threads = cfg.threads or 1
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in Path(bundle_dir).iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR, KERNELS_FILE, WAVEGLOW_FILE):
                shutil.copy2(p, tmp / p.name)
        write(tmp / file, arrays)
        draft = {k: v for k, v in manifest.items() if k not in ("files", "native")}
        draft["native"] = {"file": file, "engine": f"{family}-{precision}", "precision": precision}
        if precision == "int8":
            draft["native"]["int8"] = _int8_section(family, arrays)
        write_manifest(tmp, draft)
        ort_synth = Synthesizer.load(tmp, threads=threads, engine="onnxruntime")
        nat_synth = Synthesizer.load(tmp, threads=threads, engine="native")
        parity = _checked_parity(ort_synth, nat_synth, manifest, cfg)
        timing = None
        if cfg.time_seconds > 0:
            timing = {"threads": threads, "conv_layout": choose_layout("auto", threads), "seconds": cfg.time_seconds,
                      "native_rtf": _rtf(nat_synth, cfg.time_seconds),
                      "onnxruntime_rtf": _rtf(ort_synth, cfg.time_seconds)}
            timing["faster"] = "native" if timing["native_rtf"] < timing["onnxruntime_rtf"] else "onnxruntime"
        from edgeflow.runtime.native import info

        lib = info()
        draft["native"].update(parity=json.loads(json.dumps(parity)), timing=timing, library=lib["isa"])
        if precision == "int8":
            draft["native"]["int8_kernel"] = lib["int8_kernel"]
        return write_manifest(tmp, draft)


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (another family, an FP16 bundle, no C library), or None. The
    pass is then recorded with that reason and the bundle unchanged, so one recipe serves every family."""
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.runtime.native import load_error

    if artifact.model is None or artifact.bundle_dir is None:
        raise ConfigError("kernels: needs the torch model and its exported bundle (run the export pass first)")
    manifest = read_manifest(artifact.bundle_dir)
    if manifest["family"] not in ("waveflow", "waveglow"):
        return f"the native engine has kernels for WaveFlow and WaveGlow only, not {manifest['family']}"
    if manifest["precision"] not in ("float32", "int8"):
        return f"the native engine has float32 and INT8 kernels; the bundle is {manifest['precision']}"
    return load_error()


def kernels_handler(name: str, why_not: Callable[[Artifact, Any], Optional[str]],
                    build: Callable[[Artifact, Path, Any, PassContext], Dict[str, Any]],
                    details: Optional[Callable[[Dict[str, Any], PassContext], Dict[str, Any]]] = None):
    """A pass handler that adds native kernels to the artifact's bundle: ``why_not(artifact, cfg)`` says why it
    does not apply (the bundle is then left as it is), ``build(artifact, out_dir, cfg, ctx)`` writes the bundle
    with kernels and returns its manifest, ``details(native section, ctx)`` the record's details (default: the
    parity and the timing). The config's ``threads`` 0 means the target's."""

    def handler(artifact: Artifact, cfg: Any, ctx: PassContext):
        why = why_not(artifact, cfg)
        if why:
            if ctx.progress:
                print(f"    {name}: bundle unchanged ({why})")
            return {"native": False, "reason": why}
        if not cfg.threads:
            cfg = dataclasses.replace(cfg, threads=int(ctx.target.get("threads", 1) or 1))
        out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-{name.replace('_', '-')}"
        native = build(artifact, out, cfg, ctx)["native"]
        artifact.bundle_dir = out
        more = details(native, ctx) if details else {"parity": native["parity"], "timing": native["timing"]}
        return {"native": True, "bundle": out.name, **more}

    return handler


register_pass("kernels", KernelsConfig, kernels_handler(
    "kernels", lambda a, cfg: not_applicable(a),
    lambda a, out, cfg, ctx: add_kernels(a.model, a.bundle_dir, out, cfg, overwrite=True)), changes_output=False)

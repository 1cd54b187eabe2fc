"""The ``kernels`` pass: the native engine's packed weights beside the bundle's ONNX, parity-checked and timed.

Runs after ``export`` on a float32 WaveFlow bundle (on another family, a quantized bundle or where the C library
is not built it records why and leaves the bundle as it is, so a recipe can name it for every family). Writes a NEW bundle directory in the work dir (the current one
is left as it is, so the pipeline can roll back) holding the same files plus ``kernels.npz``
(:mod:`edgeflow.runtime.native.format`: weight norm folded, the end convs folded into the skip convs, the
upsampler in phase form, exactly as the exported graph computes), hashed in the manifest like every file, and a
``native`` manifest section: the file, the parity of the native engine against onnxruntime (same mel, z and
sigma, at the export's validation lengths: max relative error and SNR), and both engines' measured real-time
factor, from which ``Synthesizer.load(..., engine="auto")`` picks the faster one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


@dataclasses.dataclass
class KernelsConfig(PassConfig):
    """Options of the kernels pass.

    Attributes:
        threads: threads both engines are timed with (0: the target's ``threads``, else 1).
        time_seconds: seconds of audio each engine is timed on (0: no timing; ``auto`` then keeps onnxruntime).
        max_rel_err: parity: max |native - onnxruntime| / max |onnxruntime| allowed, per length.
        min_snr_db: parity: SNR of the native audio against onnxruntime's, per length.
    """

    threads: int = 0
    time_seconds: float = 2.0
    max_rel_err: float = 1e-4
    min_snr_db: float = 80.0

    def __post_init__(self):
        if self.threads < 0 or self.time_seconds < 0 or self.max_rel_err <= 0:
            raise ValueError("kernels: threads and time_seconds must be >= 0, max_rel_err > 0")



def pack_waveflow(model: Any) -> Dict[str, np.ndarray]:
    """The native weight arrays of a WaveFlow model (left untouched; a frozen, fused copy is read).

    Raises:
        ConfigError: not a WaveFlow, or an upsampler without the phase form (odd factors).
    """
    import torch

    from edgeflow.models.family import get_family
    from edgeflow.runtime.native.format import FORMAT

    fam = get_family(model)
    if fam.name != "waveflow":
        raise ConfigError(f"kernels: the native engine has kernels for WaveFlow only, not {fam.name}")
    frozen = fam.fuse(fam.freeze(copy.deepcopy(model).cpu().float()))
    cfg, up = frozen.config, frozen.upsample
    if not up.phased:
        raise ConfigError("kernels: the native engine needs even upsample factors (the phase form)")
    f32 = lambda t: t.detach().to(torch.float32).numpy().copy()  # noqa: E731
    nets = [blk.inner.net for blk in frozen.flows.blocks]
    out = {"format": np.array([FORMAT], np.int32),
           "config": np.array([cfg.n_flows, cfg.n_layers, cfg.channels, cfg.kernel_size, cfg.mel.n_mels,
                               cfg.height, len(up.factors)], np.int32),
           "up_factors": np.array(up.factors, np.int32),
           "dilations_h": np.array([lay.dh for lay in nets[0].layers], np.int32),
           "dilations_w": np.array([lay.dw for lay in nets[0].layers], np.int32),
           "row_orders": np.array([blk.permute.perm.tolist() for blk in frozen.flows.blocks], np.int32)}
    for u, layer in enumerate(up.layers):
        out[f"up.{u}.phase"] = f32(getattr(up, f"phase_weight_{u}")[:, 0])
        out[f"up.{u}.bias"] = f32(layer.bias).reshape(1)
    for f, net in enumerate(nets):
        out[f"flow.{f}.start.weight"], out[f"flow.{f}.start.bias"] = f32(net.start.weight).reshape(-1), \
            f32(net.start.bias)
        for i, lay in enumerate(net.layers):
            p = f"flow.{f}.layer.{i}."
            out[p + "conv.weight"] = f32(lay.conv.weight)
            out[p + "cond.weight"] = f32(lay.cond_conv.weight)[:, :, 0, 0]
            out[p + "in.bias"] = f32(lay.conv.bias + lay.cond_conv.bias)
            out[p + "res.weight"], out[p + "res.bias"] = f32(lay.res_conv.weight)[:, :, 0, 0], f32(lay.res_conv.bias)
            out[p + "skip.weight"], out[p + "skip.bias"] = f32(lay.skip_end.weight)[:, :, 0, 0], \
                f32(lay.skip_end.bias)
    return out


def compare(native: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """max |a - b| / max |b| and SNR (dB) of ``native`` against ``reference``."""
    err = native.astype(np.float64) - reference
    peak, noise = float(np.max(np.abs(reference))), float(np.sum(err ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)
    return {"max_abs_err": float(np.max(np.abs(err))), "max_rel_err": float(np.max(np.abs(err)) / max(peak, 1e-12)),
            "snr_db": round(float(snr), 2) if np.isfinite(snr) else 999.0}


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


def add_kernels(model: Any, bundle_dir: str | Path, out_dir: str | Path, cfg: Optional[KernelsConfig] = None,
                overwrite: bool = False) -> Dict[str, Any]:
    """Copy the float32 WaveFlow bundle ``bundle_dir`` to ``out_dir`` with the native weights of ``model`` (the
    model the bundle was exported from), checked against onnxruntime and timed. Returns the manifest written.

    Raises:
        ConfigError: not a float32 WaveFlow bundle / model. BundleError: parity failed, or out_dir exists.
    """
    from edgeflow.core.bundle_format import MANIFEST, SIDECAR, write_manifest
    from edgeflow.core.io import atomic_dir
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.runtime.native.format import KERNELS_FILE, save
    from edgeflow.runtime.synthesizer import Synthesizer

    cfg = cfg or KernelsConfig()
    manifest = read_manifest(bundle_dir)
    if manifest["family"] != "waveflow" or manifest["precision"] != "float32":
        raise ConfigError(f"kernels: needs a float32 WaveFlow bundle, got {manifest['precision']} "
                          f"{manifest['family']} (run it before quantize)")
    arrays = pack_waveflow(model)
    threads = cfg.threads or 1
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for p in Path(bundle_dir).iterdir():
            if p.is_file() and p.name not in (MANIFEST, SIDECAR, KERNELS_FILE):
                shutil.copy2(p, tmp / p.name)
        save(tmp / KERNELS_FILE, arrays)
        draft = {k: v for k, v in manifest.items() if k not in ("files", "native")}
        draft["native"] = {"file": KERNELS_FILE, "engine": "waveflow-float32"}
        write_manifest(tmp, draft)
        ort_synth = Synthesizer.load(tmp, threads=threads, engine="onnxruntime")
        nat_synth = Synthesizer.load(tmp, threads=threads, engine="native")
        frames = [r["frames"] for r in manifest.get("validation", {}).get("lengths", [])] or [8, 23, 50]
        parity = _parity(ort_synth, nat_synth, frames, cfg)
        if not parity["passed"]:
            worst = max(parity["lengths"], key=lambda r: r["max_rel_err"])
            raise BundleError(f"kernels: native engine vs onnxruntime parity failed (max rel err "
                              f"{worst['max_rel_err']:.2e}, SNR {worst['snr_db']} dB at {worst['frames']} frames)")
        timing = None
        if cfg.time_seconds > 0:
            timing = {"threads": threads, "seconds": cfg.time_seconds, "native_rtf": _rtf(nat_synth, cfg.time_seconds),
                      "onnxruntime_rtf": _rtf(ort_synth, cfg.time_seconds)}
            timing["faster"] = "native" if timing["native_rtf"] < timing["onnxruntime_rtf"] else "onnxruntime"
        from edgeflow.runtime.native import info

        draft["native"].update(parity=json.loads(json.dumps(parity)), timing=timing, library=info()["isa"])
        return write_manifest(tmp, draft)


def not_applicable(artifact: Artifact) -> Optional[str]:
    """Why the pass leaves this artifact as it is (another family, a quantized bundle, no C library), or None. The
    pass is then recorded with that reason and the bundle unchanged, so one recipe serves every family."""
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.runtime.native import load_error

    if artifact.model is None or artifact.bundle_dir is None:
        raise ConfigError("kernels: needs the torch model and its exported bundle (run the export pass first)")
    manifest = read_manifest(artifact.bundle_dir)
    if manifest["family"] != "waveflow":
        return f"the native engine has kernels for WaveFlow only, not {manifest['family']}"
    if manifest["precision"] != "float32":
        return f"the native engine's kernels are float32; the bundle is already {manifest['precision']}"
    return load_error()


def _kernels(artifact: Artifact, cfg: KernelsConfig, ctx: PassContext):
    why = not_applicable(artifact)
    if why:
        if ctx.progress:
            print(f"    kernels: bundle unchanged ({why})")
        return {"native": False, "reason": why}
    if not cfg.threads:
        cfg = dataclasses.replace(cfg, threads=int(ctx.target.get("threads", 1) or 1))
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-kernels"
    manifest = add_kernels(artifact.model, artifact.bundle_dir, out, cfg, overwrite=True)
    artifact.bundle_dir = out
    native = manifest["native"]
    return {"native": True, "bundle": out.name, "parity": native["parity"], "timing": native["timing"]}


register_pass("kernels", KernelsConfig, _kernels, changes_output=False)

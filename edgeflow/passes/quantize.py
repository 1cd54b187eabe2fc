"""The ``quantize`` pass: a coupling-aware INT8 (or FP16) bundle from the current float bundle.

Runs after ``export``. Writes a NEW bundle directory in the work dir (the float bundle is left as it
is, so the pipeline can roll back), with ``precision`` "int8" / "float16" and a ``quantization``
section in the manifest (method, calibration set and its hash, what stayed float and why, measured
quality against the float bundle), and points ``artifact.bundle_dir`` at it.

Calibration data: ``ctx.calib_dir`` (``edgeflow optimize --calib DIR``), else the default set
``calibration/<model-name>`` (the checkpoint's recipe name, recorded by the pipeline), else the
only set made for this model's family and front-end; ``calibration/`` folders are looked for in the
working directory, then beside the model.pt and up to three folders above it (so
``models/NAME/model.pt`` finds ``calibration/NAME`` of its project wherever edgeflow is installed).
Otherwise an error telling how to build one (``edgeflow calibrate``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import List, Optional

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass

@dataclasses.dataclass
class QuantizeConfig(PassConfig):
    """Options of the quantize pass.

    Attributes:
        precision: "int8" (explicit Q/DQ) or "float16" (nets in fp16, audio path fp32; GPU targets).
        method: calibration: minmax | percentile | entropy | distribution (onnxruntime's methods).
        per_channel: int8 weights per output channel (always symmetric, zero point 0).
        op_types: the only op types quantized.
        exclude: node names, roles (start, dilated, res, skip, res_skip, cond, upsample) or
            groups (regexes allowed) kept float in addition to the coupling-aware defaults.
        weight_type: "int8" only: symmetric, per output channel when ``per_channel`` (zero point 0).
        activation_type: "int8" (symmetric, zero point 0: TensorRT) or "uint8" (symmetric, zero
            point 128: onnxruntime's x86 u8s8 kernels, which fuse into QLinearConv).
        quantize_outputs: also Q/DQ each quantized conv's output (onnxruntime needs it to fuse
            QLinearConv on CPU; False keeps every elementwise op on exact float values).
        residual: also Q/DQ the residual stream (the resblocks' Add inputs and outputs) of a HiFi-GAN
            generator's quantized resblocks, so onnxruntime runs their Adds and LeakyRelus on uint8 instead of a
            float round trip per conv pair (needs ``quantize_outputs``, the edgeflow engine; a flow's coupling
            Add never qualifies, see :func:`edgeflow.quant.graph.residual_tensors`).
        keep_float_roles: node roles always kept float (coupling ``end`` convs, invertible 1x1 convs, a HiFi-GAN's
            last conv to the waveform, see :mod:`edgeflow.quant.graph`).
        sensitivity: measure each group alone and keep the most harmful ones float until the budget holds.
        group_by: sensitivity groups: "kind" (layer role across flows), "flow", or "flow_kind".
        max_float_layers: at most this many groups kept float by the search (None: all but one).
        min_snr_db: budget: mean SNR of the audio vs the float bundle (same noise), calibration set.
        max_mel_l1: budget: mean log-mel L1 vs the float bundle, calibration set.
        sensitivity_clips: calibration utterances used per single-group trial (all for the budget check).
        engine: "edgeflow" (linear-time QDQ writer with onnxruntime's calibration math) or
            "onnxruntime" (quantize_static itself: same choices; fine for small graphs, quadratic on
            the unrolled WaveFlow graph).
    """

    precision: str = "int8"
    method: str = "minmax"
    per_channel: bool = True
    op_types: List[str] = dataclasses.field(default_factory=lambda: ["Conv", "ConvTranspose", "MatMul", "Gemm"])
    exclude: List[str] = dataclasses.field(default_factory=list)
    activation_type: str = "int8"
    weight_type: str = "int8"
    quantize_outputs: bool = True
    residual: bool = False
    keep_float_roles: List[str] = dataclasses.field(default_factory=lambda: ["coupling_end", "inv1x1",
                                                                                      "waveform"])
    sensitivity: bool = True
    group_by: str = "kind"
    max_float_layers: Optional[int] = None
    min_snr_db: Optional[float] = None
    max_mel_l1: Optional[float] = 0.1
    sensitivity_clips: int = 4
    engine: str = "edgeflow"

    def __post_init__(self):
        from edgeflow.quant.int8 import METHODS

        checks = [("precision", ("int8", "float16")), ("method", tuple(METHODS)),
                  ("activation_type", ("int8", "uint8")), ("weight_type", ("int8",)),
                  ("group_by", ("kind", "flow", "flow_kind")), ("engine", ("edgeflow", "onnxruntime"))]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.residual and (self.engine != "edgeflow" or not self.quantize_outputs):
            raise ValueError("residual needs engine 'edgeflow' and quantize_outputs")
        if not self.op_types:
            raise ValueError("op_types must not be empty")
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise ValueError("max_float_layers must be >= 0")
        if self.sensitivity_clips < 1:
            raise ValueError("sensitivity_clips must be >= 1")

    def inputs(self):
        return {"calibration": ""}


def default_calibration(family: str, mel: dict, name: Optional[str] = None,
                        model_path: Optional[str | Path] = None) -> Path:
    """The default calibration set for a model (see the module doc). Raises ConfigError when there is none."""
    roots = [Path.cwd() / "calibration"]
    if model_path:
        near = Path(model_path).resolve().parent
        roots += [d / "calibration" for d in [near, *near.parents][:4]]
    if name:
        for root in roots:
            if (root / name / "manifest.json").is_file():
                return root / name
    fits = []
    for root in dict.fromkeys(roots):
        for m in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
            try:
                info = json.loads(m.read_text())
            except (OSError, ValueError):
                continue
            if info.get("model", {}).get("family") in (None, family) and info.get("mel") == mel:
                fits.append(m.parent)
    if len(fits) == 1:
        return fits[0]
    what = f"calibration/{name}" if name else "a calibration set"
    raise ConfigError(f"quantize: no calibration set given and {what} not found"
                      + (f" ({len(fits)} candidates fit: {', '.join(map(str, fits))})" if fits else "")
                      + "; build one with `edgeflow calibrate --data CORPUS --model MODEL.pt -o calibration/NAME` "
                        "and pass --calib")


def _quantize(artifact: Artifact, cfg: QuantizeConfig, ctx: PassContext):
    from edgeflow.audio.mel import MelConfig
    from edgeflow.core.io import atomic_dir
    from edgeflow.quant.calibration import load_calibration_set
    from edgeflow.runtime.bundle import MODEL_FILE, read_manifest, write_manifest

    if artifact.bundle_dir is None:
        raise ConfigError("quantize: no bundle yet (run the export pass first)")
    src = Path(artifact.bundle_dir)
    manifest = read_manifest(src)
    if manifest.get("precision") != "float32":
        raise ConfigError(f"quantize: the bundle is already {manifest.get('precision')}; quantize a float32 bundle")
    calib_dir = Path(ctx.calib_dir) if ctx.calib_dir else default_calibration(
        manifest["family"], manifest["mel"])   # the pipeline passes the set it resolved up front
    cset = load_calibration_set(calib_dir, manifest["mel"])
    mel_cfg = MelConfig.from_dict(manifest["mel"])
    io = manifest["io"]
    sigma = float(io.get("sigma_default", 0.0))        # a graph without noise inputs (HiFi-GAN) has none
    feeds = list(cset.feeds(mel_cfg.hop_length, sigma, int(io.get("frame_multiple", 1)),
                            tuple(i["name"] for i in io["inputs"])))
    threads = ctx.target.get("threads") if ctx.target else None
    log = print if ctx.progress else (lambda *_: None)
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-quantize-{cfg.precision}"
    scratch = ctx.work_dir / f"quantize-{len(artifact.history):02d}"
    if out.exists():
        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        if cfg.precision == "int8":
            from edgeflow.quant.int8 import coupling_aware_int8

            details = coupling_aware_int8(src / MODEL_FILE, tmp / MODEL_FILE, feeds, mel_cfg, cfg, scratch,
                                          threads=threads, log=log)
        else:
            from edgeflow.quant.fp16 import convert_fp16

            details = convert_fp16(src / MODEL_FILE, tmp / MODEL_FILE, feeds, mel_cfg, threads=threads,
                                   min_snr_db=cfg.min_snr_db, log=log)
        details["calibration"] = {"path": str(calib_dir), "sha256": cset.digest, "utterances": len(cset),
                                  "seconds": cset.manifest.get("seconds"), "split": cset.manifest["source"]["split"]}
        q = details["quality_vs_float"]
        new = dict(manifest, precision=cfg.precision, history=list(artifact.history),
                   quantization=dict(details, config=cfg.to_dict()),
                   validation={"passed": True, "reference": "the float32 bundle, same mel, z and sigma, on the "
                               "calibration set", "snr_db": q["snr_db"], "mel_l1": q["mel_l1"],
                               "export_parity_float32": manifest.get("validation")})
        new["export"] = dict(manifest.get("export", {}), graph=dict(manifest.get("export", {}).get("graph", {}),
                                                                     bytes=(tmp / MODEL_FILE).stat().st_size))
        new.pop("files", None)
        new.pop("native", None)          # the float kernels (kernels pass) are not copied into the quantized bundle
        write_manifest(tmp, new)
    shutil.rmtree(scratch, ignore_errors=True)
    artifact.bundle_dir = out
    artifact.info["precision"] = cfg.precision
    artifact.info["calibration"] = {"path": str(calib_dir), "sha256": cset.digest}
    return {"bundle": out.name, "precision": cfg.precision, "calibration": details["calibration"],
            "kept_float": details.get("kept_float") or details.get("kept_float32"),
            "quality_vs_float": q, "bytes": (out / MODEL_FILE).stat().st_size}


register_pass("quantize", QuantizeConfig, _quantize)

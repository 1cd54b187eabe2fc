"""fmtts (flow-matching TTS) -> a three-graph ONNX bundle; the ODE loop runs in the torch-free runtime.

    BUNDLE/model.onnx    text side: (input [1, N] int64, input_lengths [1] int64, scales [3] f32,
                         noise_p [1, 2, N] f32) -> (mu_x [1, n_mels, N], f0 [1, 1, N], durations [1, N] int64)
    BUNDLE/field.onnx    the vector field, ONE function evaluation: (x [B, n_mels, F], cond [B, n_mels + 1, F],
                         mask [B, 1, F], t [B]) -> v [B, n_mels, F]; F a multiple of ``2 ** dec_levels``
    BUNDLE/ode_euler4.onnx  (``unroll=True``) the ODE unrolled for the default NFE and solver: (x0 [1, n_mels, F],
                         cond, mask, steps [S, 3] = (t, dt, t + dt / 2)) -> y [1, n_mels, F] (masked)
    BUNDLE/vocoder.onnx  the mel-only vocoder bundle's graph (HiFi-GAN): mel [B, n_mels, T] -> audio [B, T * hop]
    BUNDLE/manifest.json family "fmtts", task "tts", graphs {encoder, decoder, vocoder[, unrolled]}, sampling,
                         mel statistics, noise recipe, the vocoder bundle's provenance, parity

``scales`` = (noise_scale, length_scale, noise_w), a VITS voice's names: noise_scale is the temperature of the
ODE's initial noise (applied by the runtime), noise_w the prosody flow's temperature tau. ``mu_x`` and ``f0``
(normalized phone log-f0) are phone-level; the runtime repeats them by the durations into the frame-level
condition, draws x0 from the seed, runs Euler / midpoint over the sway grid (:mod:`edgeflow.core.ode`, NFE,
solver, sway and guidance chosen per call), denormalizes the mel and vocodes it.

The ODE graph is the one-evaluation field graph (any NFE, solver, sway, guidance per call). ``unroll=True`` adds
the ODE unrolled for the config's NFE and solver (``ode_<solver><nfe>.onnx``, its time grid an input so sway
stays free), used by the runtime when a call asks for exactly that NFE and solver without guidance. Measured
(2026-12-03, this project's 2-core CPU at 1 thread, load average 5-6 from other jobs; the step-180 demo
weights, NFE 4): no difference beyond the noise, so the flexible graph is the default: per sentence of 0.29 /
2.60 / 4.27 s, thread-CPU medians 18.8 / 68.5 / 69.3 ms unrolled against 21.2 / 60.9 / 72.7 ms for four field
calls (wall best 50 / 153 / 249 against 60 / 154 / 252 ms); the graphs alone at 224 frames, wall medians 61 vs
67 ms, at 400 frames 111 vs 114 ms. Unrolling may pay where a call costs more (GPU launches).
The prosody flow is exported over the phone axis (its coupling nets have kernel 1, so [1, 2, N] with every
phone valid computes exactly what the model's per-phone batch does); the L2 predictor is exported instead
when ``prosody="l2"``. Parity against PyTorch is checked per graph (durations equal, outputs within
:data:`TOLERANCE` relative); end-to-end parity of the runtime is tested in ``tests/test_fmtts_export.py``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from edgeflow.core.bundle_format import FORMAT, MANIFEST, MODEL_FILE, SIDECAR, manifest_digest, write_manifest
from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.core.io import atomic_dir, sha256_file
from edgeflow.core.ort import session_options
from edgeflow.export.fmtts_graphs import (TOLERANCE, FieldGraph, TextGraph, UnrolledGraph, example_ids,
                                          field_parity, ode_steps, validate_parity, validate_unrolled)
from edgeflow.export.onnx_export import ExportValidationError
from edgeflow.export.vits import OPSET, _export
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.fmtts.model import PROSODY_SEED_OFFSET, FmTts, seeded_normal
from edgeflow.models.fmtts.prosody import N_FEATURES

FIELD_FILE, VOCODER_FILE = "field.onnx", "vocoder.onnx"
TEXT_IN, TEXT_OUT = ("input", "input_lengths", "scales", "noise_p"), ("mu_x", "f0", "durations")
FIELD_IN, FIELD_OUT = ("x", "cond", "mask", "t"), ("v",)
MEL_KEYS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")


def _mel_mismatch(voc_mel: Dict[str, Any], mel: Dict[str, Any]) -> List[str]:
    return [k for k in MEL_KEYS if k not in voc_mel or abs(float(voc_mel[k]) - float(mel[k])) > 1e-6]


def read_vocoder_bundle(bundle: Path, mel: Dict[str, Any]) -> Dict[str, Any]:
    """A vocoder bundle's manifest, checked for use inside an fmtts bundle: an edgeflow bundle whose sidecar and
    graph hash match, a mel-only graph (HiFi-GAN; noise-driven vocoders are not supported here) and the
    acoustic model's mel front-end.

    Raises:
        BundleError: not a readable, intact vocoder bundle. ConfigError: another mel front-end or noise inputs.
    """
    bundle = Path(bundle)
    try:
        m = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
        side = (bundle / SIDECAR).read_text(encoding="ascii").split()[0]
    except (OSError, ValueError, IndexError) as exc:
        raise BundleError(f"{bundle}: not a readable vocoder bundle ({type(exc).__name__})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or side != manifest_digest(m):
        raise BundleError(f"{bundle}: not an intact edgeflow bundle (format or {SIDECAR} mismatch)")
    if m.get("task", "vocoder") != "vocoder":
        raise BundleError(f"{bundle}: a {m.get('task')!r} bundle, not a vocoder bundle")
    files, io = (m.get(k) if isinstance(m.get(k), dict) else {} for k in ("files", "io"))
    if not (bundle / MODEL_FILE).is_file() or sha256_file(bundle / MODEL_FILE) != files.get(MODEL_FILE):
        raise BundleError(f"{bundle}: {MODEL_FILE} is missing or does not match its sha256")
    names = [i.get("name") if isinstance(i, dict) else None for i in io.get("inputs") or []]
    if names != ["mel"]:
        raise ConfigError(f"{bundle}: the vocoder graph takes {names}; an fmtts bundle needs a mel-only vocoder "
                          "(HiFi-GAN)")
    bad = _mel_mismatch(m["mel"] if isinstance(m.get("mel"), dict) else {}, mel)
    if bad:
        raise ConfigError(f"{bundle}: the vocoder's mel front-end differs from the acoustic model's in "
                          f"{', '.join(bad)}")
    return m


def _add_vocoder(vocoder: Any, mel: Dict[str, Any], dest: Path) -> Dict[str, Any]:
    """Copy the vocoder bundle's graph to ``dest`` (a model or model.pt is exported first); its provenance."""
    from edgeflow.export.onnx_export import export_bundle
    from edgeflow.models.checkpoint import load_model

    with tempfile.TemporaryDirectory(prefix="edgeflow-vocoder-") as tmp:
        if isinstance(vocoder, (str, Path)) and Path(vocoder).is_dir():
            src = Path(vocoder)
        else:
            if isinstance(vocoder, (str, Path)):
                if not Path(vocoder).is_file():
                    raise BundleError(f"vocoder not found: {vocoder} (a vocoder bundle directory or model.pt)")
                vocoder = load_model(vocoder)[0]
            bad = _mel_mismatch(vocoder.config.mel.to_dict(), mel)
            if bad:
                raise ConfigError(f"the vocoder's mel front-end differs from the acoustic model's in {', '.join(bad)}")
            src = Path(tmp) / "vocoder"
            export_bundle(vocoder, src)
        m = read_vocoder_bundle(src, mel)
        shutil.copyfile(src / MODEL_FILE, dest)
    return {"family": m.get("family"), "precision": m.get("precision"), "sha256": m["files"][MODEL_FILE],
            "source_manifest_sha256": manifest_digest(m), "streaming": m.get("streaming"),
            "validation_passed": (m.get("validation") or {}).get("passed"), "history": m.get("history", [])}


def _manifest(model: FmTts, prosody: str, voc: Dict[str, Any], validation, history, info,
              unrolled: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    c = model.config
    t = lambda name, shape, dtype="float32": {"name": name, "shape": shape, "dtype": dtype}  # noqa: E731
    ctx = (voc.get("streaming") or {}).get("context_frames") or {"left": 0, "right": 0}
    return {
        "family": "fmtts", "task": "tts", "config": c.to_dict(), "sample_rate": c.mel.sample_rate,
        "mel": c.mel.to_dict(), "precision": "float32", "opset": OPSET,
        "graphs": dict({"encoder": MODEL_FILE, "decoder": FIELD_FILE, "vocoder": VOCODER_FILE},
                       **({"unrolled": unrolled["file"]} if unrolled else {})),
        "io": {"encoder": {"inputs": [t("input", [1, "N"], "int64"), t("input_lengths", [1], "int64"),
                                      t("scales", [3]), t("noise_p", [1, N_FEATURES, "N"])],
                           "outputs": [t("mu_x", [1, c.n_mels, "N"]), t("f0", [1, 1, "N"]),
                                       t("durations", [1, "N"], "int64")]},
               "decoder": {"inputs": [t("x", ["B", c.n_mels, "F"]), t("cond", ["B", c.n_mels + 1, "F"]),
                                      t("mask", ["B", 1, "F"]), t("t", ["B"])],
                           "outputs": [t("v", ["B", c.n_mels, "F"])]},
               "vocoder": {"inputs": [t("mel", ["B", c.n_mels, "T"])],
                           "outputs": [t("audio", ["B", f"T*{c.mel.hop_length}"])]},
               "scales": ["noise_scale (ODE temperature)", "length_scale", "noise_w (prosody tau)"],
               "frame_multiple": c.frame_multiple},
        "hop_length": c.mel.hop_length, "inter_channels": c.n_mels, "num_symbols": c.num_symbols,
        "phoneme_id_map": c.phoneme_id_map, "phoneme_type": "espeak", "espeak": {"voice": c.espeak_voice},
        "inference": {"noise_scale": c.temperature, "length_scale": c.length_scale, "noise_w": c.tau},
        "sampling": {"nfe": c.nfe, "solver": c.solver, "sway": c.sway, "guidance": c.guidance,
                     "guidance_trained": c.cfg_dropout > 0, "prosody": prosody, "unrolled": unrolled},
        "stats": {"mel_mean": float(model.mel_mean), "mel_std": float(model.mel_std)},
        "noise": {"prior": "edgeflow.core.noise.noise(seed, 0, F, n_mels) reshaped [1, F, n_mels] -> [1, n_mels, F]",
                  "prosody": "edgeflow.core.noise.noise(seed + prosody_seed_offset, 0, N, 2) -> [1, 2, N]",
                  "prosody_seed_offset": PROSODY_SEED_OFFSET},
        "streaming": {"context_frames": dict(ctx), "unit": "vocoder chunks; the ODE runs over whole sentences"},
        "vocoder": voc, "history": list(history or []), "validation": validation,
        "export": dict(info, exporter="torch.onnx TorchScript (dynamo=False)", torch=torch.__version__),
    }


def _load(model: Any) -> tuple:
    if isinstance(model, FmTts):
        return model, []
    from edgeflow.models.checkpoint import load_model

    loaded, info = load_model(model, family="fmtts")
    return loaded, info.get("history") or []


def _write_graphs(frozen: FmTts, prosody: str, tmp: Path, unroll: bool) -> Optional[Dict[str, Any]]:
    """Export the text and field graphs (and the unrolled ODE) of a weight-norm-free copy into ``tmp``."""
    cfg, n, frames = frozen.config, 11, 8 * frozen.config.frame_multiple
    text_args = (torch.from_numpy(example_ids(cfg, n, 0)), torch.tensor([n]),
                 torch.tensor([cfg.temperature, cfg.length_scale, cfg.tau], dtype=torch.float32),
                 seeded_normal(PROSODY_SEED_OFFSET, 1, N_FEATURES, n))
    x, cond = torch.randn(2, cfg.n_mels, frames), torch.randn(2, cfg.n_mels + 1, frames)
    axes = {k: {0: "B", 2: "F"} for k in ("x", "cond", "mask", "v")}
    with torch.no_grad():
        _export(TextGraph(frozen, prosody), text_args, tmp / MODEL_FILE, TEXT_IN, TEXT_OUT,
                {"input": {1: "N"}, "noise_p": {2: "N"}, "mu_x": {2: "N"}, "f0": {2: "N"}, "durations": {1: "N"}})
        _export(FieldGraph(frozen), (x, cond, torch.ones(2, 1, frames), torch.tensor([0.25, 0.75])),
                tmp / FIELD_FILE, FIELD_IN, FIELD_OUT, dict(axes, t={0: "B"}))
        if not unroll:
            return None
        info = {"nfe": cfg.nfe, "solver": cfg.solver, "file": f"ode_{cfg.solver}{cfg.nfe}.onnx"}
        steps = torch.from_numpy(ode_steps(cfg.nfe, cfg.solver, cfg.sway))
        _export(UnrolledGraph(frozen, len(steps), cfg.solver), (x[:1], cond[:1], torch.ones(1, 1, frames), steps),
                tmp / info["file"], ("x0", "cond", "mask", "steps"), ("y",),
                {k: {2: "F"} for k in ("x0", "cond", "mask", "y")})
    return info


def export_field(model: FmTts, path: str | Path, seed: int = 0) -> Dict[str, Any]:
    """Only the field graph of ``model`` (one evaluation of its vector field; weight norm removed on a copy) at
    ``path`` (written atomically), checked against PyTorch as :func:`export_fmtts_bundle` checks it: for passes
    that change the field only (``fm_prune``).

    Returns:
        {"tolerance", "rel_err", "cases"}.

    Raises:
        ExportValidationError: onnxruntime disagrees with PyTorch beyond :data:`TOLERANCE`.
    """
    import onnxruntime as ort

    reference = copy.deepcopy(model).cpu().float().eval()
    frozen = copy.deepcopy(reference)
    remove_weight_norm(frozen)
    frozen.requires_grad_(False)
    cfg, frames, path = frozen.config, 8 * frozen.config.frame_multiple, Path(path)
    x, cond = torch.randn(2, cfg.n_mels, frames), torch.randn(2, cfg.n_mels + 1, frames)
    axes = {k: {0: "B", 2: "F"} for k in ("x", "cond", "mask", "v")}
    with tempfile.TemporaryDirectory(prefix="edgeflow-field-", dir=path.parent) as tmp:
        part = Path(tmp) / path.name
        with torch.no_grad():
            _export(FieldGraph(frozen), (x, cond, torch.ones(2, 1, frames), torch.tensor([0.25, 0.75])), part,
                    FIELD_IN, FIELD_OUT, dict(axes, t={0: "B"}))
        sess = ort.InferenceSession(str(part), session_options(threads=1), providers=["CPUExecutionProvider"])
        cases = field_parity(sess, reference, seed)
        worst = max(c["rel_err"] for c in cases)
        if worst > TOLERANCE:
            raise ExportValidationError(f"field export failed validation: relative error {worst:.3g} above "
                                        f"{TOLERANCE}")
        part.replace(path)
    return {"tolerance": TOLERANCE, "rel_err": worst, "cases": cases}


def export_fmtts_bundle(model: Any, vocoder: Any, out_dir: str | Path, history: Optional[List[Dict[str, Any]]] = None,
                        overwrite: bool = False, prosody: Optional[str] = None, unroll: bool = False) -> Dict[str, Any]:
    """Export an fmtts acoustic model and a mel-only vocoder as one validated voice bundle.

    Args:
        model: an :class:`FmTts` (left untouched) or the path of its model.pt.
        vocoder: a vocoder bundle directory (``edgeflow optimize X.pt --recipe quality``'s ``bundle``), a
            HiFi-GAN model.pt, or a HiFi-GAN model (exported first); its mel front-end must be the model's.
        out_dir: the bundle directory to create (appears only when complete and validated).
        history: passes applied so far (default: model.pt's).
        prosody: "flow" or "l2" (default: the config's).
        unroll: also write the ODE unrolled for the config's NFE and solver (see the module docstring).

    Raises:
        BundleError: ``out_dir`` exists (without overwrite); a bad vocoder bundle. ConfigError: no phoneme map,
            a vocoder of another mel front-end. ExportValidationError: onnxruntime disagrees with PyTorch.
    """
    import onnxruntime as ort

    t0, out_dir = time.perf_counter(), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists (pass overwrite / --overwrite to replace it)")
    model, saved = _load(model)
    reference = copy.deepcopy(model).cpu().float().eval()
    cfg = reference.config
    prosody = cfg.prosody if prosody is None else prosody
    if prosody not in ("flow", "l2"):
        raise ConfigError(f"prosody must be 'flow' or 'l2', got {prosody!r}")
    if not cfg.phoneme_id_map:
        raise ConfigError("the fmtts model has no phoneme_id_map: a voice bundle needs one to read text")
    frozen = copy.deepcopy(reference)
    remove_weight_norm(frozen)
    frozen.requires_grad_(False)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        voc = _add_vocoder(vocoder, cfg.mel.to_dict(), tmp / VOCODER_FILE)
        unrolled = _write_graphs(frozen, prosody, tmp, unroll)
        so = session_options(threads=1)
        text, field = (ort.InferenceSession(str(tmp / f), so, providers=["CPUExecutionProvider"])
                       for f in (MODEL_FILE, FIELD_FILE))
        validation = validate_parity(text, field, reference, prosody, (cfg.temperature, cfg.length_scale, cfg.tau))
        if unrolled:
            unrolled["validation"] = validate_unrolled(
                ort.InferenceSession(str(tmp / unrolled["file"]), so, providers=["CPUExecutionProvider"]),
                reference, cfg.nfe, cfg.solver)
        worst = max([validation["rel_err"]] + ([unrolled["validation"]["rel_err"]] if unrolled else []))
        if worst > TOLERANCE:
            raise ExportValidationError(f"fmtts export failed validation: relative error {worst:.3g} above "
                                        f"{TOLERANCE} or durations differ")
        info = {"bytes": {p.name: p.stat().st_size for p in sorted(tmp.glob("*.onnx"))},
                "seconds": round(time.perf_counter() - t0, 2), "onnxruntime": ort.__version__}
        manifest = write_manifest(tmp, _manifest(reference, prosody, voc, validation,
                                                 history if history is not None else saved, info, unrolled))
    return manifest

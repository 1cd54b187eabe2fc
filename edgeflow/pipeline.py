"""``optimize()``: model -> passes (each gated by the quality budget) -> bundle -> validation -> report.

The one place that joins the layers. A run directory ``OUT/`` gets ``bundle/``, ``report.json``,
``report.html`` and ``samples/``; its ``.work/`` folder holds the state that lets an interrupted run
resume without redoing finished passes (``clean_work`` removes it once the run is done).

Every input a pass will need (calibration set, training data) and every budget metric is checked
before the first pass. Each finished pass is stored under a key that covers the model, the run
settings and the passes up to it with their inputs, so changing a later pass's input (``--calib``)
keeps the earlier passes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgeflow.core.errors import ConfigError
from edgeflow.core.io import sha256_file
from edgeflow.pipeline_run import (ENABLE_TRAINING, STATE, _check_out_dir, _digest, _load_state,  # noqa: F401
                                   local_threads, pass_keys, run_passes)

STATE_VERSION = 2


def _default_data(model_path: Path) -> Optional[Path]:
    for cand in (model_path.parent / "eval", model_path.parent / "clips"):
        if cand.is_dir():
            return cand
    return None


def check_budget_metrics(budget: Dict[str, float], clips) -> None:
    """Refuse a budget metric that cannot be scored on these clips here (missing package, no transcripts)."""
    from edgeflow.validate.table import why_unscorable

    for metric in budget:
        why = why_unscorable(metric, [c.text for c in clips])
        if why:
            raise ConfigError(f"budget metric {metric} cannot be checked: {why}; drop it from --max-drop")


def check_family(cfgs, model, recipe: Optional[str], target: str) -> None:
    """Refuse, before anything runs, a recipe with a pass that cannot apply to the model's family (e.g. a flow
    cut on a GAN vocoder), in one line naming the pass and the family."""
    from edgeflow.models.family import get_family

    fam = get_family(model)
    for cfg in cfgs:
        why = cfg.refusal(fam)
        if why:
            raise ConfigError(f"recipe {recipe} of target {target}: pass {type(cfg).pass_name} does not apply to a "
                              f"{fam.name} model ({why}); use a recipe written for the {fam.name} family")


def resolve_inputs(cfgs, model, info: Dict[str, Any], data: Path, calib: Optional[str | Path],
                   allow_skip: bool, model_path: Optional[Path] = None) -> Dict[str, Any]:
    """Check every input the passes will read, before the first pass runs (``model_path``: where the
    default calibration set is looked for, beside the model, see :func:`default_calibration`).

    Returns:
        ``{"calib": Path or None, "data": data, "inputs": [per pass {kind: fingerprint}],
        "skips": {pass index: reason}}``.

    Raises:
        ConfigError: a bad ``--calib``, a missing named data folder, no calibration set for a quantize
            pass, or passes without training data (unless ``allow_skip``).
    """
    from edgeflow.compress.data import NoTrainingData, resolve_source
    from edgeflow.passes.quantize import default_calibration
    from edgeflow.quant.calibration import load_calibration_set

    needs = [cfg.inputs() if hasattr(cfg, "inputs") else {} for cfg in cfgs]
    mel = model.config.mel
    calib_dir = Path(calib) if calib else None
    if calib_dir is not None:
        load_calibration_set(calib_dir, mel)                   # a bad --calib fails now, not after training
    elif any(needs):
        name = ((info.get("meta") or {}).get("recipe") or {}).get("name")
        try:
            calib_dir = default_calibration(model.family, mel.to_dict(), name, model_path)
        except ConfigError:
            if any("calibration" in n and not n["calibration"] for n in needs):
                raise
    calib_fp = sha256_file(calib_dir / "manifest.json") if calib_dir else None
    train_data = (info.get("meta") or {}).get("data")
    inputs: List[Dict[str, Any]] = []
    skips: Dict[int, str] = {}
    for k, (cfg, need) in enumerate(zip(cfgs, needs)):
        got: Dict[str, Any] = {}
        if "calibration" in need:
            path = Path(need["calibration"]) if need["calibration"] else calib_dir
            if need["calibration"]:
                load_calibration_set(path, mel)
            got["calibration"] = [str(path), calib_fp if path == calib_dir else sha256_file(path / "manifest.json")]
        if "training_data" in need:
            try:
                kind, path = resolve_source(need["training_data"], data, train_data, calib_dir)
                got["training_data"] = [kind, str(path)]
            except NoTrainingData as exc:
                skips[k] = str(exc)
        inputs.append(got)
    if skips and not allow_skip:
        names = ", ".join(type(cfgs[k]).pass_name for k in skips)
        raise ConfigError(f"pass(es) {names} need training data and none was found: pass {ENABLE_TRAINING}, "
                          f"or --allow-skip to run the recipe without them")
    return {"calib": calib_dir, "data": data, "inputs": inputs, "skips": skips}


def optimize(model_path: str | Path, out_dir: str | Path, target: str = "cpu", recipe: Optional[str] = None,
             budget: Any = None, data: Optional[str | Path] = None, calib: Optional[str | Path] = None,
             n_eval: Optional[int] = None, seed: int = 0, threads: Optional[int] = None, progress: bool = True,
             allow_skip: bool = False, clean_work: bool = False, vocoder: Optional[str | Path] = None,
             log=print) -> Dict[str, Any]:
    """Run the target's recipe on a model and write the bundle and the report.

    A voice (a Piper ``VOICE.onnx`` or a text-to-speech model.pt) goes to
    :func:`edgeflow.pipeline_tts.optimize_tts` (its own sentences, budget and recipes); everything else is a
    vocoder, handled here. A flow-matching (fmtts) model.pt goes with its ``vocoder`` to
    :func:`edgeflow.pipeline_fmtts.optimize_fmtts` (the target's ``recipes_fmtts``).

    Args:
        model_path: the model.pt to optimize (loaded with weights_only=True), or a voice.
        out_dir: run directory (new, empty, or an earlier run of the same settings to resume).
        target: a target profile name (``edgeflow/targets/*.json``).
        recipe: ``quality`` | ``balanced`` | ``fast`` (default: the target's).
        budget: allowed quality drops, e.g. ``"pesq=0.1,mel_l1=0.25"`` (default: the target's); every
            metric named is scored after every pass.
        data: held-out clips (a corpus folder, whose test split is used, or a folder of wavs);
            default: the ``eval/`` folder beside the model.
        calib: calibration set folder (quantization; also distillation data when there is no corpus);
            default: the model's own set under ``calibration/`` when there is one.
        n_eval: clips used for gating and the report (default 4; a voice's default is its own).
        allow_skip: run passes that lack training data as ``skipped`` instead of refusing to start.
        clean_work: remove ``OUT/.work`` once the report is written (the run can no longer resume).
        vocoder: an fmtts model's mel-only vocoder (bundle directory or HiFi-GAN model.pt); required for an
            fmtts model, refused for any other.

    Returns:
        the report dict (also written to ``OUT/report.json``).
    """
    model_path, out = Path(model_path), Path(out_dir)
    from edgeflow.pipeline_fmtts import fmtts_route, optimize_fmtts
    from edgeflow.validate.tts_systems import checkpoint_family, family_task, task_of

    family = checkpoint_family(model_path)          # one read of a model.pt (None: a voice .onnx, or unreadable)
    if fmtts_route(family, vocoder, data=data, calib=calib, allow_skip=allow_skip, budget=budget):
        return optimize_fmtts(model_path, out, vocoder, target=target, recipe=recipe, n_eval=n_eval, seed=seed,
                              threads=threads, clean_work=clean_work, log=log)
    if (family_task(family) if family else task_of(model_path)) == "tts":
        if data or calib or allow_skip:
            raise ConfigError("--data, --calib and --allow-skip do not apply to a voice (its calibration and "
                              "evaluation sentences are edgeflow.data.tts_text)")
        from edgeflow.pipeline_tts import optimize_tts

        return optimize_tts(model_path, out, target=target, recipe=recipe, budget=budget, n_eval=n_eval, seed=seed,
                            threads=threads, clean_work=clean_work, log=log)
    return _optimize_vocoder(model_path, out, target, recipe, budget, data, calib, 4 if n_eval is None else n_eval,
                             seed, threads, progress, allow_skip, clean_work, log)


def _optimize_vocoder(model_path: Path, out: Path, target: str, recipe: Optional[str], budget: Any,
                      data: Optional[str | Path], calib: Optional[str | Path], n_eval: int, seed: int,
                      threads: Optional[int], progress: bool, allow_skip: bool, clean_work: bool, log
                      ) -> Dict[str, Any]:
    """:func:`optimize` for a vocoder model.pt (same arguments): every input checked before anything is
    written, then the passes (resumable run state under ``OUT/.work``), then the bundle and the report."""
    from edgeflow.passes.base import make_config
    from edgeflow.targets import for_family, load_target, recipe_budget, recipe_passes
    from edgeflow.validate.budget import parse_budget
    from edgeflow.validate.evaluate import load_clips

    # -- check every input before anything is written ------------------------------------------------------
    tgt = load_target(target)
    from edgeflow.models.checkpoint import load_model

    model, info = load_model(model_path)
    tgt = for_family(tgt, model.family)                 # a family's own recipes (families.<name>), if it has them
    cfgs = []
    for spec in recipe_passes(tgt, recipe):
        name = spec.pop("pass")
        cfgs.append(make_config(name, spec))
    check_family(cfgs, model, recipe or tgt.get("default_recipe"), tgt["name"])
    budget_d = parse_budget(budget if budget is not None else recipe_budget(tgt, recipe))
    _check_out_dir(out)
    data = Path(data) if data else _default_data(model_path)
    if data is None:
        raise ConfigError("no evaluation clips: pass --data (a corpus folder or a folder of wavs)")
    clips = load_clips(data, model.config.mel, n=n_eval, multiple=model.length_multiple)
    check_budget_metrics(budget_d, clips)
    plan = resolve_inputs(cfgs, model, info, data, calib, allow_skip, model_path)
    base = _digest({"model": sha256_file(model_path), "target": tgt["name"], "budget": budget_d, "data": str(data),
                    "n_eval": n_eval, "seed": seed, "version": STATE_VERSION})
    keys = pass_keys(base, cfgs, plan["inputs"])
    # -- run state -------------------------------------------------------------------------------------------
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    state = _load_state(work / STATE, base, keys, out, log)
    artifact, ref_out, current = run_passes(model, info, cfgs, keys, plan, clips, budget_d, tgt, state, work,
                                            seed=seed, threads=local_threads(threads, tgt), progress=progress,
                                            log=log)
    from edgeflow.validate.report import write_outputs

    report = write_outputs(out, artifact, clips, ref_out, state["reference"], current, budget_d, tgt, state,
                           model_path, seed=seed, threads=local_threads(threads, tgt), log=log)
    if clean_work:
        shutil.rmtree(work, ignore_errors=True)
        log(f"removed {work} (--clean-work)")
    return report

"""``optimize()``: model -> passes (each gated by the quality budget) -> bundle -> validation -> report.

The one place that joins the layers. A run directory ``OUT/`` gets ``bundle/``, ``report.json``,
``report.html`` and ``samples/``; its ``.work/`` folder holds the state that lets an interrupted run
resume without redoing finished passes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

from edgeflow.core.errors import ConfigError
from edgeflow.core.io import atomic_write_json, sha256_file

STATE = "state.json"


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ".work" / STATE).is_file())):
        raise ConfigError(f"output directory {out} holds something else (not an edgeflow optimize run); "
                          f"choose an empty or new directory")


def _default_data(model_path: Path) -> Optional[Path]:
    for cand in (model_path.parent / "eval", model_path.parent / "clips"):
        if cand.is_dir():
            return cand
    return None


def optimize(model_path: str | Path, out_dir: str | Path, target: str = "cpu", recipe: Optional[str] = None,
             budget: Any = None, data: Optional[str | Path] = None, calib: Optional[str | Path] = None,
             n_eval: int = 4, seed: int = 0, threads: Optional[int] = None, progress: bool = True,
             log=print) -> Dict[str, Any]:
    """Run the target's recipe on a model.pt and write the bundle and the report.

    Args:
        model_path: the model.pt to optimize (loaded with weights_only=True).
        out_dir: run directory (new, empty, or an earlier run of the same settings to resume).
        target: a target profile name (``edgeflow/targets/*.json``).
        recipe: ``quality`` | ``balanced`` | ``fast`` (default: the target's).
        budget: allowed quality drops, e.g. ``"pesq=0.1,mel_l1=0.25"`` (default: the target's).
        data: held-out clips (a corpus folder, whose test split is used, or a folder of wavs);
            default: the ``eval/`` folder beside the model.
        calib: calibration set folder for quantization passes.
        n_eval: clips used for gating and the report.

    Returns:
        the report dict (also written to ``OUT/report.json``).
    """
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.targets import load_target, recipe_passes
    from edgeflow.validate.budget import budget_violations, parse_budget
    from edgeflow.validate.evaluate import load_clips

    model_path, out = Path(model_path), Path(out_dir)
    # -- check every input before anything is written ------------------------------------------------------
    tgt = load_target(target)
    specs = recipe_passes(tgt, recipe)
    cfgs = []
    for spec in specs:
        name = spec.pop("pass")
        cfgs.append(make_config(name, spec))
    budget_d = parse_budget(budget if budget is not None else tgt.get("default_budget"))
    _check_out_dir(out)
    from edgeflow.models.checkpoint import load_model

    model, info = load_model(model_path)
    data = Path(data) if data else _default_data(model_path)
    if data is None:
        raise ConfigError("no evaluation clips: pass --data (a corpus folder or a folder of wavs)")
    mel_cfg = model.config.mel
    clips = load_clips(data, mel_cfg, n=n_eval, multiple=model.length_multiple)
    # -- run state -------------------------------------------------------------------------------------------
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(json.dumps({
        "model": sha256_file(model_path), "target": target, "recipe": recipe, "budget": budget_d,
        "passes": [(type(c).pass_name, c.to_dict()) for c in cfgs], "data": str(data), "n_eval": n_eval,
        "seed": seed, "calib": str(calib)}, sort_keys=True).encode()).hexdigest()
    state_path = work / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state and state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{out} holds a run with other settings; use a new output directory")
    if state is None:
        state = {"fingerprint": fingerprint, "done": [], "started": time.time()}
        atomic_write_json(state_path, state)

    reference = copy.deepcopy(model).eval()
    artifact = Artifact(model=model, reference=reference, history=list(info.get("history", [])),
                        info={"train_data": (info.get("meta") or {}).get("data")})   # distillation's default data
    from edgeflow.validate.evaluate import bundle_synthesizer, score, synthesize_all, torch_synthesizer

    def outputs_of(art):
        fn = (bundle_synthesizer(art.bundle_dir, seed=seed, threads=local_threads(threads, tgt)) if art.bundle_dir
              else torch_synthesizer(art.model, seed=seed))
        return synthesize_all(fn, clips)

    if "reference" not in state:
        log("evaluating the unoptimized model on %d clips ..." % len(clips))
        ref_out = outputs_of(artifact)
        state["reference"] = score(ref_out, clips, mel_cfg)
        import numpy as np
        np.savez(work / "reference_outputs.npz", *ref_out)
        atomic_write_json(state_path, state)
    import numpy as np
    with np.load(work / "reference_outputs.npz") as z:
        ref_out = [z[f"arr_{i}"] for i in range(len(clips))]
    ref_metrics = state["reference"]

    def evaluate(art):
        return score(outputs_of(art), clips, mel_cfg, reference=ref_out)

    ctx = PassContext(work_dir=work, target=tgt, eval_mels=[c.mel for c in clips],
                      eval_audio=[c.audio for c in clips], data_dir=data, calib_dir=Path(calib) if calib else None,
                      progress=progress, seed=seed, evaluate=evaluate)
    current = dict(ref_metrics)
    for k, cfg in enumerate(cfgs):
        name = type(cfg).pass_name
        if k < len(state["done"]):
            rec = state["done"][k]
            artifact.history.append(rec["record"])
            _restore(artifact, rec, work)
            current = rec.get("metrics", current)
            log(f"[{k + 1}/{len(cfgs)}] {name}: done in an earlier run ({rec['record']['status']}), skipped")
            continue
        log(f"[{k + 1}/{len(cfgs)}] {name} ...")
        snap = artifact.snapshot()
        record = apply_pass(artifact, cfg, ctx, metrics_before=current)
        after = record["details"].get("quality") or (evaluate(artifact) if name != "freeze" else current)
        record["metrics_after"] = after
        bad = budget_violations(ref_metrics, after, budget_d)
        if bad:
            record["status"] = "rolled_back"
            record["violations"] = bad
            rolled = artifact.history.pop()
            artifact.model, artifact.bundle_dir, artifact.info = snap.model, snap.bundle_dir, snap.info
            artifact.history.append(rolled)
            why = ", ".join(f"{m} drop {v['drop']:.3f} > {v['allowed']}" for m, v in bad.items())
            log(f"    rolled back: budget broken ({why})")
        else:
            current = after
            log(f"    ok ({record['seconds']:.1f} s) " + ", ".join(f"{m}={v:.3f}" for m, v in sorted(after.items())))
        state["done"].append(_save(artifact, record, current, work, k))
        atomic_write_json(state_path, state)
    if artifact.bundle_dir is None:
        raise ConfigError("the recipe produced no bundle (no export pass applied)")
    from edgeflow.validate.report import write_outputs

    return write_outputs(out, artifact, clips, ref_out, ref_metrics, current, budget_d, tgt, state, model_path,
                         seed=seed, threads=local_threads(threads, tgt), log=log)


def local_threads(threads: Optional[int], target: Dict[str, Any]) -> int:
    """Threads for measuring here: the user's, else the target's, never more than this machine's cores."""
    import os

    return max(1, min(int(threads or target.get("threads") or 1), os.cpu_count() or 1))


def _save(artifact, record, metrics, work: Path, k: int) -> Dict[str, Any]:
    from edgeflow.models.checkpoint import save_model

    entry = {"record": record, "metrics": metrics, "bundle": artifact.bundle_dir.name if artifact.bundle_dir else None,
             "info": artifact.info}
    if artifact.model is not None:
        path = work / f"model-{k:02d}.pt"
        save_model(path, artifact.model, history=artifact.history)
        entry["model"] = path.name
    return entry


def _restore(artifact, rec, work: Path) -> None:
    from edgeflow.models.checkpoint import load_model

    if rec.get("model"):
        artifact.model, _ = load_model(work / rec["model"])
        if any(h["name"] == "freeze" and h["status"] == "applied" for h in artifact.history):
            from edgeflow.export.freeze import freeze_model
            freeze_model(artifact.model)
    artifact.bundle_dir = work / rec["bundle"] if rec.get("bundle") else None
    artifact.info = dict(rec.get("info", {}))

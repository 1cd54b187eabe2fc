"""The pass loop of :func:`edgeflow.pipeline.optimize`: reference scores, each pass, its quality gate and rollback.

After every pass the gate scores exactly the budget's metrics (plus ``mel_l1``, cheap and shown in
the log) against the ground truth and compares them with the unoptimized model's; a pass that breaks
the budget is rolled back. A pass that skipped itself (no training data) is recorded ``skipped``
with its reason and the option that would enable it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.core.io import atomic_write_json

STATE = "state.json"
#: how to give a pass that skipped itself the training data it lacked
ENABLE_TRAINING = "--data CORPUS (its train split) or --calib CALIBRATION_SET"


def gate_metrics(budget: Dict[str, float]) -> List[str]:
    """What the gate scores: the budget's metrics, and mel_l1 for the log."""
    return list(budget) + ([] if "mel_l1" in budget else ["mel_l1"])


def run_passes(model, info, cfgs, keys, plan, clips, budget, target, state, work: Path, seed: int, threads: int,
               progress: bool, log):
    """Apply the passes (reusing finished ones from ``state``). Returns (artifact, reference outputs, metrics)."""
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.validate.evaluate import bundle_synthesizer, score, synthesize_all, torch_synthesizer

    mel_cfg = model.config.mel
    metrics = gate_metrics(budget)
    artifact = Artifact(model=model, reference=copy.deepcopy(model).eval(), history=list(info.get("history", [])),
                        info={"train_data": (info.get("meta") or {}).get("data")})   # distillation's default data

    def outputs_of(art, label="synthesizing"):
        fn = (bundle_synthesizer(art.bundle_dir, seed=seed, threads=threads) if art.bundle_dir
              else torch_synthesizer(art.model, seed=seed))
        return synthesize_all(fn, clips, log=log, label=label)

    ref_out = _reference(artifact, outputs_of, clips, mel_cfg, metrics, budget, state, work, log)

    def evaluate(art):
        return score(outputs_of(art), clips, mel_cfg, reference=ref_out, metrics=metrics, log=log)

    ctx = PassContext(work_dir=work, target=target, eval_mels=[c.mel for c in clips],
                      eval_audio=[c.audio for c in clips], data_dir=plan.get("data"), calib_dir=plan["calib"],
                      progress=progress, seed=seed, evaluate=evaluate)
    current = dict(state["reference"])
    for k, cfg in enumerate(cfgs):
        head = f"[{k + 1}/{len(cfgs)}] {type(cfg).pass_name}"
        if k < len(state["done"]):
            rec = state["done"][k]
            artifact.history.append(rec["record"])
            _restore(artifact, rec, work)
            current = rec.get("metrics", current)
            log(f"{head}: done in an earlier run ({rec['record']['status']}), reused")
            continue
        log(f"{head} ...")
        snap = artifact.snapshot()
        record = apply_pass(artifact, cfg, ctx, metrics_before=current)
        current = _gate(artifact, snap, record, cfg, evaluate, state["reference"], current, budget, log)
        entry = _save(artifact, record, current, work, k)
        entry["key"] = keys[k]
        state["done"].append(entry)
        atomic_write_json(work / STATE, state)
    if artifact.bundle_dir is None:
        raise ConfigError("the recipe produced no bundle (no export pass applied)")
    return artifact, ref_out, current


def _reference(artifact, outputs_of, clips, mel_cfg, metrics, budget, state, work: Path, log) -> List[np.ndarray]:
    """The unoptimized model's outputs (synthesized and scored once, then read back from ``work``)."""
    from edgeflow.validate.evaluate import score

    if "reference" not in state:
        log("evaluating the unoptimized model on %d clips ..." % len(clips))
        ref_out = outputs_of(artifact, "synthesizing (unoptimized)")
        state["reference"] = score(ref_out, clips, mel_cfg, metrics=metrics, log=log, label="scoring (unoptimized)")
        np.savez(work / "reference_outputs.npz", *ref_out)
        missing = [m for m in budget if m not in state["reference"]]
        if missing:
            raise ConfigError(f"budget metric(s) {', '.join(missing)}: no finite value on the unoptimized model's "
                              f"output for these clips; drop them from --max-drop")
        atomic_write_json(work / STATE, state)
    with np.load(work / "reference_outputs.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(clips))]


def _gate(artifact, snap, record, cfg, evaluate, ref_metrics, current, budget, log) -> Dict[str, float]:
    """Mark a self-skipped pass, or score the pass and roll it back if it broke the budget. Returns the metrics
    the run now stands at."""
    from edgeflow.validate.budget import budget_violations, describe_violation

    skipped = record["details"].get("skipped")
    if skipped:
        record.update(status="skipped", reason=str(skipped), enable_with=ENABLE_TRAINING, metrics_after=current)
        log(f"    SKIPPED: {skipped} (enable with {ENABLE_TRAINING})")
        return current
    after = record["details"].get("quality") or (evaluate(artifact) if cfg.changes_output else current)
    record["metrics_after"] = after
    bad = budget_violations(ref_metrics, after, budget)
    if bad:
        record["status"] = "rolled_back"
        record["violations"] = bad
        rolled = artifact.history.pop()
        artifact.model, artifact.bundle_dir, artifact.info = snap.model, snap.bundle_dir, snap.info
        artifact.history.append(rolled)
        log(f"    rolled back: budget broken ({', '.join(describe_violation(m, v) for m, v in bad.items())})")
        return current
    log(f"    ok ({record['seconds']:.1f} s) " + ", ".join(f"{m}={v:.3f}" for m, v in sorted(after.items())))
    return after


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
        if rec.get("info", {}).get("frozen"):         # set by a pass that froze the model (export-ready)
            from edgeflow.export.freeze import freeze_model
            freeze_model(artifact.model)
    artifact.bundle_dir = work / rec["bundle"] if rec.get("bundle") else None
    artifact.info = dict(rec.get("info", {}))


# -- run state shared by the vocoder and text-to-speech pipelines ------------------------------------------

def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ".work" / STATE).is_file())):
        if (out / "report.json").is_file() and not (out / ".work").exists():
            raise ConfigError(f"output directory {out} holds a finished run whose work state was removed "
                              f"(--clean-work); choose a new directory")
        raise ConfigError(f"output directory {out} holds something else (not an edgeflow optimize run); "
                          f"choose an empty or new directory")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def pass_keys(base: str, cfgs, inputs) -> List[str]:
    """Key of each pass: the run settings, and every pass up to it with its config and inputs."""
    keys, chain = [], []
    for cfg, got in zip(cfgs, inputs):
        chain.append([type(cfg).pass_name, cfg.to_dict(), got])
        keys.append(_digest([base, chain]))
    return keys


def _load_state(path: Path, base: str, keys: List[str], out: Path, log) -> Dict[str, Any]:
    """The run state, keeping the finished passes whose keys still match (the rest is redone)."""
    state = json.loads(path.read_text()) if path.is_file() else None
    if state is not None and state.get("base") != base:
        raise ConfigError(f"{out} holds a run with other settings (model, target, budget, data, n_eval or seed); "
                          f"use a new output directory")
    if state is None:
        state = {"base": base, "done": [], "started": time.time()}
    done = state["done"]
    keep = 0
    while keep < min(len(done), len(keys)) and done[keep].get("key") == keys[keep]:
        keep += 1
    if keep < len(done):
        log(f"settings of pass {keep + 1} on changed: passes 1-{keep} reused, the rest redone")
        del done[keep:]
    atomic_write_json(path, state)
    return state


def local_threads(threads: Optional[int], target: Dict[str, Any]) -> int:
    """Threads for measuring here: the user's, else the target's, never more than this machine's cores."""
    import os

    return max(1, min(int(threads or target.get("threads") or 1), os.cpu_count() or 1))

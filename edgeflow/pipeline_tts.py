"""``optimize_tts()``: a text-to-speech voice -> passes (each gated on a TTS budget) -> bundle -> report.

The voice is a stock Piper ``VOICE.onnx`` (+ ``VOICE.onnx.json``; imported first, recorded in the history
with its source and sha256) or an edgeflow VITS model.pt. The passes are the target's ``recipes_tts``
(``tts_export``, ``tts_quantize``, ``tts_validate``: :mod:`edgeflow.passes.tts_vits`). After each pass that
changes the audio the gate scores the current bundle on the evaluation sentences (WER, DNSMOS P.808, MCD
to the teacher with the same seed: :mod:`edgeflow.validate.tts_optimize`) and rolls the pass back if it
breaks the budget. Resume, output checks and pass keys are the vocoder pipeline's (:mod:`edgeflow.pipeline`).

``OUT/`` gets ``bundle/``, ``report.json``, ``report.html``, ``samples/`` (teacher, optimized and stock wavs),
and ``.work/`` (state, teacher audio, intermediate bundles).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import CheckpointError, ConfigError, InputError
from edgeflow.core.io import atomic_write_json, sha256_file
from edgeflow.pipeline_run import STATE, _check_out_dir, _digest, _load_state, local_threads, pass_keys

STATE_VERSION = 1
DEFAULT_N_EVAL = 20
BUNDLE_SPEAK = {"chunk_frames": None, "first_chunk_frames": None}


def load_voice_model(path: Path) -> Tuple[Any, List[Dict[str, Any]], Dict[str, Any]]:
    """(VITS model, history so far, source) of a Piper ``.onnx`` (imported) or a VITS model.pt.

    Raises:
        InputError: missing file. CheckpointError / ConfigError: not a voice, unsafe or foreign file.
    """
    from edgeflow import __version__

    if not path.is_file():
        raise InputError(f"model not found: {path}")
    if path.suffix == ".onnx":
        from edgeflow.models.importers.piper import import_piper

        t0 = time.time()
        model, info = import_piper(path)
        record = {"name": "import", "status": "applied", "version": __version__, "config": {"from": "piper-onnx"},
                  "seconds": round(time.time() - t0, 2), "source": info["source"],
                  "details": {k: info[k] for k in ("inference_only", "missing", "unused")}}
        return model, [record], {"kind": "piper", "path": str(path), "sha256": info["source"]["sha256"]}
    from edgeflow.models.checkpoint import load_model
    from edgeflow.models.family import get_family

    model, info = load_model(path)
    if get_family(info["family"]).task != "tts":
        raise CheckpointError(f"{path}: a {info['family']} model is not a text-to-speech voice")
    return model, list(info.get("history") or []), {"kind": "model.pt", "path": str(path),
                                                    "sha256": sha256_file(path)}


def tts_recipe(target: Dict[str, Any], recipe: Optional[str]) -> Tuple[str, List[Dict[str, Any]]]:
    """(name, pass list) of a voice recipe from the target's ``recipes_tts`` table."""
    from edgeflow.targets import task_recipe

    return task_recipe(target, "tts", recipe, "text-to-speech", target.get("default_recipe", "quality"))


def optimize_tts(model_path: str | Path, out_dir: str | Path, target: str = "cpu", recipe: Optional[str] = None,
                 budget: Any = None, n_eval: Optional[int] = None, seed: int = 0, threads: Optional[int] = None,
                 clean_work: bool = False, log=print) -> Dict[str, Any]:
    """Run a voice recipe on a Piper .onnx or VITS model.pt; write OUT/bundle, report.json/html, samples.

    Args:
        budget: e.g. ``"wer=0.03,dnsmos=0.1,mcd=2.5"`` (default: the recipe's ``recipe_budgets_tts`` entry, else
            the target's ``default_budget_tts``, else
            :data:`edgeflow.validate.tts_optimize.DEFAULT_TTS_BUDGET`); metrics wer, dnsmos (P.808), mcd.
        n_eval: evaluation sentences (1..20, default 20: all of them; fewer gate faster and noisier).

    Returns:
        the report dict (also OUT/report.json).
    """
    from edgeflow.data.tts_text import sentences
    from edgeflow.passes.base import make_config
    from edgeflow.targets import load_target, recipe_budget
    from edgeflow.validate.budget import parse_budget
    from edgeflow.validate.tts_optimize import DEFAULT_TTS_BUDGET

    model_path, out = Path(model_path), Path(out_dir)
    tgt = load_target(target)
    recipe_name, specs = tts_recipe(tgt, recipe)
    cfgs = [make_config(s.pop("pass"), s) for s in specs]
    budget_d = parse_budget(budget if budget is not None else recipe_budget(tgt, recipe_name, True, DEFAULT_TTS_BUDGET))
    bad = sorted(set(budget_d) - {"wer", "dnsmos", "mcd"})
    if bad:
        raise ConfigError(f"budget metric(s) {', '.join(bad)} do not apply to a voice (use wer, dnsmos, mcd)")
    n_eval = DEFAULT_N_EVAL if n_eval is None else int(n_eval)
    if not 1 <= n_eval <= 20:
        raise ConfigError(f"--n-eval must be 1..20 for a voice (there are 20 evaluation sentences), got {n_eval}")
    _check_out_dir(out)
    model, history, source = load_voice_model(model_path)
    texts = sentences("evaluation")[:n_eval]
    threads = local_threads(threads, tgt)
    base = _digest({"model": source["sha256"], "target": tgt["name"], "budget": budget_d, "n_eval": n_eval,
                    "seed": seed, "task": "tts", "version": STATE_VERSION})
    keys = pass_keys(base, cfgs, [{} for _ in cfgs])
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    state = _load_state(work / STATE, base, keys, out, log)
    run = _Run(model, history, cfgs, keys, texts, budget_d, tgt, state, work, seed, threads, log)
    run.passes()
    report = run.finish(out, source, recipe_name)
    if clean_work:
        shutil.rmtree(work, ignore_errors=True)
        log(f"removed {work} (--clean-work)")
    return report


class _Run:
    """The pass loop and the report of one optimize_tts run."""

    def __init__(self, model, history, cfgs, keys, texts, budget, target, state, work: Path, seed: int,
                 threads: int, log):
        from edgeflow.passes import Artifact
        from edgeflow.validate.tts_systems import TorchVoice

        self.cfgs, self.keys, self.texts, self.budget, self.target = cfgs, keys, texts, budget, target
        self.state, self.work, self.seed, self.threads, self.log = state, work, seed, threads, log
        self.teacher = TorchVoice(model, threads)
        self.artifact = Artifact(model=model, reference=model, history=list(history))
        self.rows: List[Dict[str, Any]] = []
        self.teacher_audio = self._teacher()

    def _progress(self, label: str):
        """Progress lines with an ETA over the evaluation sentences."""
        from edgeflow.validate.progress import Progress

        return Progress(label, len(self.texts), self.log, "sentences")

    def _teacher(self) -> List[np.ndarray]:
        from edgeflow.validate.tts_optimize import score_voice

        path = self.work / "teacher_outputs.npz"
        if "reference" not in self.state or not path.is_file():
            self.log(f"scoring the unoptimized model (PyTorch teacher) on {len(self.texts)} evaluation sentences ...")
            metrics, _, audios = score_voice(self.teacher, self.texts, None, self.seed,
                                             progress=self._progress("scoring the teacher"))
            self.state["reference"] = dict(metrics, mcd=0.0)
            np.savez(path, *audios)
            atomic_write_json(self.work / STATE, self.state)
        with np.load(path) as z:
            return [z[f"arr_{i}"] for i in range(len(self.texts))]

    def evaluate(self, bundle: Path) -> Dict[str, Any]:
        """The gate's metrics of a bundle (plus rtf and size)."""
        from edgeflow.runtime import Voice
        from edgeflow.runtime.bundle import read_manifest
        from edgeflow.runtime.voice_config import INT8_FLOW
        from edgeflow.validate.tts_optimize import bundle_bytes, score_voice

        # A native INT8 waveform stage (tts_wave), INT8 flow (tts_flow_int8) or text encoder (tts_text_encoder)
        # changes the audio of the native engine only: score that one.
        native = read_manifest(bundle, task=None).get("native") or {}
        changed = native.get("wave_stage") or native.get("text_encoder") or native.get("engine") == INT8_FLOW
        voice = Voice.load(bundle, threads=self.threads, engine="native" if changed else "auto")
        metrics, _, _ = score_voice(voice, self.texts, self.teacher_audio, self.seed,
                                    progress=self._progress("scoring the bundle"), **BUNDLE_SPEAK)
        return dict(metrics, size_mb=bundle_bytes(bundle) / 1e6)

    def evaluate_model(self, model) -> Dict[str, Any]:
        """The gate's metrics of a torch model (a pass before ``tts_export``): PyTorch, same seed and texts."""
        from edgeflow.validate.tts_optimize import score_voice
        from edgeflow.validate.tts_systems import TorchVoice

        metrics, _, _ = score_voice(TorchVoice(model, self.threads), self.texts, self.teacher_audio, self.seed,
                                    progress=self._progress("scoring the model"))
        return dict(metrics, rtf_engine="pytorch")

    def _reuse(self, k: int, name: str, n: int) -> Dict[str, Any]:
        """Restore pass ``k`` done by an earlier run (its bundle, info, and model when it changed the model)."""
        from edgeflow.models.checkpoint import load_model

        art, rec = self.artifact, self.state["done"][k]
        art.history.append(rec["record"])
        art.bundle_dir = self.work / rec["bundle"] if rec.get("bundle") else None
        art.info = dict(rec.get("info", {}))
        if rec.get("model"):
            art.model = load_model(self.work / rec["model"])[0].eval()
        self.rows.append(rec["row"])
        self.log(f"[{k + 1}/{n}] {name}: done in an earlier run ({rec['record']['status']}), reused")
        return rec.get("metrics")

    def _gate(self, cfg, record: Dict[str, Any], saved, current: Dict[str, Any]) -> Dict[str, Any]:
        """Score the pass's result, roll it back if it breaks the budget; returns the metrics now current."""
        from edgeflow.validate.budget import budget_violations, describe_violation

        art = self.artifact
        model_changed = art.model is not saved[2]
        if not cfg.changes_output:
            after = current
        elif model_changed:
            self.log("    scoring the changed model (PyTorch) ...")
            after = self.evaluate_model(art.model)
        else:
            after = self.evaluate(art.bundle_dir) if art.bundle_dir else current
        record["metrics_after"] = after
        bad = budget_violations(self.state["reference"], after, self.budget)
        if bad and cfg.changes_output:
            record.update(status="rolled_back", violations=bad)
            art.bundle_dir, art.info, art.model = saved
            self.log("    rolled back: budget broken (" +
                     ", ".join(describe_violation(m, v) for m, v in bad.items()) + ")")
            return current
        self.log(f"    ok ({record['seconds']:.1f} s) " + ", ".join(
            f"{m}={after[m]:.3f}" for m in ("wer", "dnsmos", "mcd", "rtf") if m in after))
        return after

    def passes(self) -> None:
        from edgeflow.models.checkpoint import save_model
        from edgeflow.passes import PassContext, apply_pass

        art, n = self.artifact, len(self.cfgs)
        ctx = PassContext(work_dir=self.work, target=dict(self.target, threads=self.threads), seed=self.seed)
        current = dict(self.state["reference"])
        for k, cfg in enumerate(self.cfgs):
            name = type(cfg).pass_name
            if k < len(self.state["done"]):
                current = self._reuse(k, name, n) or current
                continue
            self.log(f"[{k + 1}/{n}] {name} ...")
            saved = (art.bundle_dir, dict(art.info), art.model)
            record = apply_pass(art, cfg, ctx, metrics_before=current)
            current = self._gate(cfg, record, saved, current)
            model_file = None
            if art.model is not saved[2]:                     # kept: save it so a resumed run starts from it
                model_file = f"model-{k + 1:02d}-{name}.pt"
                save_model(self.work / model_file, art.model, history=art.history)
            row = {"name": name, "status": record["status"], "seconds": record["seconds"],
                   "metrics": record["metrics_after"], "violations": record.get("violations"),
                   "details": record.get("details")}
            self.rows.append(row)
            self.state["done"].append({"key": self.keys[k], "record": record, "metrics": current, "row": row,
                                       "bundle": art.bundle_dir.name if art.bundle_dir else None,
                                       "info": art.info, "model": model_file})
            atomic_write_json(self.work / STATE, self.state)
        if art.bundle_dir is None:
            raise ConfigError("the recipe produced no bundle (tts_export rolled back or missing)")
        self.current = current

    def finish(self, out: Path, source: Dict[str, Any], recipe: str) -> Dict[str, Any]:
        from edgeflow.validate.budget import budget_violations
        from edgeflow.validate.tts_optimize import write_report, write_samples

        from edgeflow.pipeline_tts_out import publish

        publish(self.artifact, out / "bundle", self.target)
        systems, audios = self._side_by_side(out / "bundle", source)
        stock = systems.get("stock Piper (bare onnxruntime)")
        opt = systems["optimized bundle"]
        report = {"task": "tts", "model": source, "target": self.target["name"], "recipe": recipe,
                  "budget": self.budget, "budget_held": not budget_violations(self.state["reference"], self.current,
                                                                              self.budget),
                  "n_eval": len(self.texts), "seed": self.seed, "threads": self.threads, "sentences": self.texts,
                  "reference": self.state["reference"], "final": self.current, "passes": self.rows,
                  "comparison": {"systems": systems, "rtf_speedup_vs_stock":
                                 stock["rtf"] / opt["rtf"] if stock else None,
                                 "note": "same sentences, this process; rtf: whole sentences timed in turn, fastest "
                                         "of 2 (rtf_scored: the scoring pass); the stock voice's noise is "
                                         "internal (no mcd)"},
                  "bundle": "bundle", "samples": write_samples(out / "samples", self.texts, audios,
                                                          self.teacher.sample_rate),
                  "history": [h for h in self.artifact.history if h.get("name") == "import"]}
        from edgeflow.validate.sanity import tts_sanity

        report["cost"] = self._cost()

        report["sanity"] = tts_sanity(self.teacher_audio, self.teacher.sample_rate, self.state["reference"])
        if report["sanity"]["warning"]:
            self.log(f"WARNING: {report['sanity']['warning']}")
        first = {k: v[0] for k, v in audios.items() if len(v)}
        write_report(out, report, first, self.teacher.sample_rate)
        self.log(f"report: {out}/report.html")
        return report

    def _cost(self) -> Dict[str, Any]:
        """The final model's cost model (FLOPs per audio second by part) and the target's roofline estimate."""
        from edgeflow.models.family import get_family
        from edgeflow.validate.report import roofline

        model = self.artifact.model
        parts = get_family("vits").flops_breakdown(model.config)
        flops, params = float(sum(parts.values())), int(model.inference_parameters())
        precision = self.artifact.info.get("precision", "float32")
        return {"flops_per_audio_second": flops, "flops_by_part": parts, "parameters": params,
                "precision": precision, "target_estimate": roofline(flops, params, self.target, precision)}

    def _side_by_side(self, bundle: Path, source: Dict[str, Any]):
        from edgeflow.runtime import Voice
        from edgeflow.validate.tts import BarePiper, evaluate_voice
        from edgeflow.validate.tts_optimize import bundle_bytes, interleaved_rtf, score_voice

        self.log("side by side: teacher, optimized bundle" + (", stock voice" if source["kind"] == "piper" else ""))
        systems, audios = {}, {"teacher": self.teacher_audio}
        m, _, audios["optimized"] = score_voice(Voice.load(bundle, threads=self.threads), self.texts,
                                                self.teacher_audio, self.seed, **BUNDLE_SPEAK)
        streamed = evaluate_voice(Voice.load(bundle, threads=self.threads), self.texts, wer=False, dnsmos=False,
                                  seed=self.seed)["summary"]                 # default chunks: streaming
        m.update(time_to_first_audio=streamed["time_to_first_audio"], rtf_streaming=streamed["rtf"])
        systems["optimized bundle"] = dict(m, size_mb=bundle_bytes(bundle) / 1e6)
        systems["teacher (PyTorch)"] = dict(self.state["reference"])
        if source["kind"] == "piper":
            p = Path(source["path"])
            m, _, audios["stock"] = score_voice(BarePiper(p, threads=self.threads), self.texts, None, self.seed)
            systems["stock Piper (bare onnxruntime)"] = dict(m, size_mb=(bundle_bytes(p) +
                                                                         bundle_bytes(Path(f"{p}.json"))) / 1e6)
            voices = {"optimized bundle": Voice.load(bundle, threads=self.threads),
                      "stock Piper (bare onnxruntime)": BarePiper(p, threads=self.threads)}
            for name, rtf in interleaved_rtf(voices, self.texts, self.seed, BUNDLE_SPEAK).items():
                systems[name].update(rtf_scored=systems[name]["rtf"], rtf=rtf)
        return systems, audios

"""``optimize_fmtts()``: a flow-matching (``fmtts``) acoustic model + a mel-only vocoder -> voice bundle + report.

``edgeflow optimize FMTTS.pt --vocoder VOCODER --target T --recipe R -o OUT`` comes here
(:func:`edgeflow.pipeline.optimize` dispatches on the model's family). The bundle is exported first
(:func:`edgeflow.export.fmtts.export_fmtts_bundle`, parity-checked against PyTorch), then the passes of the
target's ``recipes_fmtts`` table run on it (``fm_nfe``: :mod:`edgeflow.passes.fm_nfe`, which holds its own
budget ``max_mcd``, so there is no separate gate or rollback here).

Every bundle of the run (after the export, after each pass) is scored on the first ``n_eval`` evaluation
sentences at its default ODE setting against the **reference**: the exported bundle solved with the midpoint
rule at 32 NFE without sway, same seeds: WER (pocketsphinx), DNSMOS P.808, MCD of the vocoded audio to the
reference (dB), size, and RTF of whole sentences at ``threads`` threads (default 1), timed interleaved. The
reference's own WER decides ``"speech"``: above :data:`edgeflow.validate.sanity.MAX_WER` (0.8) the model does
not speak (e.g. an early training checkpoint) and the report and the console say so: MCD then shows only how
close the solver comes to the reference solve, not speech quality.

``OUT/`` gets ``bundle/`` (the whole history in its manifest) and ``report.json``; ``.work/`` holds the
intermediate bundles (``clean_work`` removes it). A run does not resume: OUT must be new or empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgeflow.core.errors import ConfigError, InputError

DEFAULT_N_EVAL = 3
#: The reference solve every bundle is compared with (and the speech check runs on).
REFERENCE = {"solver": "midpoint", "nfe": 32, "sway": 0.0}
WHOLE = {"chunk_frames": None, "first_chunk_frames": None}


def fmtts_route(family: Optional[str], vocoder: Any, **other: Any) -> bool:
    """Whether ``edgeflow optimize`` takes the fmtts route for a model of ``family`` (a model.pt's family, None
    for anything else), checking ``--vocoder`` both ways.

    Args:
        other: the vocoder pipeline's options (data, calib, allow_skip, budget); any set is refused here.

    Raises:
        InputError: an fmtts model without a vocoder, or a vocoder for any other model. ConfigError: an
            option that does not apply to an fmtts voice.
    """
    if family != "fmtts":
        if vocoder is not None:
            raise InputError("--vocoder applies to flow-matching (fmtts) models only")
        return False
    if vocoder is None:
        raise InputError("an fmtts model needs --vocoder (a mel-only vocoder bundle or HiFi-GAN model.pt)")
    if any(v not in (None, False) for v in other.values()):
        raise ConfigError("--data, --calib, --allow-skip and --max-drop do not apply to an fmtts voice (its "
                          "budget is the fm_nfe pass's max_mcd in the target's recipes_fmtts)")
    return True


class _Fixed:
    """A voice whose ``speak_stream`` always uses one ODE setting (for the interleaved RTF timing)."""

    def __init__(self, voice, ode: Dict[str, Any]):
        self.voice, self.ode, self.manifest, self.sample_rate = voice, dict(ode), voice.manifest, voice.sample_rate

    def speak_stream(self, text: str, **kw):
        return self.voice.speak_stream(text, **kw, **self.ode)


def optimize_fmtts(model_path: str | Path, out_dir: str | Path, vocoder: str | Path, target: str = "cpu",
                   recipe: Optional[str] = None, n_eval: Optional[int] = None, seed: int = 0,
                   threads: Optional[int] = None, clean_work: bool = False, log=print) -> Dict[str, Any]:
    """Export an fmtts model with ``vocoder``, run the recipe's passes, write OUT/bundle and OUT/report.json.

    Args:
        vocoder: a mel-only vocoder bundle directory or HiFi-GAN model.pt (its mel front-end the model's).
        recipe: a key of the target's ``recipes_fmtts`` (default: its ``default_recipe_fmtts``).
        n_eval: evaluation sentences scored (1..20, default 3). threads: RTF threads (default 1).

    Returns:
        the report dict (also OUT/report.json).

    Raises:
        ConfigError: unknown recipe, a pass that does not apply, OUT not empty. InputError: no vocoder.
        CheckpointError: not an fmtts model.pt.
    """
    from edgeflow.core.io import atomic_write_json
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.targets import load_target

    model_path, out = Path(model_path), Path(out_dir)
    tgt = load_target(target)
    recipe_name, cfgs, n_eval = _check(tgt, recipe, n_eval, vocoder, out)
    model, info = load_model(model_path, family="fmtts")
    work, created = out / ".work", not out.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        art = Artifact(model=model, reference=model, history=list(info.get("history") or []))
        rows = [_export(art, vocoder, work, f"[1/{len(cfgs) + 1}]", log)]
        ctx = PassContext(work_dir=work, target=dict(tgt, threads=1), seed=seed)
        for k, cfg in enumerate(cfgs):
            log(f"[{k + 2}/{len(cfgs) + 1}] {type(cfg).pass_name} ...")
            rec = apply_pass(art, cfg, ctx)
            rows.append({"name": rec["name"], "status": rec["status"], "seconds": rec["seconds"],
                         "config": rec["config"], "bundle": art.bundle_dir.name, "details": rec["details"]})
        from edgeflow.pipeline_tts_out import publish

        publish(art, out / "bundle", {"name": tgt["name"]})   # no TensorRT plan: it is written for VITS graphs
        report = _score(rows, work, n_eval, seed, threads or 1, log)
    except BaseException:
        shutil.rmtree(out if created else work, ignore_errors=True)   # a failed run leaves nothing behind
        raise
    report.update(model={"path": str(model_path), "family": "fmtts", "step": (info.get("meta") or {}).get("step")},
                  vocoder=str(vocoder), target=tgt["name"], recipe=recipe_name, bundle="bundle")
    atomic_write_json(out / "report.json", report)
    log(f"report: {out}/report.json")
    if clean_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _check(tgt: Dict[str, Any], recipe: Optional[str], n_eval: Optional[int], vocoder, out: Path):
    """(recipe name, pass configs, n_eval), every input checked before anything is written."""
    from edgeflow.passes.base import make_config
    from edgeflow.targets import task_recipe

    recipe_name, specs = task_recipe(tgt, "fmtts", recipe, "flow-matching TTS", "balanced")
    cfgs = [make_config(s.pop("pass"), s) for s in specs]
    for cfg in cfgs:
        why = cfg.refusal("fmtts")
        if why:
            raise ConfigError(f"recipe {recipe_name} of target {tgt['name']}: pass {type(cfg).pass_name} does not "
                              f"apply to an fmtts voice ({why})")
    n_eval = DEFAULT_N_EVAL if n_eval is None else int(n_eval)
    if not 1 <= n_eval <= 20:
        raise ConfigError(f"--n-eval must be 1..20 for a voice (there are 20 evaluation sentences), got {n_eval}")
    if not Path(vocoder).exists():
        raise InputError(f"vocoder not found: {vocoder} (a vocoder bundle directory or HiFi-GAN model.pt)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} is not empty (an fmtts run does not resume); choose a new one")
    return recipe_name, cfgs, n_eval


def _export(art, vocoder, work: Path, step: str, log) -> Dict[str, Any]:
    import time

    from edgeflow import __version__
    from edgeflow.export.fmtts import export_fmtts_bundle

    log(f"{step} export (text graph + field graph + vocoder, parity-checked) ...")
    t0, dest = time.time(), work / "bundle-00-export"
    manifest = export_fmtts_bundle(art.model, vocoder, dest, history=art.history, overwrite=True)
    art.bundle_dir = dest
    art.info["vocoder"] = str(vocoder)                         # fm_vocoder's prune step reloads a model.pt
    seconds = round(time.time() - t0, 2)
    art.history.append({"name": "export", "status": "applied", "version": __version__, "seconds": seconds,
                        "config": {"family": "fmtts", "vocoder": str(vocoder)}})
    return {"name": "export", "status": "applied", "seconds": seconds, "bundle": dest.name,
            "details": {"validation": manifest.get("validation"), "sampling": manifest.get("sampling")}}


def _score(rows: List[Dict[str, Any]], work: Path, n_eval: int, seed: int, threads: int, log) -> Dict[str, Any]:
    """Reference and per-row metrics (WER, DNSMOS, audio MCD to the reference, size), interleaved RTF, speech."""
    from edgeflow.data.tts_text import sentences
    from edgeflow.runtime import Voice
    from edgeflow.validate.progress import Progress
    from edgeflow.validate.sanity import MAX_WER, tts_sanity
    from edgeflow.validate.tts_optimize import bundle_bytes, interleaved_rtf, score_voice

    texts = sentences("evaluation")[:n_eval]
    prog = lambda label: Progress(label, len(texts), log, "sentences")  # noqa: E731
    log(f"scoring the reference ({REFERENCE['solver']}, NFE {REFERENCE['nfe']}) and {len(rows)} bundle(s) on "
        f"{len(texts)} evaluation sentences ...")
    ref_voice = Voice.load(work / rows[0]["bundle"], threads=threads)
    ref, _, ref_audio = score_voice(ref_voice, texts, None, seed, progress=prog("reference"), **WHOLE, **REFERENCE)
    ref["mcd"] = 0.0
    timed = {"reference": _Fixed(ref_voice, REFERENCE)}
    for i, row in enumerate(rows):
        voice = Voice.load(work / row["bundle"], threads=threads)
        m, _, _ = score_voice(voice, texts, ref_audio, seed, progress=prog(row["name"]), **WHOLE)
        row["sampling"] = {k: voice.sampling[k] for k in ("nfe", "solver", "sway", "guidance")}
        row["metrics"] = dict(m, size_mb=bundle_bytes(work / row["bundle"]) / 1e6)
        timed[f"{i}-{row['name']}"] = voice
    log(f"timing whole sentences at {threads} thread(s), interleaved ...")
    rtf = interleaved_rtf(timed, texts, seed, WHOLE)
    ref["rtf_scored"], ref["rtf"] = ref["rtf"], rtf["reference"]
    for i, row in enumerate(rows):
        row["metrics"].update(rtf_scored=row["metrics"]["rtf"], rtf=rtf[f"{i}-{row['name']}"])
    speech = ref["wer"] <= MAX_WER
    sanity = tts_sanity(ref_audio, ref_voice.sample_rate, ref)
    warning = None if speech else (f"the reference model does not produce speech (WER {ref['wer']:.2f} > {MAX_WER} "
                                   f"on {len(texts)} sentences): MCD shows only how close each ODE setting comes to "
                                   f"the reference solve, not speech quality")
    if warning:
        log(f"WARNING: {warning}")
    return {"task": "tts", "family": "fmtts", "n_eval": len(texts), "seed": seed, "threads": threads,
            "sentences": texts, "reference_setting": REFERENCE, "reference": ref, "passes": rows,
            "final": dict(rows[-1]["metrics"], **rows[-1]["sampling"]), "speech": speech, "warning": warning,
            "sanity": sanity, "budget_held": all((r["details"] or {}).get("fallback") is None for r in rows[1:]),
            "note": "rtf: whole sentences, fastest of 2 interleaved rounds (rtf_scored: the scoring pass); mcd: "
                    "mel-cepstral distance (dB) of the vocoded audio to the reference solve, same seeds"}


def summary_line(report: Dict[str, Any], out) -> str:
    """The closing console line of an fmtts run."""
    f = report["final"]
    line = (f"{f['solver']} NFE {f['nfe']} sway {f['sway']:g}; RTF {f['rtf']:.4f} (reference "
            f"{report['reference']['rtf']:.4f}); WER {f['wer']:.3f}; DNSMOS P.808 {f['dnsmos']:.3f}; "
            f"MCD {f['mcd']:.3f} dB")
    if not report["budget_held"]:
        line += "; NO SETTING HELD THE BUDGET (reference kept)"
    if report.get("warning"):
        line += "; WARNING: " + report["warning"]
    return line + f"; report: {out}/report.json"

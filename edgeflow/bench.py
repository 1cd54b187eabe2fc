"""``bench()``: the optimize report for any bundle or model.pt, without optimizing it.

At the pipeline's level (it shares the pipeline's run-directory helpers and the report writer).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from edgeflow.core.errors import ConfigError


def _is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def _torch_model_of_bundle(bundle: Path):
    """A torch model of the bundle's family and config (for parameter and FLOP counts only)."""
    from edgeflow.models.base import build_model
    from edgeflow.runtime.bundle import read_manifest

    m = read_manifest(bundle)
    return build_model(m["family"], m["config"]).eval()


def bench(subject: str | Path, out_dir: str | Path, against: Optional[str | Path] = None,
          data: Optional[str | Path] = None, target: str = "cpu", n_eval: int = 4, threads: Optional[int] = None,
          seed: int = 0, log=print) -> Dict[str, Any]:
    """Write OUT/bundle, OUT/report.json, OUT/report.html and OUT/samples for ``subject``.

    Args:
        subject: a bundle directory or a model.pt (exported to a bundle first, float32).
        against: the reference (model.pt or bundle); default: the subject itself.
        data: held-out clips; default: the eval/ folder beside a model.pt.
    """
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes import Artifact
    from edgeflow.pipeline import _check_out_dir, _default_data, local_threads
    from edgeflow.targets import load_target
    from edgeflow.validate.evaluate import load_clips, score, synthesize_all
    from edgeflow.validate.report import write_outputs

    subject, out = Path(subject), Path(out_dir)
    tgt = load_target(target)
    _check_out_dir(out)
    if _is_bundle(subject):
        from edgeflow.runtime.bundle import read_manifest

        read_manifest(subject)
        model, bundle_src, model_path = _torch_model_of_bundle(subject), subject, subject / "model.onnx"
    else:
        model, _ = load_model(subject)
        model_path, bundle_src = subject, None
    data = Path(data) if data else _default_data(Path(model_path))
    if data is None:
        raise ConfigError("no evaluation clips: pass --data (a corpus folder or a folder of wavs)")
    clips = load_clips(data, model.config.mel, n=n_eval, multiple=model.length_multiple)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "state.json").write_text("{}")
    if bundle_src is None:
        import copy

        from edgeflow.validate.export import export_bundle

        bundle_src = work / "bundle"
        if bundle_src.exists():
            shutil.rmtree(bundle_src)
        export_bundle(copy.deepcopy(model), bundle_src)
    reference, ref_fn = _reference(subject, against, model, seed, threads)
    ref_out = synthesize_all(ref_fn, clips)
    ref_metrics = score(ref_out, clips, model.config.mel)
    from edgeflow.runtime.bundle import read_manifest

    history = read_manifest(bundle_src).get("history", [])
    artifact = Artifact(model=model, reference=reference, bundle_dir=bundle_src, history=list(history))
    return write_outputs(out, artifact, clips, ref_out, ref_metrics, {}, {}, tgt, {}, model_path, seed=seed,
                         threads=local_threads(threads, tgt), log=log)


def _reference(subject: Path, against: Optional[str | Path], model, seed: int, threads: Optional[int]):
    """(reference model or None, synthesizer) of ``against`` (model.pt or bundle), default the subject itself."""
    from edgeflow.models.checkpoint import load_model
    from edgeflow.validate.evaluate import bundle_synthesizer, torch_synthesizer

    ref = Path(against) if against else subject
    if _is_bundle(ref):
        return None, bundle_synthesizer(ref, seed, threads)
    reference = model if not against else load_model(ref)[0]
    return reference, torch_synthesizer(reference, seed)

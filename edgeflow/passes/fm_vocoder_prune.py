"""The ``prune`` step of ``fm_vocoder``: a narrower HiFi-GAN for a flow-matching voice, refitted on the voice's mels.

The vocoder is most of a fast flow-matching voice's time (the field runs one or two steps). The HiFi-GAN family's
cpu ``fast`` recipe cuts the generator's channels (:func:`edgeflow.compress.generator.prune_generator`) and refits
the kept convolutions by least squares, in forward order, to the unpruned generator's features; that needs only
the mels the generator will be fed, no recordings, so inside a voice the refit reads the voice's own mels (the
calibration sentences' windows) and the narrower generator is fitted to the mel distribution it will vocode. The
pruned float graph is then quantized by ``fm_vocoder`` as usual and gated against the unpruned float vocoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgeflow.core.errors import ConfigError


def hifigan_step(target: Optional[Dict[str, Any]], recipe: str, wanted: Callable[[Dict[str, Any]], bool]):
    """The first step of ``target``'s hifigan ``recipe`` for which ``wanted`` holds, or None: the vocoder family's
    own recipe, which ``fm_vocoder`` follows for the vocoder inside a voice."""
    steps = (((target or {}).get("families") or {}).get("hifigan") or {}).get("recipes", {}).get(recipe, [])
    return next((p for p in steps if wanted(p)), None)


def prune_widths(option: Any, target: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The widths to keep: None (no pruning) for None / {}; ``option`` itself for a dict of
    :func:`edgeflow.compress.generator.plan_widths` selectors; for "recipe", the ``widths`` of the
    ``generator_prune`` step of ``target``'s hifigan ``fast`` recipe.

    Raises:
        ConfigError: "recipe" without such a step, or another value.
    """
    if not option:
        return None
    if isinstance(option, dict):
        return dict(option)
    if option == "recipe":
        step = hifigan_step(target, "fast", lambda p: p.get("pass") == "generator_prune" and bool(p.get("widths")))
        if step is None:
            raise ConfigError("fm_vocoder: prune \"recipe\" needs a generator_prune step with widths in the "
                              "target's hifigan fast recipe")
        return dict(step["widths"])
    raise ConfigError(f"fm_vocoder: prune must be a widths dict, \"recipe\" or null, got {option!r}")


def vocoder_model(info: Dict[str, Any]) -> Any:
    """The HiFi-GAN model behind the voice's vocoder (``info["vocoder"]``, the ``--vocoder`` the pipeline exported),
    or a string saying why there is none to prune (a vocoder bundle carries a graph, not channel groups)."""
    from edgeflow.models.checkpoint import load_model

    path = info.get("vocoder")
    if not path or not Path(path).is_file():
        return (f"pruning or equalizing needs the HiFi-GAN model.pt as --vocoder (got {path or 'no path'}: a vocoder "
                "bundle has no channel groups to cut)")
    model, _ = load_model(path)
    if not hasattr(model, "generator"):
        return f"{path} is a {model.family} model, not a HiFi-GAN generator"
    return model


def refit_inputs(feeds: List[Dict[str, np.ndarray]], batch: int = 8) -> List[Any]:
    """The voice's mel windows (``fm_vocoder``'s calibration feeds) of the most common length (the full windows;
    a sentence shorter than a window comes whole, and the sequential refit needs one length) as batches
    x [B, n_mels, F] for the channel scores and the refit."""
    import torch

    lengths = [f["mel"].shape[-1] for f in feeds]
    length = max(sorted(set(lengths)), key=lengths.count)
    mels = [f["mel"][0] for f in feeds if f["mel"].shape[-1] == length]
    return [torch.from_numpy(np.stack(mels[a:a + batch])) for a in range(0, len(mels), batch)]


def pruned_graph(model: Any, widths: Optional[Dict[str, Any]], feeds: List[Dict[str, np.ndarray]], dest: Path,
                 equalize: Optional[float] = None) -> Dict[str, Any]:
    """Prune ``model``'s generator to ``widths`` (None: keep every channel) and refit it on ``feeds`` (sequentially),
    then, with ``equalize`` (an alpha), equalize its channels on the same windows
    (:func:`edgeflow.compress.generator_equalize.equalize_generator`); export the float graph to ``dest`` (a vocoder
    bundle directory; its graph is ``dest/model.onnx``). Returns the prune summary (with ``equalize`` details)."""
    import copy

    import torch

    from edgeflow.compress.generator import prune_generator, stage_summary
    from edgeflow.compress.generator_equalize import equalize_generator
    from edgeflow.export.onnx_export import export_bundle
    from edgeflow.models.base import build_model

    inputs = refit_inputs(feeds)
    out: Dict[str, Any] = {}
    if widths:
        with torch.no_grad():
            gen, info = prune_generator(model.generator, 0.0, widths, inputs, refit=True, refit_mode="sequential")
        out = {"widths": widths, "groups": stage_summary(info), "params": info["params"],
               "refit": f"sequential, on {sum(len(x) for x in inputs)} windows of the voice's own mels"}
    else:
        gen = copy.deepcopy(model.generator)
    if equalize is not None:
        out["equalize"] = equalize_generator(gen.eval(), inputs, equalize)
    with torch.random.fork_rng():
        student = build_model(model.family, model.config.replace(generator=gen.config))
    student.generator = gen.eval()
    student.eval()
    export_bundle(student, dest)
    return out

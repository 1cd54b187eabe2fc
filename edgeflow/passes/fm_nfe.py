"""``fm_nfe``: choose the cheapest ODE setting of a flow-matching (``fmtts``) voice bundle that holds a mel budget.

An fmtts bundle runs its mel decoder as an ODE in the runtime (:mod:`edgeflow.runtime.fm_voice`): every
function evaluation (NFE) is one call of the field graph, so the cost of a sentence's acoustic model is about
NFE x one field call (Euler: 1 per step, midpoint: 2 per step). This pass measures, on the first
``sentences`` calibration sentences (:mod:`edgeflow.data.tts_text`, never the evaluation ones), every candidate
(solver x NFE x sway coefficient) against the bundle's own **reference**: the same bundle, the same seeds
(sentence ``k`` uses seed ``ctx.seed + k``, so the same initial noise and durations), solved with
``reference_solver`` at ``reference_nfe`` without sway. The distance is the mel-cepstral distance of the log-mels
themselves (:func:`mel_mcd`: the MCD formula of :func:`edgeflow.validate.metrics.mcd` applied to the model's
natural-log mel instead of a re-analysed waveform, so no vocoder runs), averaged over the sentences.

The chosen setting is the one with the fewest evaluations whose mean MCD is <= ``max_mcd`` (ties: the smaller
MCD). It becomes the bundle's default (``manifest.sampling``: nfe, solver, sway; a new bundle directory with
the hashes rewritten); guidance and the scales keep the bundle's defaults. The whole table goes into the
pass details and the manifest's ``nfe_reduction`` section.

**Impossible budget**: when no candidate holds ``max_mcd``, the reference setting itself (MCD 0 by definition)
is written as the default, and the details say ``"fallback": "reference"``: the bundle is never left at a
setting that breaks its budget, at the price of the reference's cost.

Not in scope: **distillation to fewer steps** (consistency / shortcut / rectified-flow reflow students that are
trained to sample in 1-2 steps). This pass only picks among the solver settings of the trained field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass

#: 10 / ln 10 * sqrt(2): the MCD constant of :func:`edgeflow.validate.metrics.mcd`.
MCD_K = 10.0 / math.log(10.0) * math.sqrt(2.0)
METHODS = ("euler", "midpoint")


def mel_mcd(ref: np.ndarray, test: np.ndarray, order: int = 24) -> float:
    """Mel-cepstral distance (dB) between two natural-log mels [n_mels, frames] of equal shape.

    c_d = DCT-II of the log-mel over the band axis / (2 n_mels) (:func:`edgeflow.validate.metrics.mel_cepstrum`'s
    scaling), d = 1..order (order at most n_mels - 1); per frame ``10 / ln 10 * sqrt(2 sum_d (c_d - c'_d)^2)``,
    averaged over frames.

    Raises:
        ValueError: the shapes differ.
    """
    from scipy.fft import dct

    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if ref.shape != test.shape or ref.ndim != 2:
        raise ValueError(f"mel_mcd needs two [n_mels, frames] mels of one shape, got {ref.shape} and {test.shape}")
    n = ref.shape[0]
    order = max(1, min(int(order), n - 1))
    diff = dct(ref - test, type=2, axis=0)[1:order + 1] / (2.0 * n)      # the DCT is linear
    return float(MCD_K * np.mean(np.sqrt(np.sum(diff ** 2, axis=0))))


def cost(row: Dict[str, Any]) -> int:
    """Field evaluations per sentence of a setting (NFE: Euler 1 per step, midpoint 2)."""
    return int(row["nfe"])


@dataclasses.dataclass
class FmNfeConfig(PassConfig):
    """Options of ``fm_nfe``.

    Attributes:
        max_mcd: budget: mean mel-cepstral distance (dB) to the reference on the calibration sentences.
        solvers: solvers tried ("euler", "midpoint").
        nfe: NFE grid tried (odd values are skipped for midpoint).
        sway: sway coefficients tried (0: uniform grid; F5-TTS: -1).
        reference_solver, reference_nfe: the reference solve (no sway); also the fallback setting.
        sentences: calibration sentences measured (1..20).
    """

    max_mcd: float = 1.0
    solvers: List[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    nfe: List[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 12, 16])
    sway: List[float] = dataclasses.field(default_factory=lambda: [0.0, -0.5, -1.0])
    reference_solver: str = "midpoint"
    reference_nfe: int = 32
    sentences: int = 3

    def __post_init__(self):
        from edgeflow.core.ode import SWAY_MAX, SWAY_MIN

        if not (isinstance(self.max_mcd, (int, float)) and math.isfinite(self.max_mcd) and self.max_mcd >= 0):
            raise ValueError(f"max_mcd must be a finite number >= 0 (dB), got {self.max_mcd!r}")
        if not self.solvers or any(s not in METHODS for s in self.solvers):
            raise ValueError(f"solvers must be a non-empty list of {', '.join(METHODS)}")
        if not self.nfe or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000 for n in self.nfe):
            raise ValueError("nfe must be a non-empty list of integers in [1, 1000]")
        if not self.sway or any(not isinstance(s, (int, float)) or not SWAY_MIN <= s <= SWAY_MAX for s in self.sway):
            raise ValueError(f"sway must be a non-empty list of numbers in [{SWAY_MIN:g}, {SWAY_MAX:.4f}]")
        if self.reference_solver not in METHODS:
            raise ValueError(f"reference_solver must be one of {', '.join(METHODS)}")
        if not isinstance(self.reference_nfe, int) or not 1 <= self.reference_nfe <= 1000 or (
                self.reference_solver == "midpoint" and self.reference_nfe % 2):
            raise ValueError("reference_nfe must be an integer in [1, 1000] (even for midpoint)")
        if not isinstance(self.sentences, int) or not 1 <= self.sentences <= 20:
            raise ValueError("sentences must be 1..20 (there are 20 calibration sentences)")

    def refusal(self, family: Any):
        if getattr(family, "name", family) != "fmtts":
            return "fm_nfe chooses the ODE setting of a flow-matching (fmtts) voice bundle"
        return None

    def candidates(self) -> List[Dict[str, Any]]:
        """Every (solver, nfe, sway) of the grid, in grid order (midpoint: even NFE only)."""
        return [{"solver": solver, "nfe": int(n), "sway": float(s)} for solver in self.solvers for n in self.nfe
                if solver == "euler" or n % 2 == 0 for s in self.sway]


def calibration_ids(voice: Any, n: int) -> List[List[int]]:
    """Phoneme ids of every sentence of the first ``n`` calibration texts (a text may hold several)."""
    from edgeflow.data.tts_text import sentences

    return [ids for text in sentences("calibration")[:n] for ids in voice.sentence_ids(text)]


def measure(voice: Any, ids: Sequence[Sequence[int]], candidates: Sequence[Dict[str, Any]], reference: Dict[str, Any],
            seed: int = 0, log=None) -> List[Dict[str, Any]]:
    """The table: each candidate's mean / worst :func:`mel_mcd` and mean log-mel L1 to the reference solve.

    Args:
        voice: an :class:`edgeflow.runtime.fm_voice.FmVoice`. ids: phoneme ids per sentence (seed ``seed + k``).
        candidates: [{solver, nfe, sway}]. reference: {solver, nfe, sway} of the reference solve.

    Returns:
        one row per candidate: {solver, nfe, sway, mcd, mcd_max, mel_l1, seconds (wall, all sentences)}.
    """
    from edgeflow.validate.progress import Progress

    order = 24
    refs = [voice.mel_ids(x, seed=seed + k, **reference) for k, x in enumerate(ids)]
    prog = Progress("fm_nfe grid", sum(cost(c) for c in candidates) * len(ids), log, "field evaluations")
    rows = []
    for c in candidates:
        mcds, l1s, t0 = [], [], time.perf_counter()
        for k, x in enumerate(ids):
            mel = voice.mel_ids(x, seed=seed + k, **c)
            mcds.append(mel_mcd(refs[k], mel, order))
            l1s.append(float(np.mean(np.abs(refs[k] - mel))))
            prog.advance(cost(c))
        rows.append(dict(c, mcd=float(np.mean(mcds)), mcd_max=float(np.max(mcds)), mel_l1=float(np.mean(l1s)),
                         seconds=round(time.perf_counter() - t0, 4)))
    return rows


def choose(rows: Sequence[Dict[str, Any]], max_mcd: float) -> Dict[str, Any] | None:
    """The row with the fewest evaluations whose mean MCD is <= ``max_mcd`` (ties: smaller MCD, then grid order);
    None when no row holds it."""
    held = [(cost(r), r["mcd"], i) for i, r in enumerate(rows) if r["mcd"] <= max_mcd]
    return dict(rows[min(held)[2]]) if held else None


def write_defaults(src: Path, out: Path, setting: Dict[str, Any], section: Dict[str, Any]) -> Dict[str, Any]:
    """Copy bundle ``src`` to ``out`` with ``setting`` (nfe, solver, sway) as its sampling defaults and
    ``section`` as ``manifest.nfe_reduction`` (hashes rewritten, the directory appears only when complete)."""
    from edgeflow.core.bundle_format import copy_bundle

    sampling = json.loads((src / "manifest.json").read_text(encoding="utf-8"))["sampling"]
    sampling = dict(sampling, nfe=int(setting["nfe"]), solver=setting["solver"], sway=float(setting["sway"]))
    return copy_bundle(src, out, updates={"sampling": sampling, "nfe_reduction": section}, overwrite=True)


def _fm_nfe(artifact: Artifact, cfg: FmNfeConfig, ctx: PassContext) -> Dict[str, Any]:
    from edgeflow.runtime import Voice

    src = artifact.bundle_dir
    if src is None:
        raise ConfigError("fm_nfe: no bundle yet (the fmtts bundle is exported first)")
    manifest = json.loads((Path(src) / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("family") != "fmtts":
        raise ConfigError(f"fm_nfe: {src} is a {manifest.get('family')} bundle, not an fmtts voice")
    log = print if ctx.progress else None
    voice = Voice.load(src, threads=1)
    before = {k: voice.sampling[k] for k in ("nfe", "solver", "sway")}
    reference = {"solver": cfg.reference_solver, "nfe": cfg.reference_nfe, "sway": 0.0}
    ids = calibration_ids(voice, cfg.sentences)
    rows = measure(voice, ids, cfg.candidates(), reference, ctx.seed, log)
    chosen = choose(rows, cfg.max_mcd)
    fallback = None
    if chosen is None:
        fallback = "reference"
        chosen = dict(reference, mcd=0.0, mcd_max=0.0, mel_l1=0.0)
        if log:
            log(f"    fm_nfe: no setting holds MCD <= {cfg.max_mcd} dB; keeping the reference "
                f"({reference['solver']}, NFE {reference['nfe']})")
    setting = {k: chosen[k] for k in ("nfe", "solver", "sway")}
    section = {"chosen": setting, "before": before, "reference": reference, "max_mcd": cfg.max_mcd,
               "mcd": chosen["mcd"], "fallback": fallback, "sentences": len(ids), "seed": ctx.seed,
               "metric": "mel_mcd: MCD (dB) of the log-mels vs the reference solve, same seeds, mean over sentences"}
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-fm_nfe"
    write_defaults(Path(src), out, setting, section)
    artifact.bundle_dir = out
    artifact.info["sampling"] = setting
    return dict(section, bundle=out.name, table=rows)


register_pass("fm_nfe", FmNfeConfig, _fm_nfe)

"""Flow-matching TTS training run: corpus features, deterministic batches, the loop's hooks, checkpoints.

Run folder (as the other trainers): ``recipe.json``, ``train_state.pt`` (model, optimizer, loop counters, the
parameter average), ``model.pt``, ``best.pt`` (by the validation loss; both hold the averaged weights when the
recipe sets ``ema``), ``log.csv``, ``features-*.npz`` (the feature cache).
Checkpoints every ``ckpt_every`` steps and, in addition, whenever ``ckpt_minutes`` of wall time have passed
since the last one. Exact resume: the batch of step k (utterances, padding, t, z, decoder windows, guidance
dropout, dropout masks) comes from ``(seed, k)`` alone.

Command line (until ``edgeflow train`` knows the family)::

    python -m edgeflow.train.fmtts_run RECIPE --data CORPUS --out RUN [--resume] [--steps N] [--threads T]
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from edgeflow.core.errors import CheckpointError, ConfigError, CorpusError, short_reason
from edgeflow.core.io import atomic_path, atomic_write_json
from edgeflow.data.fmtts import Item, corpus_features
from edgeflow.models.fmtts.model import FmTts
from edgeflow.models.vits.modules import sequence_mask
from edgeflow.train.fmtts import FmTtsObjective, window_frames
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop
from edgeflow.train.vits_trainer import step_seed

LOG_FIELDS = ["step", "loss", "cfm", "prior", "flow_nll", "l2", "grad_norm", "lr", "valid", "elapsed_s"]


def collate(items: List[Item], config, seed: int) -> Dict[str, Any]:
    """A padded batch with all of its step's randomness, drawn from ``seed``.

    Returns:
        ids [B, N], id_lens [B], mel [B, n_mels, F], y_mask [B, 1, F], lf0 [B, F], voiced [B, F],
        seg_start [B], t [B], z [B, n_mels, S], keep_cond [B] (S: :func:`window_frames`), dur_u [B, N] (the
        prosody flow's duration dequantization noise, uniform in [0, 1); drawn last, so the earlier draws are
        those of a batch without it).
    """
    b, n = len(items), max(len(i.ids) for i in items)
    lens = torch.tensor([i.frames for i in items], dtype=torch.long)
    f = int(lens.max())
    ids = torch.zeros(b, n, dtype=torch.long)
    mel = torch.zeros(b, config.n_mels, f)
    lf0, voiced = torch.zeros(b, f), torch.zeros(b, f)
    for k, it in enumerate(items):
        ids[k, :len(it.ids)] = torch.from_numpy(it.ids)
        mel[k, :, :it.frames] = torch.from_numpy(it.mel)
        lf0[k, :it.frames] = torch.from_numpy(it.lf0)
        voiced[k, :it.frames] = torch.from_numpy(it.voiced)
    seg = window_frames(config, f)
    gen = torch.Generator().manual_seed(seed)
    high = (lens - seg + 1).clamp_min(1)
    return {"ids": ids, "id_lens": torch.tensor([len(i.ids) for i in items], dtype=torch.long), "mel": mel,
            "y_mask": sequence_mask(lens, f).unsqueeze(1).float(), "lf0": lf0, "voiced": voiced,
            "seg_start": (torch.rand(b, generator=gen) * high).long(), "t": torch.rand(b, generator=gen),
            "z": torch.randn(b, config.n_mels, seg, generator=gen),
            "keep_cond": (torch.rand(b, generator=gen) >= config.cfg_dropout).float(),
            "dur_u": torch.rand(b, n, generator=gen)}


def feature_stats(items: List[Item]) -> Dict[str, Any]:
    """Normalization statistics of the training items (mel: global mean / std; prosody: log frames per id
    with std 1, log-f0 mean / std over voiced frames)."""
    mel = np.concatenate([i.mel.ravel() for i in items])
    lf0 = np.concatenate([i.lf0[i.voiced > 0] for i in items])
    per_id = sum(i.frames for i in items) / sum(len(i.ids) for i in items)
    return {"mel_mean": float(mel.mean()), "mel_std": float(mel.std()),
            "prosody_mean": [math.log(per_id), float(lf0.mean()) if len(lf0) else 5.0],
            "prosody_std": [1.0, float(lf0.std()) if len(lf0) > 1 else 1.0]}


class FmTtsTrainer(LoopHooks):
    """Trains an fmtts ``recipe`` on a corpus (one process; ``rank`` is always 0: no DDP yet).

    Args:
        recipe: an fmtts recipe. data_dir: corpus folder. out_dir: run folder. device: torch device name.
        progress: progress bar. items / valid_items: pre-built features (tests). log: where messages go.
    """

    rank = 0

    def __init__(self, recipe, data_dir: str | Path | None, out_dir: str | Path, device: str = "cpu",
                 progress: bool = True, items: Optional[List[Item]] = None, valid_items: Optional[List[Item]] = None,
                 log=print):
        if recipe.family != "fmtts":
            raise ConfigError(f"recipe {recipe.name}: family {recipe.family!r}, expected fmtts")
        self.recipe, self.cfg, self.log = recipe, recipe.train, log
        self.data_dir, self.out = (Path(data_dir) if data_dir else None), Path(out_dir)
        self.device = torch.device(device)
        torch.manual_seed(self.cfg.seed)
        self.model = FmTts(recipe.model).to(self.device).train()
        self.objective = FmTtsObjective()
        c = self.cfg
        settings = LoopSettings(steps=c.steps, lr=c.lr, grad_clip=c.grad_clip, lr_decay_every=c.lr_decay_every,
                                lr_decay=c.lr_decay, valid_every=c.valid_every, ckpt_every=c.ckpt_every,
                                ckpt_at_end=True, ema=c.ema, max_minutes=c.max_minutes, desc="train fmtts")
        self.loop = TrainLoop(self.model, self.objective, self, settings, progress=progress, log=log)
        self._items, self._valid_items = items, valid_items
        self._last_save = time.time()
        self._fresh_modules()                       # a bad init_fresh fails before the features are computed

    @property
    def step(self) -> int:
        return self.loop.step

    # -- data --------------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        c, m = self.cfg, self.recipe.model
        if self._items is None:
            self._items, skipped = corpus_features(self.data_dir, "train", m, self.out, c.max_seconds, self.log)
            if skipped > 0:
                self.log(f"train fmtts: {skipped} utterance(s) left out (too long, no phonemes, or fewer frames "
                         f"than phoneme ids)")
            if not self._items:
                raise CorpusError(f"{self.data_dir}: no usable training utterances")
        if self._valid_items is None and c.valid_every:
            self._valid_items = corpus_features(self.data_dir, "valid", m, self.out, c.max_seconds, self.log)[0]
        self._valid_batch = self._to_device(collate(self._valid_items[:c.valid_clips], m,
                                                    step_seed(c.seed, 0, 0, tag=8))) if self._valid_items else None

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def batch(self, step: int) -> Dict[str, Any]:
        seed = step_seed(self.cfg.seed, step)
        rng = np.random.default_rng(seed)
        bs = self.cfg.batch_size
        pick = rng.choice(len(self._items), size=bs, replace=bs > len(self._items))
        out = self._to_device(collate([self._items[i] for i in pick], self.recipe.model, seed))
        torch.manual_seed(seed)                                   # dropout of this step
        return out

    # -- validation, logging, checkpoints ------------------------------------------------------------------------
    def validate(self) -> Optional[float]:
        """CFM + prior loss on the fixed validation batch (fixed t and z), or None without one; of the averaged
        weights when the recipe keeps an average (``ema``), as those are what model.pt and best.pt hold."""
        if self._valid_batch is None:
            return None
        self.model.eval()
        try:
            with torch.no_grad(), self.loop.averaged():
                out = self.objective.terms(self.model, self._valid_batch)
        finally:
            self.model.train()
        return float(out["cfm"] + out["prior"])

    def on_valid(self, step: int, value: float, improved: bool) -> None:
        if improved:
            self._save_model(self.out / "best.pt")

    def on_step(self, step: int, loss: float, logs: Dict[str, Any], grad_norm: float,
                valid: Optional[float]) -> None:
        if step % self.cfg.log_every == 0 or valid is not None or step == self.loop.s.steps:
            row = [step, f"{loss:.6f}"] + [f"{logs.get(k, math.nan):.6f}" for k in LOG_FIELDS[2:6]]
            row += [f"{grad_norm:.4f}", f"{self.loop.opt.param_groups[0]['lr']:.3g}",
                    "" if valid is None else f"{valid:.6f}", f"{self.loop.elapsed:.1f}"]
            with open(self.out / "log.csv", "a", newline="") as f:
                csv.writer(f).writerow(row)
        minutes = self.cfg.ckpt_minutes
        due = minutes and time.time() - self._last_save > 60 * minutes
        if due and not (self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0) and step != self.loop.s.steps:
            self.save(step)

    def _meta(self) -> Dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "step": self.step, "data": str(self.data_dir),
                "best_valid": self.loop.best if math.isfinite(self.loop.best) else None,
                "train_seconds": round(self.loop.elapsed, 1), "init": getattr(self, "init_info", None)}

    def _save_model(self, path: Path) -> None:
        from edgeflow.models.checkpoint import save_model

        with self.loop.averaged():                  # the weights to use: the average, when there is one
            save_model(path, self.model, meta=self._meta())

    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def save(self, step: int) -> None:
        from edgeflow.models.checkpoint import checkpoint_dict

        state = {"model": checkpoint_dict(self.model, meta=self._meta()), "loop": self.loop.state_dict(),
                 "recipe_family": "fmtts"}
        with atomic_path(self.state_path()) as tmp:
            torch.save(state, tmp)
        self._save_model(self.out / "model.pt")
        self._last_save = time.time()

    def load_state(self) -> None:
        from edgeflow.models.checkpoint import model_from_checkpoint

        path = self.state_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt, truncated or unsafe file is a user error
            raise CheckpointError(f"{path}: cannot resume, unreadable train state ({short_reason(exc)}); "
                                  f"delete it to start over") from None
        if not isinstance(state, dict) or state.get("recipe_family") != "fmtts" or not {"model", "loop"} <= set(state):
            raise CheckpointError(f"{path}: cannot resume, not an edgeflow fmtts train state")
        self.model.load_state_dict(model_from_checkpoint(state["model"], str(path)).state_dict())
        self.loop.load_state_dict(state["loop"])
        self.init_info = (state["model"].get("meta") or {}).get("init")   # a warm start's provenance survives resumes

    def _start_log(self) -> None:
        """Start log.csv, or on resume keep only the rows up to the resumed step."""
        path, rows = self.out / "log.csv", []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and r[0].isdigit() and int(r[0]) <= self.step]
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([LOG_FIELDS, *rows])
        os.replace(tmp, path)

    def _fresh_modules(self) -> tuple:
        """The train setting ``init_fresh``, checked against the model's top-level modules."""
        fresh = self.cfg.fresh_modules
        unknown = [n for n in fresh if not isinstance(getattr(self.model, n, None), torch.nn.Module)]
        if unknown:
            raise ConfigError(f"init_fresh names no module of the model: {', '.join(unknown)} (modules: "
                              f"{', '.join(n for n, _ in self.model.named_children())})")
        return fresh

    def warm_start(self, path: str | Path) -> Dict[str, Any]:
        """Start from the weights (and feature statistics) of fmtts model.pt ``path`` instead of a random init,
        e.g. to go on training on a larger corpus of the same voice; the optimizer and step start afresh. The
        modules named by the train setting ``init_fresh`` keep their fresh init (their architecture may differ).

        Raises:
            CheckpointError: not an fmtts model.pt, or one of another architecture (outside ``init_fresh``).
        """
        from edgeflow.core.io import sha256_file
        from edgeflow.models.checkpoint import load_model

        fresh = self._fresh_modules()
        src, info = load_model(path, family="fmtts")

        def kept(state):
            return {k: v for k, v in state.items() if k.split(".", 1)[0] not in fresh}

        mine, theirs = kept(self.model.state_dict()), kept(src.state_dict())
        bad = sorted(k for k in set(mine) | set(theirs) if k not in mine or k not in theirs
                     or mine[k].shape != theirs[k].shape)
        if bad:
            raise CheckpointError(f"{path}: cannot warm-start from it, its architecture differs from the recipe's "
                                  f"({len(bad)} tensors differ, e.g. {bad[0]})")
        self.model.load_state_dict(theirs, strict=not fresh)
        self.init_info = {"path": str(path), "sha256": sha256_file(path), "step": (info.get("meta") or {}).get("step"),
                          **({"fresh": list(fresh)} if fresh else {})}
        return self.init_info

    def train(self, steps: Optional[int] = None, resume: bool = False,
              init: Optional[str | Path] = None) -> Dict[str, Any]:
        """Run until ``steps`` (default: the recipe's). ``init``: a model.pt to warm-start a new run from (default:
        the train setting ``init``; ignored when resuming). Returns a summary dict."""
        init = init if init is not None else (self.cfg.init or None)
        self.loop.s.steps = int(steps if steps is not None else self.cfg.steps)
        self.out.mkdir(parents=True, exist_ok=True)
        self._load_data()
        if resume and self.state_path().exists():
            if init:
                self.log(f"train fmtts: resuming {self.state_path()}; init {init} is ignored")
            self.load_state()
        else:
            if resume:
                self.log(f"train fmtts: no {self.state_path()} yet, starting from step 0")
            self.model.set_stats(**feature_stats(self._items))
            if init:
                got = self.warm_start(init)
                fresh = f"; {', '.join(got['fresh'])} fresh" if got.get("fresh") else ""
                self.log(f"train fmtts: warm start from {init} (step {got['step']}; its feature statistics kept{fresh})")
            self.loop.start_average()
            atomic_write_json(self.out / "recipe.json", self.recipe.to_dict())
        self._start_log()
        self._last_save = time.time()
        self.loop.last_loss = None
        t0 = time.time()
        ran = self.loop.run()
        return {"steps": self.step, "stopped": ran["stopped"], "final_loss": self.loop.last_loss,
                "best_valid": self.loop.best if math.isfinite(self.loop.best) else None,
                "train_utterances": len(self._items), "seconds": round(time.time() - t0, 2)}


"""VITS training run: transcribed corpus -> phoneme ids, deterministic batches, the loop's hooks, checkpoints.

Data: an LJSpeech-layout corpus (``edgeflow corpus build``); transcripts go through the runtime's espeak-ng
front-end (:mod:`edgeflow.text`, Piper's convention) with the model's ``phoneme_id_map``; all
sentences of an utterance are joined. Utterances longer than ``max_seconds`` or with fewer frames than
phoneme ids (MAS needs one frame per id) are left out and counted.

Exact resume: the batch of step k (utterances, padding, posterior and duration noise, decoder segment
starts) comes from ``(seed, k, rank)`` alone, and :meth:`VitsTrainer.batch` reseeds torch's global RNG
from the same triple (dropout). ``RUN/train_state.pt`` holds the generator, its optimizer, the
discriminator and its optimizer and the loop counters. Run folder as :class:`edgeflow.train.trainer.Trainer`
(recipe.json, train_state.pt, model.pt, best.pt by validation mel L1, log.csv).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from edgeflow.core.errors import CheckpointError, ConfigError, CorpusError, short_reason
from edgeflow.core.io import atomic_path, atomic_write_json
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop
from edgeflow.train.vits import VitsObjective, VitsTrainConfig, VitsTrainNet

LOG_FIELDS = ["step", "loss", "mel", "kl", "dur", "gen", "fm", "disc", "grad_norm", "lr", "valid_mel", "elapsed_s"]
Item = Tuple[np.ndarray, np.ndarray]          # (phoneme ids int64 [N], audio float32 [F * hop])


def corpus_items(data_dir: str | Path, split: str, config, max_seconds: float) -> Tuple[List[Item], int]:
    """(items, number left out) of a corpus split, audio cut to a multiple of the hop."""
    from edgeflow.audio.io import load_wav
    from edgeflow.data.ljspeech import load_split
    from edgeflow.text import check_id_map, phonemes_to_ids, phonemize

    id_map = check_id_map(config.phoneme_id_map, "model config")
    hop, items, skipped = config.hop_length, [], 0
    for utt in load_split(data_dir, split):
        phonemes = [p for sentence in phonemize(utt.text, config.espeak_voice) for p in sentence]
        ids = np.asarray(phonemes_to_ids(phonemes, id_map), dtype=np.int64)
        audio = load_wav(utt.wav, config.sample_rate)[0]
        frames = len(audio) // hop
        if frames < len(ids) or len(audio) > max_seconds * config.sample_rate or not phonemes:
            skipped += 1
            continue
        items.append((ids, np.ascontiguousarray(audio[:frames * hop], dtype=np.float32)))
    return items, skipped


def collate(items: Sequence[Item], hop: int, seg_frames: int, channels: int, seed: int) -> Dict[str, Any]:
    """A padded batch with its noise and decoder segment starts, all drawn from ``seed``.

    Returns:
        ids [B, N], id_lens [B], audio [B, F * hop], frame_lens [B], noise_q [B, C, F], noise_dur [B, 2, N],
        seg_start [B] (frames), with F = max(longest clip, seg_frames) frames.
    """
    n = max(len(i) for i, _ in items)
    f = max(max(len(a) // hop for _, a in items), seg_frames)
    ids = torch.zeros(len(items), n, dtype=torch.long)
    audio = torch.zeros(len(items), f * hop)
    for b, (i, a) in enumerate(items):
        ids[b, :len(i)] = torch.from_numpy(i)
        audio[b, :len(a)] = torch.from_numpy(a)
    frame_lens = torch.tensor([len(a) // hop for _, a in items], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    high = (frame_lens - seg_frames + 1).clamp_min(1)
    return {"ids": ids, "id_lens": torch.tensor([len(i) for i, _ in items], dtype=torch.long), "audio": audio,
            "frame_lens": frame_lens, "noise_q": torch.randn(len(items), channels, f, generator=gen),
            "noise_dur": torch.randn(len(items), 2, n, generator=gen),
            "seg_start": (torch.rand(len(items), generator=gen) * high).long()}


def step_seed(seed: int, step: int, rank: int = 0, tag: int = 7) -> int:
    """The seed of everything random in step ``step`` on ``rank`` (``tag`` 8: the validation batch)."""
    return int(np.random.default_rng([seed, step, rank, tag]).integers(2 ** 62))


class VitsTrainer(LoopHooks):
    """Trains a VITS ``recipe`` (family "vits", train settings :class:`VitsTrainConfig`) on a corpus.

    Args:
        recipe: the recipe. data_dir: corpus folder. out_dir: run folder.
        device: torch device name. progress: progress bar.
        items, valid_items: pre-built items (tests); None: read from the corpus's train / valid splits.
    """

    def __init__(self, recipe, data_dir: str | Path | None, out_dir: str | Path, device: str = "cpu",
                 progress: bool = True, items: Optional[List[Item]] = None,
                 valid_items: Optional[List[Item]] = None):
        from edgeflow.train.trainer import _dist_info

        if not isinstance(recipe.train, VitsTrainConfig):
            raise ConfigError("a vits recipe needs VitsTrainConfig train settings")
        self.recipe, self.cfg = recipe, recipe.train
        self.data_dir, self.out = (Path(data_dir) if data_dir else None), Path(out_dir)
        self.world, self.rank = _dist_info()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            if device.startswith("cuda"):
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.device = torch.device(device)
        if self.cfg.batch_size % self.world:
            raise ConfigError(f"batch_size {self.cfg.batch_size} is not divisible by {self.world} processes")
        if self.cfg.amp and self.device.type == "cuda":
            raise ConfigError("amp is not supported for vits training (the discriminator step has no grad scaler)")
        torch.manual_seed(self.cfg.seed)
        self.model, self.init_meta = self._build_model()
        self._setup(items, valid_items, progress)

    def _build_model(self):
        from edgeflow.models.base import build_model
        from edgeflow.models.checkpoint import load_model

        meta: Dict[str, Any] = {}
        if self.cfg.init:
            model, info = load_model(self.cfg.init, family="vits")
            self.recipe.model = model.config
            meta = {k: v for k, v in info.get("meta", {}).items() if k.startswith("inference_only")}
            meta["init"] = str(self.cfg.init)
        else:
            model = build_model("vits", self.recipe.model)
        if model.config.n_speakers > 1:
            raise ConfigError("multi-speaker vits training is not supported yet (single-speaker recipes only)")
        if model.config.phoneme_id_map is None:
            raise ConfigError("the vits model config has no phoneme_id_map (the recipe must ship one)")
        if meta.get("inference_only") and self.cfg.finetune != "decoder":
            raise ConfigError(f"{self.cfg.init} is inference-only ({meta.get('inference_only_reason', 'no posterior')}"
                              "): train it with --set finetune=decoder")
        return model.to(self.device).train(), meta

    def _setup(self, items, valid_items, progress: bool) -> None:
        from edgeflow.audio.mel import MelConfig
        from edgeflow.audio.mel_torch import LogMel

        c, cfg = self.model.config, self.cfg
        self.mel = LogMel(MelConfig(sample_rate=c.sample_rate, n_fft=c.filter_length, hop_length=c.hop_length,
                                    win_length=c.win_length, n_mels=c.mel_channels, fmin=c.mel_fmin,
                                    fmax=c.mel_fmax or c.sample_rate / 2)).to(self.device)
        self._freeze()
        self.net = VitsTrainNet(self.model, cfg.finetune).to(self.device)
        self.objective = VitsObjective(self.model, cfg, self.mel, self.device)
        ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids, find_unused_parameters=True)
            self.objective.disc_net = torch.nn.parallel.DistributedDataParallel(self.objective.disc, device_ids=ids)
        settings = LoopSettings(steps=cfg.steps, lr=cfg.lr, grad_clip=cfg.grad_clip, lr_decay_every=cfg.lr_decay_every,
                                lr_decay=cfg.lr_decay, valid_every=cfg.valid_every, ckpt_every=cfg.ckpt_every,
                                ckpt_at_end=True, desc="train vits")
        self.loop = TrainLoop(self.model, self.objective, self, settings, net=ddp or self.net,
                              is_main=self.rank == 0, progress=progress and self.rank == 0)
        # VITS's optimizer (AdamW, betas 0.8 / 0.99, eps 1e-9) replaces the loop's Adam; trainable params only
        self.loop.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                          betas=(0.8, 0.99), eps=1e-9)
        self._items, self._valid_items = items, valid_items

    def _freeze(self) -> None:
        """Decoder fine-tuning: everything but the decoder frozen and in eval mode (no dropout)."""
        if self.cfg.finetune == "decoder":
            for name, mod in self.model.named_children():
                if name != "dec":
                    mod.requires_grad_(False).eval()

    @property
    def step(self) -> int:
        return self.loop.step

    # -- data --------------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        if self._items is None:
            self._items, skipped = corpus_items(self.data_dir, "train", self.model.config, self.cfg.max_seconds)
            if self.rank == 0 and skipped:
                print(f"train vits: {skipped} utterance(s) left out (too long, no phonemes, or fewer frames "
                      f"than phoneme ids)")
            if not self._items:
                raise CorpusError(f"{self.data_dir}: no usable training utterances")
        if self._valid_items is None and self.cfg.valid_every:
            self._valid_items = corpus_items(self.data_dir, "valid", self.model.config, self.cfg.max_seconds)[0]
        if self._valid_items:
            self._valid_batch = self._to_device(self._collate(self._valid_items[:self.cfg.valid_clips],
                                                              step_seed(self.cfg.seed, 0, 0, tag=8)))

    def _collate(self, items, seed: int) -> Dict[str, Any]:
        c = self.model.config
        return collate(items, c.hop_length, self.objective.seg_frames, c.inter_channels, seed)

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def batch(self, step: int) -> Dict[str, Any]:
        per_rank = self.cfg.batch_size // self.world
        seed = step_seed(self.cfg.seed, step, self.rank)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(self._items), size=per_rank, replace=per_rank > len(self._items))
        out = self._to_device(self._collate([self._items[i] for i in pick], seed))
        out["lr"] = self.loop.lr_at(step)
        torch.manual_seed(seed)                                  # dropout of this step
        return out

    # -- validation, logging, checkpoints ----------------------------------------------------------------------
    def validate(self) -> Optional[float]:
        """Mel L1 (unweighted) of the decoder window on the fixed validation batch, or None without one."""
        if not getattr(self, "_valid_batch", None):
            return None
        self.model.eval()
        try:
            with torch.no_grad():
                out, _, _ = self.objective.generator_terms(self.net, self._valid_batch)
        finally:
            self.model.train()
            self._freeze()
        return float(out["mel"])

    def on_valid(self, step: int, value: float, improved: bool) -> None:
        if improved:
            self._save_model(self.out / "best.pt")

    def on_step(self, step: int, loss: float, logs: Dict[str, Any], grad_norm: float,
                valid: Optional[float]) -> None:
        if self.rank != 0 or not (step % self.cfg.log_every == 0 or valid is not None or step == self.loop.s.steps):
            return
        row = [step, f"{loss:.6f}"] + [f"{logs.get(k, math.nan):.6f}" for k in LOG_FIELDS[2:8]]
        row += [f"{grad_norm:.4f}", f"{self.loop.opt.param_groups[0]['lr']:.3g}",
                "" if valid is None else f"{valid:.6f}", f"{time.time() - self._t0:.1f}"]
        with open(self.out / "log.csv", "a", newline="") as f:
            csv.writer(f).writerow(row)

    def _meta(self) -> Dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "step": self.step, "finetune": self.cfg.finetune,
                "best_valid_mel": self.loop.best if math.isfinite(self.loop.best) else None,
                "data": str(self.data_dir), **self.init_meta}

    def _save_model(self, path: Path) -> None:
        from edgeflow.models.checkpoint import save_model

        save_model(path, self.model, meta=self._meta())

    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def save(self, step: int) -> None:
        from edgeflow.models.checkpoint import checkpoint_dict

        loop = self.loop.state_dict()
        state = {"model": checkpoint_dict(self.model, meta=self._meta()), "loop": loop,
                 "objective": self.objective.state_dict(), "recipe_family": "vits"}
        with atomic_path(self.state_path()) as tmp:
            torch.save(state, tmp)
        self._save_model(self.out / "model.pt")

    def load_state(self) -> None:
        from edgeflow.models.checkpoint import model_from_checkpoint

        path = self.state_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt, truncated or unsafe file is a user error
            raise CheckpointError(f"{path}: cannot resume, unreadable train state ({short_reason(exc)}); "
                                  f"delete it to start over") from None
        if not isinstance(state, dict) or state.get("recipe_family") != "vits" or \
                not {"model", "loop", "objective"} <= set(state):
            raise CheckpointError(f"{path}: cannot resume, not an edgeflow vits train state")
        self.model.load_state_dict(model_from_checkpoint(state["model"], str(path)).state_dict())
        self.loop.load_state_dict(state["loop"])
        self.objective.load_state_dict(state["objective"])

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

    def train(self, steps: Optional[int] = None, resume: bool = False) -> Dict[str, Any]:
        """Run until ``steps`` (default: the recipe's). Returns a summary dict."""
        self.loop.s.steps = int(steps if steps is not None else self.cfg.steps)
        self._load_data()                                        # corpus errors before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.state_path().exists():
            self.load_state()
        elif self.rank == 0:
            atomic_write_json(self.out / "recipe.json", self.recipe.to_dict())
        if self.rank == 0:
            self._start_log()
        self._t0 = time.time()
        self.loop.last_loss = None
        self.loop.run()
        if self.world > 1:
            torch.distributed.barrier()
        return {"steps": self.step, "final_loss": self.loop.last_loss,
                "best_valid_mel": self.loop.best if math.isfinite(self.loop.best) else None,
                "train_utterances": len(self._items), "seconds": round(time.time() - self._t0, 2)}

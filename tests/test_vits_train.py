"""VITS training: the objective learns (one batch overfit), exact resume, decoder fine-tuning, the CLI."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.train.recipe import load_recipe
from edgeflow.train.vits import (VitsTrainConfig, kl_loss, prior_log_likelihood, scaled_durations,
                                 slice_segments)
from edgeflow.train.vits_trainer import VitsTrainer, collate

HOP = 256


def synthetic_items(n_items=2, seed=0):
    """Phoneme ids with tones whose pitch follows the ids (learnable), 12, 14, 16 ... frames."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n_items):
        ids = rng.integers(14, 60, 5 + k).astype(np.int64)
        frames = 12 + 2 * k
        per = np.array_split(np.arange(frames * HOP), len(ids))
        audio = np.concatenate([0.3 * np.sin(2 * np.pi * (100 + 8 * i) * np.arange(len(p)) / 22050)
                                for i, p in zip(ids, per)])
        items.append((ids, audio.astype(np.float32)))
    return items


def tiny_recipe(**train):
    r = load_recipe("vits-tiny")
    r.train = r.train.replace(**{"batch_size": 2, "valid_every": 0, "ckpt_every": 0, "log_every": 1, **train})
    r.model = r.model.replace(segment_size=2048)         # 8 frames: fast steps
    return r


def read_log(run):
    with open(Path(run) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_recipe_loads_with_vits_train_settings():
    r = load_recipe("vits-tiny")
    assert isinstance(r.train, VitsTrainConfig) and r.family == "vits"
    assert r.model.phoneme_id_map["_"] == [0] and r.model.phoneme_id_map["^"] == [1]
    from edgeflow.models.vits import Vits

    assert 1e5 < sum(p.numel() for p in Vits(r.model).parameters()) < 1e6
    with pytest.raises(Exception, match="finetune"):
        r.train.replace(finetune="everything")
    for q in ("x-low", "low", "medium", "high"):
        assert load_recipe(f"vits-{q}").train.c_mel == 45.0


def test_helpers_match_their_definitions():
    torch.manual_seed(0)
    z_p, m_p, logs_p = torch.randn(2, 4, 7), torch.randn(2, 4, 3), 0.3 * torch.randn(2, 4, 3)
    ll = prior_log_likelihood(z_p, m_p, logs_p)
    ref = torch.distributions.Normal(m_p.unsqueeze(-1), torch.exp(logs_p).unsqueeze(-1)).log_prob(
        z_p.unsqueeze(2)).sum(1)
    assert torch.allclose(ll, ref, atol=1e-4)
    # KL of identical Gaussians through the sample z_p = m_p is -0.5 per element (VITS's sampled form)
    m, logs = torch.randn(1, 2, 5), torch.zeros(1, 2, 5)
    assert torch.isclose(kl_loss(m, logs, m, logs, torch.ones(1, 1, 5)), torch.tensor(-0.5))
    x = torch.arange(10.0).view(1, 1, 10).repeat(2, 1, 1)
    assert torch.equal(slice_segments(x, torch.tensor([2, 8]), 4), torch.tensor([[[2., 3, 4, 5]], [[8, 9, 0, 0]]]))
    d = scaled_durations(torch.log(torch.tensor([[[1.0, 2.0, 1.0, 9.0]]])), torch.tensor([[[1.0, 1, 1, 0]]]),
                         torch.tensor([8.0]))
    assert d.tolist() == [[[2.0, 4.0, 2.0, 0.0]]]


def test_collate_is_a_function_of_the_seed():
    items = synthetic_items(3)
    a, b = collate(items, HOP, 13, 8, 123), collate(items, HOP, 13, 8, 123)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["noise_q"], collate(items, HOP, 13, 8, 124)["noise_q"])
    assert a["audio"].shape == (3, 16 * HOP) and a["ids"].shape == (3, 7)
    assert ((a["seg_start"] >= 0) & (a["seg_start"] <= (a["frame_lens"] - 13).clamp_min(0))).all()
    assert a["seg_start"][0] == 0 and collate(items, HOP, 40, 8, 1)["audio"].shape == (3, 40 * HOP)


@pytest.mark.parametrize("mode", ["", "decoder"])
def test_training_forward_aligns_every_frame(tmp_path, mode):
    items = synthetic_items(3)
    tr = VitsTrainer(tiny_recipe(finetune=mode), None, tmp_path, progress=False, items=items, valid_items=[])
    tr._load_data()
    b = tr.batch(0)
    out, y, y_hat = tr.objective.generator_terms(tr.net, b)
    d = out["durations"]
    assert torch.equal(d.sum(1), b["frame_lens"].to(d.dtype))
    assert y.shape == y_hat.shape == (len(b["ids"]), 1, 2048)
    if not mode:                                   # MAS: every phoneme id at least one frame, padding none
        valid = torch.arange(d.shape[1]) < b["id_lens"].unsqueeze(1)
        assert (d[valid] >= 1).all() and (d[~valid] == 0).all()
        assert torch.isfinite(out["kl"]) and torch.isfinite(out["dur"])


def test_loss_falls_when_overfitting_one_batch(tmp_path):
    torch.set_num_threads(1)
    items = synthetic_items(2)
    tr = VitsTrainer(tiny_recipe(lr=1e-3), None, tmp_path, progress=False, items=items, valid_items=[])
    tr.batch = lambda step, _b=tr.batch: _b(0)          # the same batch (and noise) every step
    tr.train(steps=30)
    rows = read_log(tmp_path)
    assert len(rows) == 30
    first, last = rows[:3], rows[-3:]
    mean = lambda rs, k: float(np.mean([float(r[k]) for r in rs]))  # noqa: E731
    assert mean(last, "mel") < 0.6 * mean(first, "mel")
    assert mean(last, "loss") < mean(first, "loss")
    assert np.isfinite([float(r["disc"]) for r in rows]).all()


def _weights(tr):
    sd = {f"g.{k}": v.clone() for k, v in tr.model.state_dict().items()}
    sd.update({f"d.{k}": v.clone() for k, v in tr.objective.disc.state_dict().items()})
    return sd


def test_exact_resume(tmp_path):
    torch.set_num_threads(1)
    items = synthetic_items(3)
    straight = VitsTrainer(tiny_recipe(), None, tmp_path / "a", progress=False, items=items, valid_items=[])
    straight.train(steps=6)
    first = VitsTrainer(tiny_recipe(ckpt_every=3), None, tmp_path / "b", progress=False, items=items,
                        valid_items=[])
    first.train(steps=3)
    torch.manual_seed(999)                              # resume must not depend on the process's RNG
    resumed = VitsTrainer(tiny_recipe(ckpt_every=3), None, tmp_path / "b", progress=False, items=items,
                          valid_items=[])
    resumed.train(steps=6, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert [r["loss"] for r in read_log(tmp_path / "a")] == [r["loss"] for r in read_log(tmp_path / "b")]
    assert not all(torch.equal(a[k], v) for k, v in _weights(first).items() if k.startswith("g."))


def test_decoder_finetune_trains_only_the_decoder(tmp_path):
    torch.set_num_threads(1)
    items = synthetic_items(2)
    tr = VitsTrainer(tiny_recipe(finetune="decoder"), None, tmp_path, progress=False, items=items,
                     valid_items=items)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train(steps=2)
    after = tr.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"dec"}
    assert np.isfinite(float(read_log(tmp_path)[-1]["mel"]))
    from edgeflow.models.checkpoint import load_model

    model, info = load_model(tmp_path / "model.pt", family="vits")
    assert info["meta"]["finetune"] == "decoder" and info["meta"]["step"] == 2


def test_inference_only_init_needs_decoder_mode(tmp_path):
    from edgeflow.core.errors import ConfigError
    from edgeflow.models.checkpoint import save_model
    from edgeflow.models.vits import Vits

    r = load_recipe("vits-tiny")
    save_model(tmp_path / "voice.pt", Vits(r.model), meta={"inference_only": True,
                                                         "inference_only_reason": "no posterior encoder"})
    with pytest.raises(ConfigError, match="finetune=decoder"):
        VitsTrainer(tiny_recipe(init=str(tmp_path / "voice.pt")), None, tmp_path / "run", progress=False,
                    items=synthetic_items(2), valid_items=[])


@pytest.mark.slow
def test_train_cli_on_a_tiny_corpus(tmp_path):
    """`edgeflow corpus build` then `edgeflow train vits-tiny` (espeak-ng voices needed)."""
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeflow"]
    built = subprocess.run(cmd + ["corpus", "build", "--out", str(corpus), "--minutes", "0.3", "--sources",
                                  "flite_slt", "--no-progress"], capture_output=True, text=True)
    if built.returncode:
        pytest.skip(f"corpus build unavailable here: {built.stderr.strip()[-200:]}")
    res = subprocess.run(cmd + ["train", "vits-tiny", "--data", str(corpus), "--out", str(run), "--steps", "4",
                                "--set", "batch_size=2", "--set", "valid_every=2", "--no-progress",
                                "--threads", "1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["train_utterances"] > 0
    assert (run / "model.pt").is_file() and (run / "best.pt").is_file() and (run / "train_state.pt").is_file()
    bad = subprocess.run(cmd + ["train", "vits-tiny", "--data", str(corpus), "--out", str(tmp_path / "r2"),
                                "--set", "finetune=all"], capture_output=True, text=True)
    assert bad.returncode == 2 and "finetune" in bad.stderr and "Traceback" not in bad.stderr

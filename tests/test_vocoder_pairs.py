"""Vocoder training pairs (:mod:`edgeflow.pipeline_pairs`, ``edgeflow corpus pairs``) and the vocos trainer's use of
them (:class:`edgeflow.train.data.PairSampler`, ``pairs`` / ``pairs_fraction``)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from edgeflow.audio.mel_torch import LogMel
from edgeflow.core.errors import CorpusError, InputError
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.models.checkpoint import save_model
from edgeflow.pipeline_pairs import corpus_texts, write_vocoder_pairs
from edgeflow.train.data import MixedSampler, PairSampler, SegmentSampler
from edgeflow.train.recipe import load_recipe
from edgeflow.train.trainer import Trainer
from edgeflow.train.vocos import ReconstructionObjective, VocosTrainConfig

from test_fmtts_export import MEL, tiny_fmtts, tiny_vocoder
from test_train import make_corpus, read_log

HOP = 4


def ramp_pair(frames: int):
    """A mel whose every band holds the frame index, and audio whose every sample holds its frame's index."""
    mel = np.tile(np.arange(frames, dtype=np.float32), (3, 1))
    return mel, np.repeat(np.arange(frames, dtype=np.float32), HOP)


def test_pair_segments_are_aligned_and_short_clips_padded():
    pairs = [ramp_pair(50), ramp_pair(7)]
    sampler = PairSampler([m for m, _ in pairs], [a for _, a in pairs], segment=10 * HOP, hop=HOP, seed=3,
                          pad_value=-11.5)
    audio, mel = sampler.batch(step=5, batch_size=16)
    assert audio.shape == (16, 40) and mel.shape == (16, 3, 10)
    saw_short = saw_long = False
    for a, m in zip(audio, mel):
        if (m[0] == -11.5).any():                      # the 7-frame clip: whole, then padding
            saw_short = True
            assert np.array_equal(m[0, :7], np.arange(7)) and (m[:, 7:] == -11.5).all() and (a[7 * HOP:] == 0).all()
        else:
            saw_long = True
            assert np.array_equal(m[0], m[0, 0] + np.arange(10))
        n = int((m[0] != -11.5).sum())
        assert np.array_equal(a[:n * HOP], np.repeat(m[0, :n], HOP))   # sample k*HOP.. belongs to frame k
    assert saw_short and saw_long
    again = sampler.batch(step=5, batch_size=16)
    assert np.array_equal(again[0], audio) and not np.array_equal(sampler.batch(step=6, batch_size=16)[0], audio)


def test_pair_checks():
    mel, audio = ramp_pair(10)
    with pytest.raises(CorpusError, match="do not match"):
        PairSampler([mel], [audio[:-1]], segment=8, hop=HOP)
    with pytest.raises(CorpusError, match="multiple of the hop"):
        PairSampler([mel], [audio], segment=9, hop=HOP)
    with pytest.raises(CorpusError, match="pairs_fraction"):
        MixedSampler(SegmentSampler([audio], 8), PairSampler([mel], [audio], 8, HOP), 0.0)


def test_mixed_batch_puts_the_pairs_last():
    mel, audio = ramp_pair(40)
    rec = SegmentSampler([np.full(400, 7.0, np.float32)], 8 * HOP)
    mixed = MixedSampler(rec, PairSampler([mel], [audio], 8 * HOP, HOP), 0.25)
    a, m = mixed.batch(0, 8)
    assert a.shape == (8, 32) and m.shape == (2, 3, 8)
    assert (a[:6] == 7.0).all() and np.array_equal(a[6:, ::HOP], m[:, 0])


def test_objective_uses_the_given_mels_for_the_pair_rows():
    torch.manual_seed(0)
    mel = LogMel(MEL)
    model = tiny_vocoder()
    obj = ReconstructionObjective(mel, VocosTrainConfig())
    audio = 0.1 * torch.randn(3, 32 * MEL.hop_length)
    plain, _ = obj.loss(model, audio)
    own, _ = obj.loss(model, (audio, mel(audio)[2:]))
    assert torch.allclose(plain, own)
    other, _ = obj.loss(model, (audio, mel(audio)[2:] - 2.0))
    assert abs(float(other.detach()) - float(plain.detach())) > 1e-4


@pytest.fixture(scope="module")
def pairs_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    export_fmtts_bundle(tiny_fmtts(), tiny_vocoder(), root / "voice")
    save_model(root / "teacher.pt", tiny_vocoder())
    corpus = make_corpus(root / "corpus", n=10, seconds=0.5)
    info = write_vocoder_pairs([root / "voice"], root / "teacher.pt", corpus_texts(corpus, "train")[:3],
                               root / "out", seeds=(0, 1), progress=False)
    return root, corpus, info


def test_pairs_are_the_voices_mels_and_the_teachers_audio(pairs_setup):
    from edgeflow.runtime import Voice

    root, corpus, info = pairs_setup
    out = root / "out"
    meta = json.loads((out / "pairs.json").read_text())
    from edgeflow.core.io import current_umask

    assert (out.stat().st_mode & 0o777) == 0o777 & ~current_umask()          # the folder keeps the user's umask
    assert meta["pairs"] == info["pairs"] == 6 and meta["seeds"] == [0, 1] and meta["hop_length"] == MEL.hop_length
    mels = sorted(out.glob("*.mel.npy"))
    assert len(mels) == 6 and len(list(out.glob("*.wav"))) == 6
    voice = Voice.load(root / "voice", threads=1)
    text = corpus_texts(corpus, "train")[1]
    expect = voice.mel_ids(next(iter(voice.sentence_ids(text))), seed=1)
    got = np.load(out / "v0_s1_t0001_0.mel.npy")
    np.testing.assert_allclose(got, expect, atol=1e-5)   # the same graphs; thread counts may differ
    audio, sr = sf.read(str(out / "v0_s1_t0001_0.wav"), dtype="float32")
    assert sr == MEL.sample_rate and len(audio) == got.shape[1] * MEL.hop_length
    with torch.no_grad():
        ref = tiny_vocoder()(torch.from_numpy(got[None])).reshape(-1).numpy()
    np.testing.assert_allclose(audio, np.clip(ref, -1, 1), atol=1e-6)
    with pytest.raises(InputError, match="not empty"):
        write_vocoder_pairs([root / "voice"], root / "teacher.pt", ["Hi."], out, progress=False)


def test_vocos_trains_on_recordings_and_pairs(pairs_setup, tmp_path):
    root, corpus, _ = pairs_setup
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "edgeflow" / "recipes" / "vocos-small.json")
    data = recipe.to_dict()
    data["model"] = {"mel": dataclasses.asdict(MEL), "net": {"channels": 16, "hidden": 32, "layers": 2,
                                                             "kernel_size": 7}}
    data["train"].update({"batch_size": 4, "segment_length": 16 * MEL.hop_length, "valid_every": 0,
                          "valid_clips": 2, "valid_segment": 16 * MEL.hop_length, "log_every": 1, "ckpt_every": 0,
                          "pairs": str(root / "out"), "pairs_fraction": 0.5})
    (tmp_path / "r.json").write_text(json.dumps(data))
    trainer = Trainer(load_recipe(tmp_path / "r.json"), corpus, tmp_path / "run", device="cpu", progress=False)
    seen = []
    batch = trainer.batch
    trainer.batch = lambda step: seen.append(batch(step)) or seen[-1]
    assert trainer.train(steps=3)["steps"] == 3
    assert all(isinstance(b, tuple) and b[0].shape[0] == 4 and b[1].shape[0] == 2 for b in seen)
    assert np.isfinite([float(r["loss"]) for r in read_log(tmp_path / "run" / "log.csv")]).all()


def test_cli_pairs_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "corpus", "pairs", "--voice", str(tmp_path / "none"),
                           "--teacher", str(tmp_path / "none.pt"), "--data", str(tmp_path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_adversarial_terms_train_the_discriminator_only_in_its_own_step():
    torch.manual_seed(0)
    mel = LogMel(MEL)
    model = tiny_vocoder().train()
    cfg = VocosTrainConfig(adv_weight=1.0, fm_weight=2.0, disc_rows=2, disc_segment=1024)
    obj = ReconstructionObjective(mel, cfg)
    plain = ReconstructionObjective(mel, VocosTrainConfig())
    audio = 0.1 * torch.randn(3, 32 * MEL.hop_length)
    before = {k: v.clone() for k, v in obj.disc.state_dict().items()}
    loss, logs = obj.loss(model, audio)
    after = {k: v.clone() for k, v in obj.disc.state_dict().items()}
    assert {"d_loss", "g_adv", "g_fm"} <= set(logs) and set(plain.loss(model, audio)[1]) == {"mel_l1", "mr_stft"}
    assert any(not torch.equal(before[k], after[k]) for k in before)          # the discriminator stepped
    expect = (cfg.mel_weight * logs["mel_l1"] + cfg.stft_weight * logs["mr_stft"] + logs["g_adv"]
              + 2.0 * logs["g_fm"])
    assert abs(float(loss.detach()) - expect) < 1e-3 * expect
    loss.backward()
    assert all(p.grad is None for p in obj.disc.parameters())                 # the vocoder's loss leaves D alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    assert set(obj.loss(model, audio)[1]) == {"mel_l1", "mr_stft"}            # validation: no GAN step
    fresh = ReconstructionObjective(mel, cfg)
    fresh.load_state_dict(obj.state_dict())
    assert all(torch.equal(v, fresh.disc.state_dict()[k]) for k, v in obj.disc.state_dict().items())
    fresh.load_state_dict({})                                                 # a state saved without a discriminator
    with pytest.raises(ValueError, match="adv_weight"):
        VocosTrainConfig(adv_weight=-1.0)


def test_a_resumed_gan_run_restores_its_discriminator(tmp_path):
    corpus = make_corpus(tmp_path / "c", n=10, seconds=0.5)
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "edgeflow" / "recipes" / "vocos-small.json")
    data = recipe.to_dict()
    data["model"]["net"] = {"channels": 16, "hidden": 32, "layers": 2, "kernel_size": 7}
    data["train"].update({"batch_size": 2, "segment_length": 4096, "valid_every": 0, "valid_clips": 2,
                          "valid_segment": 4096, "log_every": 1, "ckpt_every": 2, "adv_weight": 1.0,
                          "disc_rows": 1, "disc_segment": 2048})
    (tmp_path / "r.json").write_text(json.dumps(data))
    first = Trainer(load_recipe(tmp_path / "r.json"), corpus, tmp_path / "run", device="cpu", progress=False)
    first.train(steps=2)
    saved = {k: v.clone() for k, v in first.objective.disc.state_dict().items()}
    second = Trainer(load_recipe(tmp_path / "r.json"), corpus, tmp_path / "run", device="cpu", progress=False)
    second.load_state()
    assert all(torch.equal(v, second.objective.disc.state_dict()[k]) for k, v in saved.items())
    assert second.train(steps=3, resume=True)["steps"] == 3


def test_pairs_refuse_a_bundle_that_is_not_a_voice(pairs_setup, tmp_path):
    from edgeflow.core.errors import BundleError
    from edgeflow.export.onnx_export import export_bundle

    root, corpus, _ = pairs_setup
    export_bundle(tiny_vocoder(), tmp_path / "vocoder")
    with pytest.raises(BundleError, match="not a text-to-speech voice"):
        write_vocoder_pairs([tmp_path / "vocoder"], root / "teacher.pt", ["Hi."], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()

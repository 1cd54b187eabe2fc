"""The spectrogram discriminator, the least-squares GAN losses and adversarial generator distillation."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.audio.mel_torch import LogMel
from edgeflow.train.discriminator import (MRD_RESOLUTIONS, MultiResolutionDiscriminator, discriminator_loss,
                                             feature_matching_loss, generator_adv_loss)
from edgeflow.compress.generator import prune_generator
from edgeflow.compress.generator_distill import (GeneratorDistillSettings, GeneratorWindows, _Objective,
                                                 distill_generator)
from edgeflow.models.hifigan import V3, Generator


def _audio(n: int = 2, t: int = 4096, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(n, t, generator=torch.Generator().manual_seed(seed))


def test_discriminator_shapes_and_resolutions_that_fit():
    torch.manual_seed(0)
    disc = MultiResolutionDiscriminator(channels=8)
    outs = disc(_audio())
    assert len(outs) == len(MRD_RESOLUTIONS) == 3
    for (score, feats), (n_fft, hop, _) in zip(outs, MRD_RESOLUTIONS):
        frames, bins = 4096 // hop + 1, n_fft // 2 + 1
        assert len(feats) == 5 and feats[0].shape == (2, 8, frames, bins)
        assert score.shape[:3] == (2, 1, frames) and score.shape[3] == feats[-1].shape[3] < bins
    assert len(disc(_audio(t=1500))) == 2                       # the 2048-point resolution does not fit
    with pytest.raises(ValueError, match="shorter"):
        disc(_audio(t=400))


def _outs(values, feats):
    return [(torch.full((1, 1, 2, 3), float(v)), [f.clone() for f in feats]) for v in values]


def test_least_squares_losses():
    feats = [torch.ones(1, 2, 2, 3), torch.zeros(1, 2, 2, 3)]
    assert float(discriminator_loss(_outs([1, 1], feats), _outs([0, 0], feats))) == 0.0
    # real 0.5 / fake 0.5: (0.25 + 0.25) per sub-discriminator, averaged
    assert float(discriminator_loss(_outs([0.5, 0.5], feats), _outs([0.5, 0.5], feats))) == pytest.approx(0.5)
    assert float(generator_adv_loss(_outs([1, 0], feats))) == pytest.approx(0.5)   # (0 + 1) / 2
    real = _outs([0], feats)
    fake = _outs([0], [f + 2.0 for f in feats])
    fake[0][1][0].requires_grad_(True)
    real[0][1][0].requires_grad_(True)
    fm = feature_matching_loss(real, fake)
    assert float(fm.detach()) == pytest.approx(2.0)
    fm.backward()
    assert real[0][1][0].grad is None and fake[0][1][0].grad is not None       # real maps are constants


def _setup():
    torch.manual_seed(0)
    teacher = Generator(V3.replace(in_channels=8, upsample_initial_channel=32)).eval()
    x = torch.randn(12, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = teacher(x)
    train, valid = GeneratorWindows(x, y).split(0.25)
    student, _ = prune_generator(teacher, 0.5, inputs=[train.cond])
    return train, valid, student


def test_adversarial_terms_start_at_adv_start_and_train_the_discriminator():
    train, _, student = _setup()
    s = GeneratorDistillSettings(batch=3, adv_weight=0.5, fm_weight=2.0, adv_start=1, disc_channels=8)
    obj = _Objective(LogMel(MelConfig()), s)
    before = copy.deepcopy(obj.adversary.disc.state_dict())
    batch = train.take(torch.arange(3))
    loss0, logs0 = obj.loss(student, batch)
    assert set(logs0) == {"mel", "stft"}
    assert float(loss0.detach()) == pytest.approx(logs0["mel"] + logs0["stft"], rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in obj.adversary.disc.state_dict().items())
    loss1, logs1 = obj.loss(student, batch)
    assert {"disc", "adv", "fm"} <= set(logs1)
    assert float(loss1.detach()) == pytest.approx(logs1["mel"] + logs1["stft"] + 0.5 * logs1["adv"] + 2.0 * logs1["fm"],
                                         rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in obj.adversary.disc.state_dict().items())
    # the generator's loss reaches the student through the discriminator, which it leaves without gradients
    student.zero_grad()
    loss1.backward()
    assert all(p.grad is None for p in obj.adversary.disc.parameters())
    spectral = _Objective(LogMel(MelConfig()), GeneratorDistillSettings(batch=3))
    plain = copy.deepcopy(student)
    plain.zero_grad()
    spectral.loss(plain, batch)[0].backward()
    g_adv = torch.cat([p.grad.flatten() for p in student.parameters()])
    g_plain = torch.cat([p.grad.flatten() for p in plain.parameters()])
    assert not torch.allclose(g_adv, g_plain)
    # without feature matching the teacher's maps are not computed and no "fm" term is logged
    no_fm = _Objective(LogMel(MelConfig()), s.replace(fm_weight=0.0, adv_start=0))
    loss2, logs2 = no_fm.loss(student, batch)
    assert set(logs2) == {"mel", "stft", "disc", "adv"}
    assert float(loss2.detach()) == pytest.approx(logs2["mel"] + logs2["stft"] + 0.5 * logs2["adv"], rel=1e-5)


def test_adversarial_distillation_is_deterministic_and_keeps_last_or_best():
    train, valid, student = _setup()
    logmel = LogMel(MelConfig())
    s = GeneratorDistillSettings(steps=4, valid_every=2, batch=3, lr=3e-3, adv_weight=1.0, fm_weight=1.0,
                                 disc_channels=8, keep="last")
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    ra = distill_generator(a, train, valid, logmel, s, progress=False, log=None)
    rb = distill_generator(b, train, valid, logmel, s, progress=False, log=None)
    assert ra["valid_curve"] == rb["valid_curve"] and ra["kept"] == "last" and ra["steps"] == 4
    assert set(ra["terms_last"]) == {"mel", "stft", "disc", "adv", "fm"} and ra["terms_last"] == rb["terms_last"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # "last" holds the final weights: its validation value is the curve's last one, best or not
    last = _Objective(logmel, s).distance(a, valid)
    assert last == pytest.approx(ra["valid_curve"][-1][1], rel=1e-4)
    c = copy.deepcopy(student)
    rc = distill_generator(c, train, valid, logmel, s.replace(keep="best"), progress=False, log=None)
    assert rc["kept"] == "best"
    assert _Objective(logmel, s).distance(c, valid) == pytest.approx(rc["valid_best"], rel=1e-4)


@pytest.mark.parametrize("bad, match", [({"fm_weight": 1.0}, "needs a discriminator"),
                                        ({"adv_weight": -1.0}, ">= 0"), ({"keep": "mean"}, "keep"),
                                        ({"adv_weight": 1.0, "disc_channels": 0}, "disc_channels")])
def test_adversarial_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        GeneratorDistillSettings(**bad)

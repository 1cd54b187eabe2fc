"""Resume of the window distillations (edgeflow.compress.window_loop.WindowState): a run stopped and resumed
ends where an uninterrupted one does, discriminator included; a state of other settings is not resumed."""

from __future__ import annotations

import copy

import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.audio.mel_torch import LogMel
from edgeflow.compress.generator_distill import GeneratorDistillSettings, distill_generator
from tests.test_discriminator import _setup as _windows_and_student


def _setup():
    train, valid, student = _windows_and_student()          # a pruned V3 student, 9 + 3 teacher windows
    return student, train, valid


def _run(student, train, valid, steps, **kw):
    settings = GeneratorDistillSettings(steps=steps, valid_every=2, batch=3, lr=1e-3, adv_weight=0.5, fm_weight=1.0,
                                        adv_start=1, disc_channels=4, keep="last")
    return distill_generator(student, train, valid, LogMel(MelConfig()), settings, progress=False, log=None, **kw)


def test_stopped_and_resumed_ends_where_one_run_does(tmp_path):
    student, train, valid = _setup()
    whole = copy.deepcopy(student)
    s_whole = _run(whole, train, valid, 5)
    state = tmp_path / "state.pt"
    part = copy.deepcopy(student)
    first = _run(part, train, valid, 3, state_path=state, state_key="k")
    assert state.is_file() and first["steps"] == 3 and first["resumed_at"] == 0
    again = copy.deepcopy(student)                                   # a new process: fresh weights, same key
    s_again = _run(again, train, valid, 5, state_path=state, state_key="k")
    assert s_again["resumed_at"] == 3 and s_again["steps"] == 5
    stop = [r for r in s_again["valid_curve"] if r[0] == 3]                 # the end-of-run check at the stop
    assert [r for r in s_again["valid_curve"] if r[0] != 3] == s_whole["valid_curve"] and len(stop) == 1
    for (n, a), b in zip(whole.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), n
    assert "adv" in s_again["terms_last"] and "disc" in s_again["terms_last"]


def test_state_of_other_settings_is_not_resumed(tmp_path):
    student, train, valid = _setup()
    state = tmp_path / "state.pt"
    _run(copy.deepcopy(student), train, valid, 2, state_path=state, state_key="one")
    other = _run(copy.deepcopy(student), train, valid, 2, state_path=state, state_key="two")
    assert other["resumed_at"] == 0 and other["valid_curve"][0][0] == 0
    done = _run(copy.deepcopy(student), train, valid, 2, state_path=state, state_key="two")
    assert done["resumed_at"] == 2 and done["valid_curve"][-1][0] == 2   # nothing left to train: no step taken
    state.write_bytes(b"not a torch file")
    assert _run(copy.deepcopy(student), train, valid, 2, state_path=state, state_key="two")["resumed_at"] == 0


def test_pass_state_key_follows_options_and_weights(tmp_path):
    from edgeflow.passes.base import PassContext, make_config
    from edgeflow.passes.tts_compress import distill_state

    student, _, _ = _setup()
    ctx = PassContext(work_dir=tmp_path)
    cfg = make_config("tts_istft", {})
    path, key = distill_state(ctx, "tts_istft", cfg, student)
    assert path.parent == tmp_path and path.name == "tts_istft-distill-state.pt"
    assert distill_state(ctx, "tts_istft", cfg.replace(max_minutes=500, steps=10**6), student)[1] == key
    assert distill_state(ctx, "tts_istft", cfg.replace(adv_weight=1.0), student)[1] != key
    moved = copy.deepcopy(student)
    with torch.no_grad():
        next(moved.parameters()).add_(1e-3)
    assert distill_state(ctx, "tts_istft", cfg, moved)[1] != key

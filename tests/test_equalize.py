"""Cross-layer equalization of HiFi-GAN generators (edgeflow/compress/generator_equalize.py) and the ``equalize``
pass: the same audio in float, balanced channel peaks, less fake-INT8 error where channels were unbalanced; the pass
on a vocoder and its refusal for other families."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeflow.compress.generator_equalize import _apply, _stage, equalize_generator
from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from tests.test_generator_prune import CASES, _inputs, _scaled_gen
from tests.test_hifigan_prune import MEL, _model, wavs  # noqa: F401  (fixture)


def _unbalance(gen, seed: int = 3, spread: float = 100.0) -> None:
    """Scale every stage's stream channels by factors spread ** (k / (C - 1)), k = 0..C-1 in a seeded order (exact,
    the inverse of an equalization), so that one per-tensor scale fits them badly."""
    remove_weight_norm(gen)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(len(gen.ups)):
            writers, readers, _ = _stage(gen, i)
            c = gen.ups[i].weight.shape[1]
            k = torch.randperm(c, generator=g).to(gen.ups[i].weight.dtype)
            _apply(writers, readers, spread ** (k / (c - 1)))


def _fake_int8_error(gen, inputs) -> float:
    """Relative RMS error of the waveform before tanh (conv_post's output, kept float as the recipes keep it) with
    every other conv's input and output fake-quantized (uint8, one scale per tensor, ranges from the same inputs)
    against float."""
    convs = [m for m in gen.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m is not gen.conv_post]
    lo = {id(m): 0.0 for m in convs}
    hi = dict(lo)

    def seen(m, t):
        lo[id(m)], hi[id(m)] = min(lo[id(m)], float(t.min())), max(hi[id(m)], float(t.max()))

    def fq(m, t):
        scale = (hi[id(m)] - lo[id(m)]) / 255.0 or 1.0
        zp = round(-lo[id(m)] / scale)
        return (torch.clamp(torch.round(t / scale) + zp, 0, 255) - zp) * scale

    post = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen(m, o)) for m in convs]
    hooks.append(gen.conv_post.register_forward_hook(lambda m, i, o: post.append(o)))
    with torch.no_grad():
        gen(*inputs)
    hooks += [m.register_forward_pre_hook(lambda m, i: (fq(m, i[0]),)) for m in convs]
    hooks += [m.register_forward_hook(lambda m, i, o: fq(m, o)) for m in convs]
    with torch.no_grad():
        gen(*inputs)
    for h in hooks:
        h.remove()
    ref, out = post
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("name", list(CASES))
def test_same_audio_and_balanced_streams(name):
    """Type-1 (V1, with a speaker input) and type-2 (V3) resblocks: the output is unchanged, each stage's peak
    spread shrinks (alpha 1: to about 1), alpha 0 changes no weight."""
    gen, inputs = _scaled_gen(name), _inputs(name)
    _unbalance(gen)
    with torch.no_grad():
        ref = gen(*inputs)
    info = equalize_generator(gen, [inputs], alpha=1.0)
    with torch.no_grad():
        out = gen(*inputs)
    assert float((out - ref).abs().max()) < 1e-9 * max(1.0, float(ref.abs().max()))
    for before, after in info["stages"].values():
        assert before > 5.0 and after < 1.5, info["stages"]
    still = _scaled_gen(name)
    _unbalance(still)
    w0 = copy.deepcopy(still.state_dict())
    equalize_generator(still, [inputs], alpha=0.0)
    assert all(torch.allclose(w0[k], v) for k, v in still.state_dict().items())


@pytest.mark.parametrize("name", list(CASES))
def test_less_int8_error_on_unbalanced_channels(name):
    """The reason for the pass: with per-tensor uint8 activations, an unbalanced generator loses far more than the
    same function equalized."""
    gen, inputs = _scaled_gen(name, gain=0.5, seed=2), _inputs(name, seed=4)
    _unbalance(gen, spread=300.0)
    before = _fake_int8_error(gen, inputs)
    equalize_generator(gen, [inputs], alpha=0.5)
    after = _fake_int8_error(gen, inputs)
    assert after < 0.6 * before, (before, after)


def test_bad_options():
    gen, inputs = _scaled_gen("v3"), _inputs("v3")
    with pytest.raises(ConfigError, match="alpha"):
        equalize_generator(gen, [inputs], alpha=1.5)
    with pytest.raises(ConfigError, match="inputs"):
        equalize_generator(gen, [], alpha=0.5)


def test_pass_on_a_vocoder_keeps_the_audio_and_the_reference(wavs, tmp_path):  # noqa: F811
    """The pass equalizes a copy (the reference model is untouched), reports the spreads, changes no audio."""
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    model = _model()
    ref_state = copy.deepcopy(model.state_dict())
    art = Artifact(model=model, reference=model)
    record = apply_pass(art, make_config("equalize", {"data": str(wavs), "windows": 8, "window_frames": 16}),
                        PassContext(work_dir=tmp_path, progress=False, seed=0))
    d = record["details"]
    assert art.model is not model and set(d["stages"]) == {"stage0", "stage1", "stage2"}
    assert d["max_rel_error"] < 1e-4 and "8 mel windows" in d["inputs"]
    assert all(torch.equal(ref_state[k], v) for k, v in model.state_dict().items())
    mel = torch.randn(1, MEL.n_mels, 13) - 4.0
    with torch.no_grad():
        a, b = model.synthesize(mel), art.model.synthesize(mel)
    assert float((a - b).abs().max()) < 1e-4 * max(1e-3, float(a.abs().max()))
    assert not torch.equal(art.model.generator.ups[0].weight, model.generator.ups[0].weight.detach())


def test_pass_options_and_refusal():
    from edgeflow.models.family import get_family
    from edgeflow.passes.base import make_config

    cfg = make_config("equalize", {})
    assert cfg.refusal(get_family("hifigan")) is None and cfg.refusal(get_family("vits")) is None
    why = cfg.refusal(get_family("waveflow"))
    assert why and "waveflow" in why and "\n" not in why
    assert cfg.changes_output is False
    with pytest.raises(ConfigError, match="alpha"):
        make_config("equalize", {"alpha": -0.1})

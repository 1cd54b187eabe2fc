"""Structured pruning of HiFi-GAN generators (edgeflow.compress.generator) and the widths in GeneratorConfig."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeflow.compress.generator import channel_scores, prune_generator
from edgeflow.compress.generator_distill import GeneratorDistillSettings, GeneratorWindows, distill_generator
from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.checkpoint import has_weight_norm, load_model, save_model
from edgeflow.models.hifigan import V1, V3, Generator, GeneratorConfig, channel_groups, decoder_flops_per_frame
from tests.test_vits_model import randomized, tiny_config
from edgeflow.models import vits

CASES = {
    "v3": V3.replace(in_channels=8, upsample_initial_channel=32),
    "v1-gin": V1.replace(in_channels=8, upsample_initial_channel=32, gin_channels=4, upsample_rates=[4, 4],
                         upsample_kernel_sizes=[8, 8]),
}


def _gen(name: str, seed: int = 0, folded: bool = False) -> Generator:
    torch.manual_seed(seed)
    g = Generator(CASES[name]).double()
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    if folded:
        remove_weight_norm(g)
    return g.eval()


def _scaled_gen(name: str, gain: float = 2.0, seed: int = 0) -> Generator:
    """Weights N(0, gain^2 / fan_in), small biases: the signal reaches the output and depends on the input (the
    N(0, 0.3) init of :func:`_gen` gives nearly the same output for every input)."""
    torch.manual_seed(seed)
    g = Generator(CASES[name]).double()
    with torch.no_grad():
        for n, p in g.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, gain / p[0].numel() ** 0.5)
            else:
                p.normal_(0.0, 0.05 if "bias" in n else 0.3)
    return g.eval()


def _inputs(name: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 9, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64) if CASES[name].gin_channels else None
    return x, g


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("folded", [False, True])
def test_keep_all_is_identical(name, folded):
    gen = _gen(name, folded=folded)
    x, g = _inputs(name)
    small, info = prune_generator(gen, 0.0, inputs=[(x, g)])
    assert info["params"][0] == info["params"][1]
    assert small.config.widths() == gen.config.widths()
    assert has_weight_norm(small) == (not folded)
    with torch.no_grad():
        assert torch.allclose(small(x, g), gen(x, g), rtol=0, atol=1e-12)


def _kill(gen: Generator, group: dict, channels) -> None:
    """Make ``channels`` of a group exactly zero everywhere: zero what writes them (weights and bias)."""
    mods = dict(gen.named_modules())
    remove_weight_norm(gen)               # a zero row under weight norm would be 0/0
    with torch.no_grad():
        for w in group["writers"]:
            m = mods[w]
            ax = 1 if isinstance(m, torch.nn.ConvTranspose1d) else 0
            m.weight.index_fill_(ax, torch.tensor(channels), 0.0)
            if m.bias is not None:
                m.bias[channels] = 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_dead_channels_prune_to_the_same_output(name):
    gen = _gen(name, folded=True)
    groups = {g["name"]: g for g in channel_groups(gen.config)}
    dead = {"pre": [0, 5, 9, 30], "stage0": [1, 2, 7, 15], "stage1": [0, 3]}
    if CASES[name].resblock == "1":
        dead["inner1.2"] = [4, 6, 12]
    for gname, chans in dead.items():
        _kill(gen, groups[gname], chans)
    x, g = _inputs(name)
    scores = channel_scores(gen, [(x, g)])
    for gname, chans in dead.items():
        assert torch.all(scores[gname][chans] == 0) and torch.all(
            scores[gname][[c for c in range(len(scores[gname])) if c not in chans]] > 0)
    widths = {gname: int(groups[gname]["width"]) - len(chans) for gname, chans in dead.items()}
    small, info = prune_generator(gen, 0.0, widths=widths, inputs=[(x, g)])
    assert [info["groups"][k][1] for k in widths] == list(widths.values())
    with torch.no_grad():
        ref, out = gen(x, g), small(x, g)
    assert ref.abs().max() > 1e-3                                # not a trivially silent generator
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    # a weight-only score cannot see dead channels here: pruning the same widths by weights changes the output
    small_w, _ = prune_generator(gen, 0.0, widths=widths)
    with torch.no_grad():
        assert (small_w(x, g) - ref).abs().max() > 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_configs_and_cost(name):
    gen = _gen(name)
    x, g = _inputs(name)
    small, info = prune_generator(gen, 0.5, inputs=[(x, g)])
    cfg = small.config
    assert cfg.widths() == [16, 8, 4] if name == "v1-gin" else cfg.widths() == [16, 8, 4, 2]
    if cfg.resblock == "1":
        assert cfg.inner_channels == [[8, 8, 8]] * 3 + [[4, 4, 4]] * 3
        assert small.resblocks[0].convs1[0].weight.shape == (8, 8, 3)
    assert small.cond.weight.shape[0] == 16 if cfg.gin_channels else True
    assert small.conv_post.weight.shape[1] == cfg.widths()[-1]
    with torch.no_grad():
        assert small(x, g).shape == gen(x, g).shape
    rebuilt = Generator(GeneratorConfig.from_dict(cfg.to_dict())).double()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    # the cost model counts the new widths: roughly a quarter at half the channels
    ratio = decoder_flops_per_frame(cfg) / decoder_flops_per_frame(gen.config)
    assert 0.2 < ratio < 0.3
    assert info["params"][1] < 0.35 * info["params"][0]


def test_refit_reduces_the_error_on_calibration_inputs():
    gen = _gen("v3", folded=False)
    x, g = _inputs("v3")
    with torch.no_grad():
        ref = gen(x, g)
        plain = prune_generator(gen, 0.5, inputs=[(x, g)])[0](x, g)
        small, info = prune_generator(gen, 0.5, inputs=[(x, g)], refit=True)
        fitted = small(x, g)
    assert info["refit"] and has_weight_norm(small)
    assert (fitted - ref).pow(2).mean() < 0.5 * (plain - ref).pow(2).mean()       # measured 0.24
    with pytest.raises(ConfigError, match="refit needs calibration inputs"):
        prune_generator(gen, 0.5, refit=True)


@pytest.mark.parametrize("k,s,p,op", [(16, 8, 4, 0), (8, 4, 2, 0), (4, 2, 1, 1), (5, 2, 2, 0)])
def test_transposed_refit_recovers_an_upsampler(k, s, p, op):
    """The phase-by-phase normal equations of a ConvTranspose1d are exact: fitted to its own outputs, a fresh
    upsampler gets its weights and bias back (also when the kernel is not a multiple of the stride)."""
    from torch import nn

    from edgeflow.compress.generator_refit import _normal, _solve

    torch.manual_seed(k + s)
    src = nn.ConvTranspose1d(5, 3, k, s, padding=p, output_padding=op).double()
    dst = nn.ConvTranspose1d(5, 3, k, s, padding=p, output_padding=op).double()
    x = torch.randn(6, 5, 11, dtype=torch.float64)
    with torch.no_grad():
        y = src(x)
        _solve(dst, src, _normal(x, dst, torch.arange(y.shape[2]), y), 1e-12)
    assert torch.allclose(dst.weight, src.weight, atol=1e-8) and torch.allclose(dst.bias, src.bias, atol=1e-8)


@pytest.mark.parametrize("mode", ["sequential", "independent"])
def test_refit_reaches_the_upsampler_that_reads_a_pruned_stream(mode):
    """Pruning ``pre`` leaves ups.0 (a ConvTranspose1d) as the group's only reader: the refit must solve it, or
    refitting changes nothing."""
    gen = _gen("v3")
    items = [_inputs("v3", s) for s in (1, 2, 3)]

    def upsampled(g):                                   # ups.0's output (the generator's own output saturates)
        out = []
        h = g.ups[0].register_forward_hook(lambda _m, _a, y: out.append(y))
        with torch.no_grad():
            for x, c in items:
                g(x, c)
        h.remove()
        return torch.cat(out)

    ref = upsampled(gen)

    def error(refit):
        small, _ = prune_generator(gen, 0.0, {"pre": 20}, inputs=items, refit=refit, refit_mode=mode)
        return (upsampled(small) - ref).pow(2).mean()

    assert error(True) < 0.5 * error(False)


@pytest.mark.parametrize("name", list(CASES))
def test_sequential_refit_corrects_what_upstream_left(name):
    """Fitted on the pruned generator's own features, in forward order, the refit ends closer to the unpruned
    output than the independent one fitted on the unpruned features (measured: 0.86x the error on v3, 0.71x with
    speaker conditioning; random weights leave a refit little to recover)."""
    gen = _scaled_gen(name)
    items = [_inputs(name, s) for s in (1, 2, 3)]

    def error(mode):
        small, info = prune_generator(gen, 0.5, inputs=items, refit=True, refit_mode=mode)
        assert info["refit_mode"] == mode and has_weight_norm(small)
        with torch.no_grad():
            return sum((small(x, g) - gen(x, g)).pow(2).mean() for x, g in items)

    assert error("sequential") < 0.9 * error("independent")
    assert prune_generator(gen, 0.5, inputs=items)[1]["refit_mode"] is None
    with pytest.raises(ConfigError, match="refit_mode must be one of sequential, independent"):
        prune_generator(gen, 0.5, inputs=items, refit=True, refit_mode="joint")
    x, g = items[0]
    shorter = (x[..., :5], g)
    with pytest.raises(ConfigError, match="sequential mode needs calibration windows of one length"):
        prune_generator(gen, 0.5, inputs=[items[0], shorter], refit=True)
    prune_generator(gen, 0.5, inputs=[items[0], shorter], refit=True, refit_mode="independent")


def test_default_widths_and_bad_configs():
    assert V3.widths() == [256, 128, 64, 32] and V3.channels is None
    assert GeneratorConfig.from_dict(V3.to_dict()) == V3
    with pytest.raises(ConfigError, match="channels must be 4 widths"):
        V3.replace(channels=[8, 4])
    with pytest.raises(ConfigError, match="resblock '1' only"):
        V3.replace(inner_channels=[[1, 1]] * 9)                     # resblock "2" has no inner channels
    with pytest.raises(ConfigError):
        prune_generator(_gen("v3"), 0.0, widths={"stage9": 3})
    with pytest.raises(ConfigError):
        prune_generator(_gen("v3"), 0.0, widths={"stage0": 99})


def test_width_selectors_and_fractions():
    """Recipes name groups by stage and fraction so one recipe fits V1, V2 and V3 generators."""
    from edgeflow.compress.generator import plan_widths

    v1 = Generator(V1.replace(in_channels=8, upsample_initial_channel=64))          # widths 64, 32, 16, 8, 4
    plan = plan_widths(v1, 0.0, {"stage-1": 0.75, "inner@stage-1": 0.25, "inner@stage1": 0.5, "pre": 60})
    assert plan["stage3"] == 3 and plan["pre"] == 60 and plan["stage2"] == 8
    assert {plan[f"inner{b}.{j}"] for b in (9, 10, 11) for j in range(3)} == {1}                # round(0.25 * 4)
    assert {plan[f"inner{b}.{j}"] for b in (3, 4, 5) for j in range(3)} == {8}
    assert {plan[f"inner{b}.{j}"] for b in (0, 1, 2, 6, 7, 8) for j in range(3)} == {32, 8}     # untouched
    assert plan_widths(v1, 0.0, {"stage3": 3}) == plan_widths(v1, 0.0, {"stage-1": 3})
    v3 = _gen("v3")                                           # resblock "2": the inner pattern changes nothing
    assert plan_widths(v3, 0.0, {"inner@stage-1": 0.25, "stage-1": 0.5})["stage2"] == 2         # 3 stages
    for bad, match in (({"stage-5": 0.5}, "unknown channel group stage-5"), ({"stage0": 1.5}, "keeps 1.5 of"),
                       ({"inner@stage7": 0.5}, "unknown channel group inner@stage7"),
                       ({"inner@stem": 0.5}, "unknown channel group inner@stem"),
                       ({"stage0": 0.0}, "keeps 0.0 of"), ({"stage0": True}, "keeps True of")):
        with pytest.raises(ConfigError, match=match):
            plan_widths(v1, 0.0, bad)


def test_pruned_vits_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config()))
    dec, _ = prune_generator(model.dec, 0.25)
    new = copy.deepcopy(model)
    new.dec, new.config = dec, model.config.replace(decoder=dec.config.to_dict())
    save_model(tmp_path / "m.pt", new)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.config.decoder.widths() == dec.config.widths() == [24, 12, 6, 3]
    ids = list(range(1, 12))
    a, b = new.synthesize(ids, seed=3), loaded.synthesize(ids, seed=3)
    assert a.shape == b.shape and torch.equal(a, b)


def test_distill_improves_and_keeps_best():
    teacher = _gen("v3").float()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 8, 8, generator=gen)
    with torch.no_grad():
        y = teacher(x)
    train, valid = GeneratorWindows(x, y).split(0.25)
    student, _ = prune_generator(teacher, 0.5, inputs=[train.cond])
    from edgeflow.audio.mel_torch import LogMel
    from edgeflow.audio.mel import MelConfig

    settings = GeneratorDistillSettings(steps=6, valid_every=3, batch=3, lr=1e-3)
    s1 = distill_generator(copy.deepcopy(student), train, valid, LogMel(MelConfig()), settings, progress=False,
                           log=None)
    assert s1["valid_best"] <= s1["valid_before"] and s1["steps"] == 6
    assert [r[0] for r in s1["valid_curve"]] == [0, 3, 6]
    s2 = distill_generator(copy.deepcopy(student), train, valid, LogMel(MelConfig()), settings, progress=False,
                           log=None)
    assert s1["valid_curve"] == s2["valid_curve"]                     # deterministic


def test_families_declare_their_channel_groups():
    from edgeflow.models.family import get_family
    from edgeflow.passes.vocoder_generator import generator_refusal

    model = vits.Vits(tiny_config())
    names = {n for n, _ in model.named_modules()}
    groups = get_family("vits").channel_groups(model.config)
    assert [g["name"] for g in groups] == [g["name"] for g in channel_groups(model.config.decoder)]
    assert all(m.startswith("dec.") and m in names for g in groups for m in g["writers"] + g["readers"])
    assert get_family("waveflow").channel_groups(None) is None
    assert "declares none" in generator_refusal(get_family("waveflow"))
    assert "tts_prune" in generator_refusal(get_family("vits"))
    assert generator_refusal(get_family("hifigan")) is None


def test_sample_term_weights_the_teacher_waveform_difference():
    from edgeflow.audio.mel import MelConfig
    from edgeflow.audio.mel_torch import LogMel
    from edgeflow.compress.generator_distill import window_distance

    teacher = _gen("v3").float()
    x = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = teacher(x)
    train, valid = GeneratorWindows(x, y).split(0.25)
    student, _ = prune_generator(teacher, 0.5, inputs=[train.cond])
    only = GeneratorDistillSettings(mel_weight=0.0, stft_weight=0.0, wave_weight=2.0, batch=4)
    with torch.no_grad():
        want = 2.0 * float((student(valid.cond) - valid.audio).abs().mean())
    assert window_distance(student, valid, LogMel(MelConfig()), only) == pytest.approx(want, rel=1e-5)
    assert window_distance(teacher, valid, LogMel(MelConfig()), only) == 0.0
    run = distill_generator(copy.deepcopy(student), train, valid, LogMel(MelConfig()),
                            only.replace(steps=3, valid_every=3, lr=1e-3), progress=False, log=None)
    assert set(run["terms_last"]) == {"wave"} and run["valid_best"] < run["valid_before"]
    for bad in ({"wave_weight": -1.0}, {"mel_weight": 0.0, "stft_weight": 0.0}):
        with pytest.raises(ValueError, match="not all 0|>= 0"):
            GeneratorDistillSettings(**bad)

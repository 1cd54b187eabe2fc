"""The DiT vector field (``decoder: "dit"``): shapes, masking, attention reach, the family's config switch and
cost model, a warm start onto a fresh field, the training time cap, and export to a torch-free bundle."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.models.fmtts import FmTts, FmTtsConfig, flops_breakdown
from edgeflow.models.fmtts.decoder import VectorField
from edgeflow.models.fmtts.decoder_dit import DiTField, attention_bias
from test_fmtts import TINY, toy_items

DIT = dict(decoder="dit", dit_layers=2, dit_heads=2, dit_text_blocks=1, dit_window=4)


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (a fresh DiT is zero at its output and gates: the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_fresh_field_is_zero_and_shapes_any_frame_count():
    net = DiTField(80, 81, 16, 2, 2, text_blocks=1, window=4).eval()
    x, cond, mask = torch.randn(2, 80, 23), torch.randn(2, 81, 23), torch.ones(2, 1, 23)
    assert torch.equal(net(x, cond, mask, torch.tensor([0.1, 0.9])), torch.zeros(2, 80, 23))
    v = randomized(net)(x, cond, mask, torch.tensor([0.1, 0.9]))
    assert v.shape == (2, 80, 23) and v.abs().mean() > 1e-3 and torch.all(torch.isfinite(v))


def test_padding_never_leaks_into_valid_frames():
    net = randomized(DiTField(80, 81, 16, 2, 2, text_blocks=1, window=0))
    x, cond = torch.randn(2, 80, 30), torch.randn(2, 81, 30)
    mask = torch.ones(2, 1, 30)
    mask[1, :, 17:] = 0
    v = net(x, cond, mask, torch.tensor([0.3, 0.6]))
    assert torch.all(v[1, :, 17:] == 0)
    alone = net(x[1:, :, :17], cond[1:, :, :17], torch.ones(1, 1, 17), torch.tensor([0.6]))
    assert torch.allclose(alone[0], v[1, :, :17], atol=1e-5)
    garbage = x.clone()
    garbage[1, :, 17:] = 1e3                                     # what lies in the padding does not matter
    assert torch.allclose(net(garbage, cond, mask, torch.tensor([0.3, 0.6]))[1], v[1], atol=1e-5)


def test_attention_window_limits_the_reach():
    bias = attention_bias(torch.ones(1, 1, 6), 1)
    assert bias.shape == (1, 1, 6, 6) and bias[0, 0, 2, 3] == 0 and bias[0, 0, 2, 4] < -1e8
    x, cond, mask, t = torch.randn(1, 80, 120), torch.randn(1, 81, 120), torch.ones(1, 1, 120), torch.tensor([0.5])
    far = x.clone()
    far[:, :, 110:] += 3.0                   # beyond 2 layers x 4 frames + conv reach (2 x 15 + 3) of frame 0
    local = randomized(DiTField(80, 81, 16, 2, 2, text_blocks=1, window=4))
    assert torch.allclose(local(x, cond, mask, t)[..., 0], local(far, cond, mask, t)[..., 0], atol=1e-6)
    full = randomized(DiTField(80, 81, 16, 2, 2, text_blocks=1, window=0))
    assert not torch.allclose(full(x, cond, mask, t)[..., 0], full(far, cond, mask, t)[..., 0], atol=1e-4)


def test_config_switch_family_cost_and_sampling():
    cfg = FmTtsConfig(**TINY, **DIT)
    assert cfg.frame_multiple == 1 and FmTtsConfig(**TINY).frame_multiple == 4
    assert FmTtsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Exception, match="decoder must be one of"):
        FmTtsConfig(**TINY, decoder="wavenet")
    with pytest.raises(Exception, match="dit_heads"):
        FmTtsConfig(**dict(TINY, dec_channels=24), decoder="dit", dit_heads=5)
    torch.manual_seed(0)
    model = FmTts(cfg).eval()
    assert isinstance(model.decoder, DiTField) and isinstance(FmTts(FmTtsConfig(**TINY)).decoder, VectorField)
    randomized(model.decoder)
    out = model.synthesize(torch.tensor([[1, 5, 7, 3, 9, 2]]), seed=1, nfe=3, guidance=0.5)
    n = int(out["mel_lens"][0])
    assert out["mel"].shape[-1] == n and torch.all(torch.isfinite(out["mel"]))    # no padding to a multiple
    one, two = flops_breakdown(cfg, nfe=1)["decoder"], flops_breakdown(cfg, nfe=2)["decoder"]
    assert one > 0 and two == pytest.approx(2 * one)
    wider = flops_breakdown(FmTtsConfig(**TINY, **dict(DIT, dit_layers=4)), nfe=1)["decoder"]
    assert wider > 1.5 * one                                     # the blocks (attention included) are counted


def make_trainer(out, steps, decoder="unet", **train):
    from edgeflow.train.fmtts import FmTtsTrainConfig
    from edgeflow.train.fmtts_trainer import FmTtsTrainer
    from edgeflow.train.recipe import Recipe

    model = FmTtsConfig(**TINY, **(DIT if decoder == "dit" else {}))
    recipe = Recipe("fmtts", model, FmTtsTrainConfig(steps=steps, batch_size=3, lr=3e-3, valid_every=0,
                                                     ckpt_every=0, ckpt_minutes=0.0, log_every=1, **train))
    return FmTtsTrainer(recipe, None, out, progress=False, items=toy_items(), valid_items=toy_items(2, 1),
                        log=lambda m: None)


def test_warm_start_onto_a_fresh_dit_field(tmp_path):
    from edgeflow.models.checkpoint import load_model

    torch.set_num_threads(1)
    unet = make_trainer(tmp_path / "unet", 2)
    unet.train()
    with pytest.raises(CheckpointError, match="architecture differs"):
        make_trainer(tmp_path / "x", 1, "dit").warm_start(tmp_path / "unet" / "model.pt")
    with pytest.raises(ConfigError, match="init_fresh names no module of the model: decodr"):
        make_trainer(tmp_path / "x", 1, "dit", init_fresh="decodr")                 # refused before any data
    dit = make_trainer(tmp_path / "dit", 1, "dit", init_fresh="decoder")
    torch.manual_seed(5)
    fresh = {k: v.clone() for k, v in dit.model.decoder.state_dict().items()}
    assert dit.warm_start(tmp_path / "unet" / "model.pt")["fresh"] == ["decoder"]
    theirs = unet.model.state_dict()
    for k, v in dit.model.state_dict().items():
        if k.startswith("decoder."):
            assert torch.equal(v, fresh[k[len("decoder."):]]), k      # the new field keeps its fresh init
        else:
            assert torch.equal(v, theirs[k]), k                      # encoder, prosody, statistics: warm
    dit.train(init=str(tmp_path / "unet" / "model.pt"))
    model, info = load_model(tmp_path / "dit" / "model.pt", family="fmtts")
    assert isinstance(model.decoder, DiTField) and info["meta"]["init"]["fresh"] == ["decoder"]


def test_time_cap_stops_and_keeps_the_last_step(tmp_path):
    from edgeflow.models.checkpoint import load_model

    torch.set_num_threads(1)
    capped = make_trainer(tmp_path, 50, "dit", max_minutes=1e-9)
    summary = capped.train()
    assert summary["steps"] == 1 and "time cap" in summary["stopped"]
    _, info = load_model(tmp_path / "model.pt", family="fmtts")
    assert info["meta"]["step"] == 1 and (tmp_path / "train_state.pt").is_file()
    with pytest.raises(ValueError, match="max_minutes"):
        make_trainer(tmp_path / "bad", 1, max_minutes=-1.0)


def test_dit_bundle_runs_torch_free_and_equals_pytorch(tmp_path):
    from edgeflow.export.fmtts import export_fmtts_bundle
    from edgeflow.runtime import Voice
    from test_fmtts_export import IDS, TOL, reference_mel, rel_err, tiny_fmtts, tiny_vocoder

    model = tiny_fmtts(**DIT)
    randomized(model.decoder, seed=3)
    export_fmtts_bundle(model, tiny_vocoder(), tmp_path / "dit")
    voice = Voice.load(tmp_path / "dit", threads=1)
    assert voice.frame_multiple == 1
    for opts in (dict(nfe=4, solver="euler", sway=-1.0), dict(nfe=4, solver="midpoint", sway=0.0, guidance=0.75)):
        got = voice.mel_ids(IDS, seed=2, **opts)
        assert rel_err(got, reference_mel(model, IDS, 2, **opts)) < TOL
        assert rel_err(got, reference_mel(model, IDS, 3, **opts)) > 1e-2 or got.shape != \
            reference_mel(model, IDS, 3, **opts).shape                     # the comparison can fail
    audio, sr = voice.speak("Hello, world.", seed=1)
    assert sr == 16000 and audio.size > 0 and np.all(np.isfinite(audio))


def test_bench_validation_cfm_scores_the_field():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_fm_fields import validation_cfm

    items = toy_items(3, 2)
    torch.manual_seed(0)
    unet = FmTts(FmTtsConfig(**TINY)).eval()
    got = validation_cfm(unet, items, [0.5], seed=1)
    assert got["utterances"] == 3 and got["frames"] == sum(i.frames for i in items)
    assert got == validation_cfm(unet, items, [0.5], seed=1)                   # deterministic
    dit = FmTts(FmTtsConfig(**TINY, **DIT)).eval()
    zero = validation_cfm(dit, items, [0.2, 0.7], seed=1)                       # a fresh DiT is v = 0, so the
    mean_y2 = np.mean(np.concatenate([i.mel.ravel() for i in items]) ** 2)      # loss is E|y - z|^2 = E y^2 + 1
    assert zero["cfm"] == pytest.approx(mean_y2 + 1.0, rel=0.03)                 # (statistics 0 / 1: y = mel)
    randomized(dit.decoder)
    assert validation_cfm(dit, items, [0.2, 0.7], seed=1)["cfm"] != pytest.approx(zero["cfm"], rel=1e-3)


def test_field_passes_on_a_dit_voice(tmp_path):
    import onnx

    from edgeflow.export.fmtts import export_fmtts_bundle
    from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
    from test_fmtts_export import tiny_fmtts, tiny_vocoder

    model = tiny_fmtts(**DIT)
    randomized(model.decoder, seed=4)
    for p in model.decoder.parameters():
        p.data.mul_(0.5)
    export_fmtts_bundle(model, tiny_vocoder(), tmp_path / "dit")
    opts = {"calib_sentences": 2, "sentences": 2, "window": 8, "rounds": 1}
    art = Artifact(model=model, reference=model, bundle_dir=tmp_path / "dit")
    ctx = PassContext(work_dir=tmp_path / "work", progress=False)
    rec = apply_pass(art, make_config("fm_prune", opts), ctx)
    assert rec["details"]["applied"] is False and "U-Net" in rec["details"]["reason"]
    rec = apply_pass(art, make_config("fm_quantize", dict(opts, max_mcd=80.0, require_speedup=False)), ctx)
    assert rec["details"]["applied"] is True, rec["details"]
    g = onnx.load(str(art.bundle_dir / "field.onnx"), load_external_data=False)
    dq = {n.output[0] for n in g.graph.node if n.op_type == "DequantizeLinear"}
    read = {n.name for n in g.graph.node if n.op_type in ("MatMul", "Conv") and any(i in dq for i in n.input)}
    assert any("/qkv/" in n for n in read) and any("/ff/" in n for n in read)       # the blocks' linears
    assert not any(re.search(r"/ada(_out)?/|^/decoder/out/", n) for n in read)     # modulation, velocity: float

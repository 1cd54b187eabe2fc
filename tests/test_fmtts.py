"""Flow-matching TTS family: shapes, sampling (NFE, solvers, guidance, seeds), prosody flow properties,
the objective on a tiny overfit, the cost model and the mel convention."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.models.base import build_model
from edgeflow.models.family import get_family
from edgeflow.models.fmtts import FmTts, FmTtsConfig, flops_breakdown
from edgeflow.models.fmtts.decoder import VectorField
from edgeflow.models.fmtts.prosody import ProsodyFlow, per_phone, phone_features, scatter_phones
from edgeflow.train.fmtts import FmTtsObjective, cfm_loss, gaussian_log_likelihood

TINY = dict(num_symbols=20, hidden=16, filter_channels=32, n_heads=2, n_layers=1, dec_channels=16, dec_levels=2,
            dec_blocks=1, prosody_channels=16, prosody_layers=1, prosody_flows=2, prosody_wn_channels=8,
            prosody_wn_layers=1, p_dropout=0.0, segment_frames=16, cfg_dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return FmTts(FmTtsConfig(**{**TINY, **kw})).eval()


def test_family_registered_and_config_round_trip():
    fam = get_family("fmtts")
    assert fam.task == "tts" and fam.model_cls is FmTts
    cfg = FmTtsConfig(**TINY)
    again = FmTtsConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.mel, MelConfig)
    assert isinstance(build_model("fmtts", cfg.to_dict()), FmTts)
    with pytest.raises(Exception, match="sway"):
        FmTtsConfig(sway=-2.0)


def test_mel_convention_is_hifigan():
    m = FmTtsConfig().mel
    assert (m.sample_rate, m.n_fft, m.hop_length, m.win_length, m.n_mels, m.fmin, m.fmax, m.log_clamp) == \
        (22050, 1024, 256, 1024, 80, 0.0, 8000.0, 1e-5)


def test_vector_field_shapes_and_mask():
    net = VectorField(80, 81, 16, 2, 1).eval()
    x, cond = torch.randn(2, 80, 24), torch.randn(2, 81, 24)
    mask = torch.ones(2, 1, 24)
    mask[1, :, 13:] = 0
    v = net(x, cond, mask, torch.tensor([0.1, 0.9]))
    assert v.shape == (2, 80, 24) and torch.all(v[1, :, 13:] == 0)
    # padding does not leak into the valid frames: item 1 alone on its 13 (+3 pad) frames gives the same output
    m1 = torch.ones(1, 1, 16)
    m1[..., 13:] = 0
    alone = net(x[1:, :, :16], cond[1:, :, :16], m1, torch.tensor([0.9]))
    assert torch.allclose(alone[0, :, :13], v[1, :, :13], atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(x[:, :, :23], cond[:, :, :23], mask[:, :, :23], torch.zeros(2))


@pytest.mark.parametrize("nfe,solver", [(1, "euler"), (2, "euler"), (4, "euler"), (2, "midpoint"), (4, "midpoint")])
def test_sampling_runs_with_nfe(nfe, solver):
    model = tiny()
    ids = torch.tensor([[1, 0, 5, 0, 7, 0, 2]])
    out = model.synthesize(ids, seed=3, nfe=nfe, solver=solver)
    n = int(out["mel_lens"][0])
    assert out["mel"].shape[:2] == (1, 80) and out["mel"].shape[2] >= n >= 7
    assert out["mel"].shape[2] % 4 == 0 and torch.isfinite(out["mel"]).all()
    assert int(out["durations"].sum()) == n and (out["durations"] >= 1).all()


def test_sampling_deterministic_with_seed_and_options_matter():
    model = tiny()
    ids = torch.tensor([[1, 0, 5, 0, 7, 0, 2]])
    a = model.synthesize(ids, seed=11)
    b = model.synthesize(ids, seed=11)
    assert torch.equal(a["mel"], b["mel"]) and torch.equal(a["durations"], b["durations"])
    c = model.synthesize(ids, seed=12)
    assert not torch.equal(a["features"], c["features"])
    d = model.synthesize(ids, seed=11, tau=0.0, temperature=0.0)
    e = model.synthesize(ids, seed=99, tau=0.0, temperature=0.0)
    assert torch.equal(d["mel"], e["mel"])                                  # no noise left: seed irrelevant
    g = model.synthesize(ids, seed=11, guidance=1.5, sway=0.0)
    assert torch.equal(g["durations"], a["durations"]) and not torch.allclose(g["mel"], a["mel"])
    l2 = model.synthesize(ids, seed=11, prosody="l2")
    assert torch.isfinite(l2["mel"]).all()
    with pytest.raises(TypeError, match="unknown sampling option"):
        model.synthesize(ids, nfee=3)


def test_batch_synthesis_matches_single_items():
    model = tiny()
    ids = torch.tensor([[1, 0, 5, 0, 7, 0, 2], [1, 0, 9, 0, 2, 0, 0]])
    lens = torch.tensor([7, 5])
    both = model.synthesize(ids, lens, seed=0, tau=0.0, temperature=0.0)
    one = model.synthesize(ids[1:, :5], seed=0, tau=0.0, temperature=0.0)
    n = int(one["mel_lens"][0])
    assert int(both["mel_lens"][1]) == n
    assert torch.allclose(both["mel"][1, :, :n], one["mel"][0, :, :n], atol=1e-4)


def test_prosody_flow_inverse_and_logdet_against_jacobian():
    torch.manual_seed(0)
    pf = ProsodyFlow(hidden=6, channels=8, layers=1, n_flows=3, wn_channels=8, wn_layers=2, p_dropout=0.0).double()
    for p in pf.parameters():                       # non-trivial couplings (the WN end conv starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    c = torch.randn(5, 8, 1, dtype=torch.float64)
    x = torch.randn(5, 2, 1, dtype=torch.float64)
    z, ld = pf.flow(x, c)
    back, ld_inv = pf.flow.inverse(z, c)
    assert torch.allclose(back, x, atol=1e-10) and torch.allclose(ld_inv, -ld, atol=1e-10)
    for k in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: pf.flow(v.view(1, 2, 1), c[k:k + 1])[0].view(2), x[k, :, 0])
        assert math.isclose(float(torch.linalg.slogdet(jac)[1]), float(ld[k].detach()), abs_tol=1e-8)


def test_per_phone_round_trip_and_phone_features():
    mask = torch.tensor([[[1., 1., 1.]], [[1., 1., 0.]]])
    x = torch.randn(2, 2, 3) * mask
    assert per_phone(x, mask).shape == (5, 2, 1)
    assert torch.equal(scatter_phones(per_phone(x, mask), mask), x)
    attn = torch.tensor([[[1., 1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]]])
    lf0 = torch.tensor([[5.0, 5.2, 4.0, 6.0]])
    voiced = torch.tensor([[1., 0., 0., 1.]])
    feats, dur = phone_features(attn, lf0, voiced)
    assert dur.tolist() == [[2., 1., 1.]]
    assert torch.allclose(feats[0, 0], torch.log(torch.tensor([2., 1., 1.])))
    assert torch.allclose(feats[0, 1], torch.tensor([5.0, 4.0, 6.0]))   # voiced mean; unvoiced: contour mean


def test_gaussian_log_likelihood_matches_direct():
    y, mu = torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    direct = torch.distributions.Normal(mu.unsqueeze(-1), 1.0).log_prob(y.unsqueeze(2)).sum(1)
    assert torch.allclose(gaussian_log_likelihood(y, mu), direct, atol=1e-5)


def test_cfm_loss_target_is_the_ot_path_velocity():
    model = tiny()
    y, z = torch.randn(1, 80, 8), torch.randn(1, 80, 8)
    t = torch.tensor([0.3])
    s = model.config.sigma_min
    u = y - (1 - s) * z

    class Exact(torch.nn.Module):                   # a decoder that returns the true velocity: zero loss
        def forward(self, x, cond, mask, tt):
            return u

    model.decoder = Exact()
    assert float(cfm_loss(model, y, torch.zeros(1, 81, 8), torch.ones(1, 1, 8), t, z)) < 1e-10


def toy_items(n=3, seed=0):
    from edgeflow.data.fmtts import Item

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        n_ids = int(rng.integers(5, 9))
        dur = rng.integers(2, 6, n_ids)
        ids = rng.integers(3, 20, n_ids)
        proto = rng.normal(size=(20, 80)).astype(np.float32)        # one mel frame per symbol
        mel = np.concatenate([np.repeat(proto[i][:, None], d, 1) for i, d in zip(ids, dur)], 1) - 4.0
        f = mel.shape[1]
        items.append(Item(ids.astype(np.int64), mel.astype(np.float32), np.full(f, 5.3, np.float32),
                          np.ones(f, np.float32)))
    return items


def make_trainer(out, steps, ckpt_every=0, init="", ema=0.0):
    from edgeflow.train.fmtts import FmTtsTrainConfig
    from edgeflow.train.fmtts_trainer import FmTtsTrainer
    from edgeflow.train.recipe import Recipe

    recipe = Recipe("fmtts", FmTtsConfig(**TINY), FmTtsTrainConfig(
        steps=steps, batch_size=3, lr=3e-3, valid_every=0, ckpt_every=ckpt_every, ckpt_minutes=0.0, log_every=1,
        init=init, ema=ema))
    return FmTtsTrainer(recipe, None, out, progress=False, items=toy_items(), valid_items=toy_items(2, 1),
                        log=lambda m: None)


@pytest.mark.slow
def test_tiny_overfit_loss_decreases(tmp_path):
    torch.set_num_threads(1)
    make_trainer(tmp_path, 60).train()
    rows = [r.split(",") for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    cfm, prior = [float(r[2]) for r in rows], [float(r[3]) for r in rows]
    assert len(rows) == 60
    assert np.mean(cfm[-10:]) < 0.85 * np.mean(cfm[:5]), (cfm[:5], cfm[-10:])
    assert np.mean(prior[-10:]) < np.mean(prior[:5])


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    full = make_trainer(tmp_path / "a", 6)
    full.train()
    half = make_trainer(tmp_path / "b", 6, ckpt_every=3)
    half.train(steps=3)
    assert (tmp_path / "b" / "train_state.pt").is_file() and (tmp_path / "b" / "model.pt").is_file()
    resumed = make_trainer(tmp_path / "b", 6)
    resumed.train(resume=True)
    assert resumed.step == 6
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert full.validate() == resumed.validate()
    from edgeflow.models.checkpoint import load_model

    model, info = load_model(tmp_path / "b" / "model.pt", family="fmtts")
    assert info["meta"]["step"] == 6 and isinstance(model, FmTts)
    assert torch.equal(model.mel_std, resumed.model.mel_std) and float(model.mel_std) != 1.0


def test_warm_start_takes_the_weights_and_refuses_another_architecture(tmp_path):
    from edgeflow.core.errors import CheckpointError
    from edgeflow.models.checkpoint import load_model, save_model

    torch.set_num_threads(1)
    first = make_trainer(tmp_path / "a", 3)
    first.train()
    warm = make_trainer(tmp_path / "b", 1)
    assert warm.warm_start(tmp_path / "a" / "model.pt")["step"] == 3
    for (k, v), w in zip(first.model.state_dict().items(), warm.model.state_dict().values()):
        assert torch.equal(v, w), k                                  # the new run starts from the init weights
    warm = make_trainer(tmp_path / "b", 1, init=str(tmp_path / "a" / "model.pt"))     # --set init=MODEL.pt
    warm.train()
    assert warm.step == 1 and float(warm.model.mel_std) == float(first.model.mel_std)
    _, info = load_model(tmp_path / "b" / "model.pt", family="fmtts")
    assert info["meta"]["init"]["step"] == 3 and len(info["meta"]["init"]["sha256"]) == 64
    again = make_trainer(tmp_path / "b", 2)                          # resumed: the provenance stays
    again.train(resume=True)
    _, info = load_model(tmp_path / "b" / "model.pt", family="fmtts")
    assert again.step == 2 and info["meta"]["init"]["step"] == 3
    cold = make_trainer(tmp_path / "c", 3)
    assert not torch.equal(cold.model.decoder.out.weight, first.model.decoder.out.weight)
    save_model(tmp_path / "wide.pt", FmTts(FmTtsConfig(**dict(TINY, dec_channels=2 * TINY["dec_channels"]))))
    with pytest.raises(CheckpointError, match="architecture differs"):
        cold.train(steps=1, init=tmp_path / "wide.pt")


def test_weight_average_is_what_model_pt_holds_and_validation_scores(tmp_path):
    from edgeflow.models.checkpoint import load_model

    torch.set_num_threads(1)
    first = make_trainer(tmp_path / "a", 2)
    first.train()
    run = make_trainer(tmp_path / "b", 4, ckpt_every=2, init=str(tmp_path / "a" / "model.pt"), ema=0.6)
    run.train()
    loop = run.loop
    assert loop.ema_updates == 4
    saved, _ = load_model(tmp_path / "b" / "model.pt", family="fmtts")
    for n, p in run.model.named_parameters():
        assert torch.equal(dict(saved.named_parameters())[n], loop.ema[n]), n
    assert not torch.equal(saved.decoder.out.weight, run.model.decoder.out.weight)   # not the trained weights
    with torch.no_grad(), loop.averaged():
        averaged = run.objective.terms(run.model.eval(), run._valid_batch)
    run.model.train()
    assert run.validate() == pytest.approx(float(averaged["cfm"] + averaged["prior"]), abs=0)
    resumed = make_trainer(tmp_path / "c", 4, ckpt_every=2, init=str(tmp_path / "a" / "model.pt"), ema=0.6)
    resumed.train(steps=2)
    resumed = make_trainer(tmp_path / "c", 4, ema=0.6)
    resumed.train(resume=True)
    for n in loop.ema:
        assert torch.equal(resumed.loop.ema[n], loop.ema[n]), n
    with pytest.raises(ValueError, match="ema"):
        make_trainer(tmp_path / "d", 1, ema=1.0)


def test_objective_terms_are_finite_and_durations_cover_frames():
    from edgeflow.train.fmtts_trainer import collate, feature_stats

    model = tiny()
    items = toy_items()
    model.set_stats(**feature_stats(items))
    batch = collate(items, model.config, seed=0)
    out = FmTtsObjective().terms(model, batch)
    assert all(torch.isfinite(out[k]) for k in ("cfm", "prior", "flow_nll", "l2"))
    assert out["durations"].sum(1).tolist() == [float(i.frames) for i in items]


def test_cost_model_and_size():
    cfg = FmTtsConfig()
    fb = flops_breakdown(cfg)
    assert set(fb) == {"text_encoder", "prosody", "decoder"}
    assert flops_breakdown(cfg, nfe=8)["decoder"] == pytest.approx(2 * flops_breakdown(cfg, nfe=4)["decoder"])
    assert flops_breakdown(cfg.replace(guidance=1.0))["decoder"] == pytest.approx(2 * fb["decoder"])
    # one U-Net evaluation at the defaults: well under 1 GFLOP per second of audio (RTF budget, see the card)
    assert 1e8 < fb["decoder"] / cfg.nfe < 1e9


def test_js_divergence_and_prosody_report():
    from edgeflow.train.fmtts_eval import js_divergence, prosody_report

    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    assert js_divergence(a, a) < 1e-9
    assert js_divergence(a, a + 10.0) > 0.99                      # disjoint supports: 1 bit
    assert js_divergence(a, rng.normal(size=4000)) < 0.02
    model = tiny()
    items = toy_items()
    rep = prosody_report(model, items, taus=(0.0, 1.0))
    assert rep["phones"] == sum(len(i.ids) for i in items)
    assert rep["recorded"]["log_duration"]["spread"] == pytest.approx(1.0)
    assert rep["recorded"]["log_f0"]["jsd"] < 1e-9
    # tau 0 is the flow's deterministic mode-like output: less spread than tau 1 for the untrained flow too
    assert rep["flow@0"]["log_duration"]["std"] < rep["flow@1"]["log_duration"]["std"]


def test_recipe_loading_and_command_line_errors(tmp_path, capsys):
    import json

    from edgeflow.core.errors import ConfigError
    from edgeflow.train.fmtts_run import load_fmtts_recipe, main, parse_sets

    r = load_fmtts_recipe("fm-tts-demo", parse_sets(["batch_size=4", "lr=3e-4"]))
    assert r.family == "fmtts" and r.name == "fm-tts-demo" and r.train.batch_size == 4 and r.train.lr == 3e-4
    assert r.model.phoneme_id_map["_"] == [0] and r.model.mel.fmax == 8000.0
    assert r.model.guidance == 0.75                              # the shipped demo's sampling default
    unguided = sum(flops_breakdown(dataclasses.replace(r.model, guidance=0.0)).values())
    assert unguided < 1e9                                         # < 1 GFLOP per second of audio at NFE 4
    guided = flops_breakdown(r.model)                             # guidance: two field evaluations per step
    assert sum(guided.values()) - unguided == pytest.approx(guided["decoder"] / 2)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"family": "vits", "model": {}}))
    with pytest.raises(ConfigError, match="not an fmtts recipe"):
        load_fmtts_recipe(bad)
    bad.write_text(json.dumps({"family": "fmtts", "model": {"dec_chanels": 8}}))
    with pytest.raises(ConfigError, match="dec_chanels"):
        load_fmtts_recipe(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["batch_size"])
    assert main([str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "dec_chanels" in err[0]


def test_feature_cache_round_trip_owns_its_arrays(tmp_path):
    from edgeflow.data.fmtts import load_items, save_items

    items = toy_items(4)
    save_items(tmp_path / "f.npz", items, "k1")
    assert load_items(tmp_path / "f.npz", "other") is None                 # other settings: rebuilt
    back = load_items(tmp_path / "f.npz", "k1")
    assert len(back) == 4
    for a, b in zip(items, back):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mel, b.mel) and np.array_equal(a.lf0, b.lf0)
        assert b.mel.base is None                    # a copy, not a view of a whole-cache array per item


def test_continuous_log_f0_interpolates_unvoiced_frames():
    from edgeflow.data.fmtts import F0_MIN, continuous_log_f0

    f0 = np.array([np.nan, 100.0, np.nan, np.nan, 400.0, np.nan])
    voiced = np.array([0, 1, 0, 0, 1, 0])
    out = continuous_log_f0(f0, voiced)
    assert np.allclose(np.exp(out), [100, 100, 100 * 4 ** (1 / 3), 100 * 4 ** (2 / 3), 400, 400], rtol=1e-5)
    assert np.allclose(continuous_log_f0(f0, np.zeros(6)), np.log(F0_MIN))


def test_durations_round_log_frames():
    model = tiny()
    raw = torch.log(torch.tensor([[[1.2, 2.6, 0.3, 7.0], [5.0, 5.0, 5.0, 5.0]]]))
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    d = model.durations(model.normalize_prosody(raw), mask, 1.0)
    assert torch.allclose(d, torch.tensor([[1.0, 3.0, 1.0, 0.0]]))
    slow = model.durations(model.normalize_prosody(raw), mask, 2.0)
    assert torch.allclose(slow, torch.tensor([[2.0, 5.0, 1.0, 0.0]]))


def test_duration_dequantization_rounds_back_and_is_bounded():
    """The prosody flow sees log(d - 0.5 + u): continuous, bounded below by log 0.5, and rounding (what
    FmTts.durations does) recovers every integer d; the f0 row is untouched; no noise: unchanged."""
    from edgeflow.train.fmtts import dequantize

    dur = torch.tensor([[1.0, 2.0, 7.0, 30.0]])
    raw = torch.stack([torch.log(dur), torch.tensor([[4.0, 4.5, 5.0, 5.5]])], 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        u = torch.rand(1, 6, generator=g)                      # wider than N, as collate pads to the batch
        out = dequantize(raw, dur, u)
        assert torch.equal(out[:, 1], raw[:, 1])
        assert torch.equal(torch.round(torch.exp(out[:, 0])), dur)
        assert out[:, 0].min() >= math.log(0.5) - 1e-6
    assert not torch.equal(dequantize(raw, dur, torch.full((1, 4), 0.9)), raw)
    assert dequantize(raw, dur, None) is raw

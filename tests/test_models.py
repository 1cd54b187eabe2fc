"""Model-level tests: paper parameter counts, cached vs plain WaveFlow sampling, the model zoo CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeflow.core.errors import ConfigError, InputError
from edgeflow.models.base import build_model, count_parameters
from edgeflow.models.waveflow import WaveFlowConfig, row_orders
from edgeflow.models.waveglow import WaveGlowConfig
from edgeflow.train.recipe import load_recipe, recipe_names

REPO = Path(__file__).resolve().parents[1]



def perturb(module, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return module


def meta_count(family, cfg):
    with torch.device("meta"):
        return count_parameters(build_model(family, cfg))


# -- paper sizes --------------------------------------------------------------------------------------------------

def test_waveflow_r64_paper_parameter_count():
    cfg = {"n_flows": 8, "n_layers": 8, "height": 16, "channels": 64}
    assert WaveFlowConfig().mel.n_mels == 80
    n = meta_count("waveflow", cfg)
    assert abs(n - 5.91e6) / 5.91e6 < 0.01, n
    assert n == meta_count("waveflow", load_recipe("waveflow-r64").model)


def test_waveglow_paper_parameter_count():
    cfg = {"n_flows": 12, "n_group": 8, "n_early_every": 4, "n_early_size": 2, "wn_layers": 8, "wn_channels": 256}
    n = meta_count("waveglow", cfg)
    assert abs(n - 87.9e6) / 87.9e6 < 0.01, n
    assert n == meta_count("waveglow", load_recipe("waveglow-256").model)
    # the 1% window is tight enough to notice a changed width
    assert abs(meta_count("waveglow", dict(cfg, wn_channels=240)) - 87.9e6) / 87.9e6 > 0.01


def test_meta_count_equals_real_count():
    cfg = {"n_flows": 2, "n_layers": 3, "height": 8, "channels": 8}
    assert meta_count("waveflow", cfg) == count_parameters(build_model("waveflow", cfg))
    gcfg = {"n_flows": 5, "n_early_every": 2, "wn_layers": 2, "wn_channels": 8}
    assert meta_count("waveglow", gcfg) == count_parameters(build_model("waveglow", gcfg))


# -- WaveFlow sampling: cached == plain ----------------------------------------------------------------------------

def test_waveflow_cached_sampling_equals_plain():
    torch.manual_seed(0)
    model = build_model("waveflow", {"n_flows": 2, "n_layers": 4, "height": 8, "channels": 16,
                                     "dilations_h": [1, 2, 4, 1]})
    assert model.config.mel.hop_length == 256 and model.config.mel.n_mels == 80
    perturb(model).eval()
    frames = 10
    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1)) - 4
    z = model.noise(mel, seed=3)
    assert z.shape == (1, frames * 256)
    with torch.no_grad():
        model.set_cached(True)
        cached = model.synthesize(mel, sigma=0.8, z=z)
        _, ld_c = model.inverse(0.8 * z, mel)
        model.set_cached(False)
        plain = model.synthesize(mel, sigma=0.8, z=z)
        _, ld_p = model.inverse(0.8 * z, mel)
        model.set_cached(True)
        # it is a real transform (perturbed, not the identity at init) and inverts the forward pass
        assert (cached - 0.8 * z).abs().max() > 1e-2
        z_back, ld_f = model(cached, mel)
    assert (cached - plain).abs().max().item() < 1e-4
    assert abs(ld_c.item() - ld_p.item()) < 1e-4 * max(1.0, abs(ld_p.item()))
    assert (z_back - 0.8 * z).abs().max().item() < 1e-3
    # the same seed gives the same audio; another seed another
    with torch.no_grad():
        assert torch.equal(model.synthesize(mel, sigma=0.8, seed=3), cached)
        assert not torch.equal(model.synthesize(mel, sigma=0.8, seed=4), cached)


def test_synthesize_rejects_bad_mel():
    model = build_model("waveflow", {"n_flows": 1, "n_layers": 1, "height": 4, "channels": 2})
    for bad in (torch.zeros(1, 40, 3), torch.zeros(1, 80, 0), torch.full((1, 80, 2), float("nan")), torch.zeros(80, 3)):
        with pytest.raises(InputError):
            model.synthesize(bad)
    with pytest.raises(InputError):
        model(torch.zeros(1, 100), torch.zeros(1, 80, 1))


def test_row_orders_distinct_permutations():
    orders = row_orders(16, 8)
    assert orders[0] == list(range(16)) and len(orders) == 8
    assert all(sorted(o) == list(range(16)) for o in orders)
    assert orders[1] == list(range(15, -1, -1))


def test_config_validation():
    with pytest.raises(ConfigError):
        build_model("waveflow", {"upsample_factors": [16, 8]})   # product != hop 256
    with pytest.raises(ConfigError):
        build_model("waveflow", {"no_such_key": 1})
    with pytest.raises(ConfigError):
        build_model("waveglow", {"n_group": 7})
    with pytest.raises(ConfigError):
        build_model("nosuchfamily", None)
    assert WaveGlowConfig().sigma_infer == 0.6


# -- CLI: the zoo ---------------------------------------------------------------------------------------------------

def test_models_cli_json_lists_recipes():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "models", "--json"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    recipes = {e["name"]: e for e in entries if e["kind"] == "recipe"}
    assert set(recipes) == set(recipe_names())
    assert {"waveflow-r64", "waveglow-256", "waveflow-demo"} <= set(recipes)
    for name, e in recipes.items():
        r = load_recipe(name)
        assert e["family"] == r.family
        assert e["parameters"] == meta_count(r.family, r.model), name
    assert abs(recipes["waveflow-r64"]["parameters"] - 5.91e6) / 5.91e6 < 0.01
    assert abs(recipes["waveglow-256"]["parameters"] - 87.9e6) / 87.9e6 < 0.01

"""A non-editable install (``pip install .``) works from any directory: recipes and target profiles are
package data read through importlib.resources, not files found relative to a source checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SR = 22050


def _run(cmd, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(cmd[0]).parent}:/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.needs_eval("pesq", "pystoi", "speechmos", "matplotlib")      # the optimize run scores and plots
def test_non_editable_install_runs_from_another_directory(tmp_path):
    # a copy of the sources, so that building (build/, *.egg-info) leaves the checkout alone
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "edgeflow", src / "edgeflow", ignore=shutil.ignore_patterns("__pycache__"))
    # the wheel is built by this interpreter's setuptools (the project's build backend, no download) and
    # installed into a fresh venv that sees this interpreter's packages (torch, onnxruntime) but not the checkout
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  tmp_path / "dist", src], tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgeflow-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    pip = _run([py, "-m", "pip", "install", "--no-deps", "-q", wheel], tmp_path)
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.rmtree(src)                                     # nothing may be read from the sources any more
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([py, "-c", "import edgeflow; print(edgeflow.__file__)"], work)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr

    models = _run([venv / "bin" / "edgeflow", "models", "--json"], work, timeout=300)
    assert models.returncode == 0, models.stderr[-2000:]
    recipes = {e["name"] for e in json.loads(models.stdout) if e["kind"] == "recipe"}
    assert {"waveflow-demo", "waveflow-r64", "waveglow-256"} <= recipes

    # a tiny model through the cpu target's quality recipe (target profile from package data)
    script = f"""
import sys
import numpy as np
import torch
from edgeflow.audio.io import save_wav
from edgeflow.models import build_model
from edgeflow.models.checkpoint import save_model
from edgeflow.train.recipe import load_recipe
assert load_recipe("waveflow-demo").family == "waveflow"
torch.manual_seed(0)
model = build_model("waveflow", {{"n_flows": 2, "n_layers": 2, "height": 8, "channels": 8}})
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.02 * torch.randn_like(p))
save_model("model.pt", model)
t = np.arange(int(0.6 * {SR})) / {SR}
for i, f0 in enumerate((140.0, 220.0)):
    save_wav(f"clips/clip{{i}}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), {SR})
"""
    made = _run([py, "-c", script], work)
    assert made.returncode == 0, made.stderr[-2000:]
    opt = _run([venv / "bin" / "edgeflow", "optimize", "model.pt", "--target", "cpu", "--recipe", "quality",
                "--data", "clips", "--n-eval", "2", "--threads", "1", "-o", "out"], work)
    assert opt.returncode == 0, (opt.stdout + opt.stderr)[-3000:]
    assert (work / "out" / "report.json").is_file()
    manifest = json.loads(next((work / "out").glob("**/manifest.json")).read_text())
    assert manifest["family"] == "waveflow"

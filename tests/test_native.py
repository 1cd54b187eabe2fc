"""The native engine (edgeflow/runtime/native): C kernels of the WaveFlow inverse against PyTorch and onnxruntime,
every instruction set and thread count, streaming, thread safety, engine choice, the kernels pass, and a
torch-free run. The demo model's parity against onnxruntime is slow-marked (its export takes minutes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.core.errors import BundleError, InputError
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.passes.kernels import KernelsConfig, add_kernels, compare, pack_waveflow
from edgeflow.runtime import Synthesizer, native
from edgeflow.runtime.native import format as fmt
from edgeflow.validate.export import export_bundle
from export_helpers import HOP, assert_threads_match_serial, snr_db, test_mel, tiny_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))

#: Tiny WaveFlows: the shared test config, and one with an odd channel count (padded GEMM tiles), a height
#: dilation of 2, a 5 x 5 kernel, three layers and flows.
CONFIGS = [{}, {"channels": 6, "n_layers": 3, "n_flows": 3, "height": 4, "kernel_size": 5,
                "dilations_h": [1, 2, 1]}]


def _session(model, tmp_path, threads=1):
    path = tmp_path / "kernels.npz"
    fmt.save(path, pack_waveflow(model))
    return native.NativeSession(path, ["mel", "z", "sigma"], HOP, threads=threads)


@pytest.fixture
def isa():
    """Restores the best instruction set after a test that forces one."""
    yield
    native.set_isa(native.supported_isas()[-1])


@pytest.mark.parametrize("overrides", CONFIGS)
def test_native_matches_pytorch_every_isa_and_thread_count(overrides, tmp_path, isa):
    model = tiny_model("waveflow", **overrides)
    h = model.config.height
    frames = [8, 23] if h % 8 == 0 else [4, 23]
    for f in frames:
        mel = test_mel(f, batch=2, seed=f)
        z = np.random.default_rng(f).standard_normal((2, f * HOP)).astype(np.float32)
        with torch.no_grad():
            ref = model.inverse(torch.from_numpy(z) * 0.7, torch.from_numpy(mel))[0].numpy()
        for name in native.supported_isas():
            native.set_isa(name)
            for threads in (1, 2):
                out = _session(model, tmp_path, threads).run(None, {"mel": mel, "z": z, "sigma": np.array([0.7],
                                                                                                        np.float32)})[0]
                got = compare(out, ref)
                assert got["max_rel_err"] < 1e-4 and got["snr_db"] > 80, (name, threads, f, got)


def test_weight_file_is_checked(tmp_path):
    arrays = pack_waveflow(tiny_model("waveflow"))
    bad = dict(arrays)
    bad["flow.0.layer.0.res.weight"] = bad["flow.0.layer.0.res.weight"][:, :3]
    with pytest.raises(BundleError, match="res.weight"):
        fmt.save(tmp_path / "k.npz", bad)
    bad = dict(arrays, row_orders=arrays["row_orders"] * 0)
    with pytest.raises(BundleError, match="row orders"):
        fmt.check(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="unreadable"):
        fmt.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="instruction set"):
        native.set_isa("sse9")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(model, float bundle without kernels, the same bundle with kernels)."""
    root = tmp_path_factory.mktemp("native")
    model = tiny_model("waveflow")
    export_bundle(model, root / "plain")
    add_kernels(model, root / "plain", root / "kernels", KernelsConfig(time_seconds=0.5))
    return model, root / "plain", root / "kernels"


def test_native_vs_onnxruntime_and_manifest(bundles):
    _, _, bundle = bundles
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["native"]["parity"]["passed"] and fmt.KERNELS_FILE in manifest["files"]
    assert {r["frames"] for r in manifest["native"]["parity"]["lengths"]} == \
        {r["frames"] for r in manifest["validation"]["lengths"]}
    ort_s = Synthesizer.load(bundle, threads=1, engine="onnxruntime")
    nat = Synthesizer.load(bundle, threads=2, engine="native")
    assert nat.engine == "native" and nat.providers == [native.PROVIDER] and ort_s.engine == "onnxruntime"
    for frames, batch in ((1, None), (37, 2), (120, None)):
        mel = test_mel(frames, batch=batch, seed=frames)
        for sigma in (0.0, 0.7, 1.3):
            got = compare(nat.synthesize(mel, sigma=sigma, seed=5), ort_s.synthesize(mel, sigma=sigma, seed=5))
            assert got["max_rel_err"] < 1e-4 and got["snr_db"] >= 80, (frames, sigma, got)


def test_native_streaming_equals_whole(bundles):
    s = Synthesizer.load(bundles[2], threads=1, engine="native")
    mel = test_mel(70, seed=2)
    whole = s.synthesize(mel, seed=11)
    chunks, at = [], 0
    for n in [1, 6, 0, 13, 2, 20, 9, 19]:
        chunks.append(mel[:, at:at + n])
        at += n
    pieces = list(s.synthesize_stream(iter(chunks), seed=11))
    assert len(pieces) > 2 and snr_db(whole, np.concatenate(pieces)) >= 40


def test_native_eight_threads_match_serial(bundles):
    synth = Synthesizer.load(bundles[2], threads=2, engine="native")
    mels = [test_mel(9 + 5 * i, seed=i) for i in range(8)]
    assert_threads_match_serial(synth, mels)


def test_engine_choice(bundles):
    _, plain, bundle = bundles
    timing = json.loads((bundle / "manifest.json").read_text())["native"]["timing"]
    # auto: what the kernels pass measured, at the threads (so the conv layout) it measured with
    assert Synthesizer.load(bundle, threads=timing["threads"]).engine == timing["faster"]
    if timing["conv_layout"] == "2d":                                 # another layout: that timing says nothing
        assert Synthesizer.load(bundle, threads=timing["threads"], conv_layout="1d").engine == "onnxruntime"
    assert Synthesizer.load(plain).engine == "onnxruntime"            # auto without kernels
    assert Synthesizer.load(bundle, providers="auto").engine == "onnxruntime"
    with pytest.raises(BundleError, match="no native kernels"):
        Synthesizer.load(plain, engine="native")
    with pytest.raises(InputError, match="engine must be"):
        Synthesizer.load(bundle, engine="tvm")
    with pytest.raises(InputError, match="threads"):
        Synthesizer.load(bundle, engine="native", threads=0)


def _with_manifest(bundle: Path, **fields) -> None:
    """Rewrite a bundle's manifest (hashes and sidecar included) with ``fields`` changed."""
    from edgeflow.core.bundle_format import write_manifest

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(bundle, dict(manifest, **fields))


def test_quantized_copy_without_kernels_still_loads(bundles, tmp_path):
    """A bundle quantized after the kernels pass inherits the float kernels' manifest section, not the file."""
    q = tmp_path / "q"
    q.mkdir()
    shutil.copy2(bundles[2] / "model.onnx", q / "model.onnx")
    shutil.copy2(bundles[2] / "manifest.json", q / "manifest.json")
    _with_manifest(q, precision="int8")
    assert Synthesizer.load(q).engine == "onnxruntime"
    with pytest.raises(BundleError, match="no native kernels"):
        Synthesizer.load(q, engine="native")


def test_kernels_pass_and_refusals(bundles, tmp_path):
    model, plain, _ = bundles
    art = Artifact(model=model, bundle_dir=plain)
    rec = apply_pass(art, make_config("kernels", {"time_seconds": 0}), PassContext(work_dir=tmp_path))
    assert rec["details"]["parity"]["passed"] and art.bundle_dir != plain
    assert (art.bundle_dir / fmt.KERNELS_FILE).is_file() and not (plain / fmt.KERNELS_FILE).exists()
    assert Synthesizer.load(art.bundle_dir).engine == "onnxruntime"   # not timed: auto keeps onnxruntime
    q = Artifact(model=model, bundle_dir=art.bundle_dir)
    q.bundle_dir = tmp_path / "fp16"                                   # a precision without kernels: unchanged
    shutil.copytree(art.bundle_dir, q.bundle_dir)
    _with_manifest(q.bundle_dir, precision="float16")
    rec = apply_pass(q, make_config("kernels", {}), PassContext(work_dir=tmp_path, progress=False))
    assert rec["details"] == {"native": False, "reason": "the native engine has float32 and INT8 kernels; the "
                                                           "bundle is float16"} and q.bundle_dir == tmp_path / "fp16"
    other = tiny_model("waveflow", seed=3)                             # weights that are not the bundle's
    with pytest.raises(BundleError, match="parity failed"):
        add_kernels(other, plain, tmp_path / "wrong", KernelsConfig(time_seconds=0))
    assert not (tmp_path / "wrong").exists()


def _run(code: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})), cwd=REPO)


def test_native_is_torch_free_and_missing_library_is_one_line(bundles, tmp_path):
    code = r"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "onnxruntime":
            raise ImportError("blocked in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from edgeflow.runtime import Synthesizer
s = Synthesizer.load(sys.argv[1], threads=1, engine="native")
print(s.synthesize(np.full((20, 9), -5.0, np.float32), seed=1).shape)
"""
    out = _run(code, bundles[2])
    assert out.returncode == 0 and out.stdout.strip() == f"({9 * HOP},)", out.stderr[-2000:]
    missing = r"""
import sys
from edgeflow.runtime import Synthesizer, native
assert not native.available()
print(Synthesizer.load(sys.argv[1]).engine)
try:
    Synthesizer.load(sys.argv[1], engine="native")
except Exception as exc:
    print(type(exc).__name__, "|", exc)
"""
    out = _run(missing, bundles[2], env={"EDGEFLOW_NATIVE_LIB": str(tmp_path / "nothing.so")})
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[0] == "onnxruntime", out.stderr[-2000:]
    assert lines[1].startswith("DependencyError | the native engine is unavailable") and len(lines) == 2


@pytest.mark.slow
def test_demo_model_native_vs_onnxruntime(tmp_path):
    """The bundled demo WaveFlow (6 flows x 6 layers, 32 channels): float bundle, kernels pass parity, and a
    4 s utterance at 1e-4 relative / 80 dB against onnxruntime."""
    from edgeflow.models.checkpoint import load_model

    model = load_model(REPO / "models" / "waveflow-demo" / "model.pt")[0]
    export_bundle(model, tmp_path / "plain")
    manifest = add_kernels(model, tmp_path / "plain", tmp_path / "k", KernelsConfig(time_seconds=0))
    assert manifest["native"]["parity"]["passed"]
    mel = np.random.default_rng(0).normal(-5.0, 2.0, (80, 345)).astype(np.float32)
    ref = Synthesizer.load(tmp_path / "k", engine="onnxruntime", threads=2).synthesize(mel, seed=2)
    got = compare(Synthesizer.load(tmp_path / "k", engine="native", threads=2).synthesize(mel, seed=2), ref)
    assert got["max_rel_err"] < 1e-4 and got["snr_db"] >= 80, got

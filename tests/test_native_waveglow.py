"""WaveGlow through the native engine (edgeflow/runtime/native/waveglow.py): the packed couplings against the
PyTorch inverse (plain and LU 1x1 convs, early outputs, threads), the numpy upsampler against ConvTranspose1d,
the weight file's checks, the ``kernels`` pass on float WaveGlow bundles (parity against onnxruntime, timing, the
``native`` section, refusals; INT8 bundles: tests/test_native_waveglow_int8.py) and ``Synthesizer`` with the native engine (whole, streamed, engine choice,
torch-free). Tiny random WaveGlows only (6 flows, an early output every 4 of 2 channels, 3 WN layers of 32)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.flows.coupling import AffineCoupling
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.passes.kernels import KernelsConfig, add_kernels, compare
from edgeflow.passes.kernels_waveglow import pack_waveglow
from edgeflow.runtime import Synthesizer, native
from edgeflow.runtime.native import waveglow as wg
from edgeflow.validate.export import export_bundle
from export_helpers import HOP, assert_threads_match_serial, run_torch_free, snr_db, test_mel, tiny_model

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))
SIZE = {"n_flows": 6, "n_early_every": 4, "n_early_size": 2, "wn_layers": 3, "wn_channels": 32}
NAMES = ["mel", "z", "sigma"]


def _model(lu: bool, seed: int = 0):
    """A tiny WaveGlow with every weight perturbed (non-zero end convs: no coupling is the identity)."""
    return tiny_model("waveglow", seed=seed, scale=0.05, lu_conv=lu, **SIZE)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """{lu: (model, float bundle, the same bundle through the kernels pass)} for plain and LU 1x1 convs."""
    root, out = tmp_path_factory.mktemp("waveglow"), {}
    for lu in (False, True):
        model = _model(lu)
        plain, kern = root / f"plain-{lu}", root / f"kernels-{lu}"
        export_bundle(model, plain, check_streaming=not lu)
        add_kernels(model, plain, kern, KernelsConfig(time_seconds=0.25))
        out[lu] = (model, plain, kern)
    return out


@pytest.mark.parametrize("lu", [False, True])
def test_native_matches_pytorch(lu, bundles):
    model = bundles[lu][0]
    ends = [m.net.end.weight.detach() for m in model.modules() if isinstance(m, AffineCoupling)]
    assert len(ends) == 6 and all(float(w.abs().max()) > 0.01 for w in ends)           # no identity coupling
    for threads in (1, 2):
        session = wg.WaveGlowSession(None, NAMES, HOP, threads=threads, arrays=pack_waveglow(model))
        for frames in (1, 8, 23):
            mel = test_mel(frames, batch=2, seed=frames)
            z = np.random.default_rng(frames).standard_normal((2, frames * HOP)).astype(np.float32)
            with torch.no_grad():
                ref = model.inverse(torch.from_numpy(z) * 0.7, torch.from_numpy(mel))[0].numpy()
            out = session.run(None, {"mel": mel, "z": z, "sigma": np.array([0.7], np.float32)})[0]
            got = compare(out, ref)
            assert got["max_rel_err"] < 1e-4 and got["snr_db"] > 80, (lu, threads, frames, got)


def test_every_isa_and_threads_sharing(bundles):
    model, _, bundle = bundles[False]
    session = wg.WaveGlowSession(None, NAMES, HOP, threads=1, arrays=pack_waveglow(model))
    mel = test_mel(13, batch=1, seed=4)
    z = np.random.default_rng(4).standard_normal((1, 13 * HOP)).astype(np.float32)
    feeds = {"mel": mel, "z": z, "sigma": np.array([0.6], np.float32)}
    best = native.supported_isas()[-1]
    try:
        outs = {}
        for name in native.supported_isas():
            native.set_isa(name)
            outs[name] = session.run(None, feeds)[0]
    finally:
        native.set_isa(best)
    assert all(compare(o, outs[best])["max_rel_err"] < 1e-5 for o in outs.values()), list(outs)
    synth = Synthesizer.load(bundle, threads=2, engine="native")
    assert_threads_match_serial(synth, [test_mel(9 + 5 * i, seed=i) for i in range(4)], rounds=2)


def test_upsampler_matches_conv_transpose():
    from edgeflow.flows.reshape import Squeeze1d

    up = torch.nn.ConvTranspose1d(5, 5, 4 * 16, stride=16)
    w, b = up.weight.detach().numpy(), up.bias.detach().numpy()
    for frames in (1, 2, 3, 4, 11):
        mel = np.random.default_rng(frames).standard_normal((2, 5, frames)).astype(np.float32)
        with torch.no_grad():
            ref = up(torch.from_numpy(mel))[:, :, :frames * 16]
        np.testing.assert_allclose(wg.upsample(mel, w, b), ref.numpy(), rtol=0, atol=1e-5)
        for g in (2, 8):
            got = wg.upsample_squeezed(mel, wg.upsampler_matrix(w, b, g), g)
            np.testing.assert_allclose(got, Squeeze1d(g)(ref)[0].numpy(), rtol=0, atol=1e-5)


def test_hop_not_a_multiple_of_the_group():
    """hop 60, groups of 8: upsampled first, then squeezed (frame counts a multiple of 2)."""
    from export_helpers import MEL

    model = tiny_model("waveglow", mel=dict(MEL, hop_length=60), **SIZE)
    session = wg.WaveGlowSession(None, NAMES, 60, threads=1, arrays=pack_waveglow(model))
    assert session.up_group == 1
    mel = test_mel(10, batch=1, seed=1)
    z = np.random.default_rng(1).standard_normal((1, 600)).astype(np.float32)
    with torch.no_grad():
        ref = model.inverse(torch.from_numpy(z) * 0.7, torch.from_numpy(mel))[0].numpy()
    got = compare(session.run(None, {"mel": mel, "z": z, "sigma": np.array([0.7], np.float32)})[0], ref)
    assert got["max_rel_err"] < 1e-4 and got["snr_db"] > 80, got


def _one_line_error(arrays, tmp_path, match):
    with pytest.raises(BundleError, match=match) as info:
        wg.save(tmp_path / "w.npz", arrays)
    assert "\n" not in str(info.value)


def test_weight_file_is_checked(tmp_path):
    arrays = pack_waveglow(_model(False))
    wg.save(tmp_path / "ok.npz", arrays)
    assert wg.load(tmp_path / "ok.npz").keys() == arrays.keys()
    _one_line_error(dict(arrays, **{"flow.4.inv": arrays["flow.4.inv"][:4, :4]}), tmp_path, "flow.4.inv")
    _one_line_error(dict(arrays, **{"up.bias": arrays["up.bias"] * np.nan}), tmp_path, "up.bias")
    _one_line_error(dict(arrays, **{"coupling.5.flow.0.layer.2.rs.weight": arrays[
        "coupling.5.flow.0.layer.2.rs.weight"][:, :3]}), tmp_path, "coupling 5.*rs.weight")
    cfg = arrays["coupling.1.config"].copy()
    cfg[5] += 1                                                        # conditioning channels that do not fit
    _one_line_error(dict(arrays, **{"coupling.1.config": cfg}), tmp_path, "coupling 1")
    _one_line_error({k: v for k, v in arrays.items() if not k.startswith("coupling.5.")}, tmp_path, "coupling 5")
    _one_line_error(dict(arrays, extra=np.zeros(2, np.float32)), tmp_path, "unknown fields extra")
    _one_line_error(dict(arrays, format=np.array([7], np.int32)), tmp_path, "format 7")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="unreadable"):
        wg.load(tmp_path / "junk.npz")
    with pytest.raises(ConfigError, match="even channel count"):
        pack_waveglow(tiny_model("waveglow", n_early_size=1))
    with pytest.raises(ConfigError, match="needs a WaveGlow"):
        pack_waveglow(tiny_model("waveflow"))


def test_kernels_pass_bundle_and_synthesizer(bundles):
    _, plain, bundle = bundles[False]
    manifest = json.loads((bundle / "manifest.json").read_text())
    nat_sec = manifest["native"]
    assert nat_sec["engine"] == wg.ENGINE and nat_sec["file"] == wg.WAVEGLOW_FILE in manifest["files"]
    assert nat_sec["parity"]["passed"] and {r["frames"] for r in nat_sec["parity"]["lengths"]} == \
        {r["frames"] for r in manifest["validation"]["lengths"]}
    assert nat_sec["timing"]["faster"] in ("native", "onnxruntime")
    nat = Synthesizer.load(bundle, threads=2, engine="native")
    ort_s = Synthesizer.load(bundle, threads=1, engine="onnxruntime")
    assert isinstance(nat.session, wg.WaveGlowSession) and nat.providers == [native.PROVIDER]
    for frames, batch in ((1, None), (37, 2)):
        mel = test_mel(frames, batch=batch, seed=frames)
        for sigma in (0.0, 0.7):
            got = compare(nat.synthesize(mel, sigma=sigma, seed=5), ort_s.synthesize(mel, sigma=sigma, seed=5))
            assert got["max_rel_err"] < 1e-4 and got["snr_db"] >= 80, (frames, sigma, got)
    mel = test_mel(70, seed=2)
    whole = nat.synthesize(mel, seed=11)
    pieces = list(nat.synthesize_stream(iter([mel[:, :6], mel[:, 6:19], mel[:, 19:20], mel[:, 20:]]), seed=11))
    assert len(pieces) > 1 and snr_db(whole, np.concatenate(pieces)) >= 40
    # auto: what the pass measured, at its threads (so in its conv layout)
    assert Synthesizer.load(bundle, threads=nat_sec["timing"]["threads"]).engine == nat_sec["timing"]["faster"]
    assert Synthesizer.load(plain).engine == "onnxruntime"


def test_lu_bundle_parity(bundles):
    _, _, bundle = bundles[True]
    nat, ort_s = (Synthesizer.load(bundle, threads=1, engine=e) for e in ("native", "onnxruntime"))
    mel = test_mel(29, batch=2, seed=3)
    got = compare(nat.synthesize(mel, seed=2), ort_s.synthesize(mel, seed=2))
    assert got["max_rel_err"] < 1e-4 and got["snr_db"] >= 80, got


def _with_manifest(bundle: Path, **fields) -> None:
    from edgeflow.core.bundle_format import write_manifest

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(bundle, dict(manifest, **fields))


def test_kernels_pass_records_refusals(bundles, tmp_path):
    model, plain, kern = bundles[False]
    art = Artifact(model=model, bundle_dir=plain)
    rec = apply_pass(art, make_config("kernels", {"time_seconds": 0}), PassContext(work_dir=tmp_path, progress=False))
    assert rec["details"]["native"] and rec["details"]["parity"]["passed"] and art.bundle_dir != plain
    assert (art.bundle_dir / wg.WAVEGLOW_FILE).is_file() and not (plain / wg.WAVEGLOW_FILE).exists()
    assert Synthesizer.load(art.bundle_dir).engine == "onnxruntime"     # not timed: auto keeps onnxruntime
    for precision in ("float16", "int8"):                               # kernels inherited, precision changed
        q = tmp_path / precision
        shutil.copytree(kern, q)
        _with_manifest(q, precision=precision)
        assert Synthesizer.load(q).engine == "onnxruntime"
        with pytest.raises(BundleError, match="no native kernels"):
            Synthesizer.load(q, engine="native")
    art_q = Artifact(model=model, bundle_dir=tmp_path / "float16")     # INT8: tests/test_native_waveglow_int8.py
    rec = apply_pass(art_q, make_config("kernels", {}), PassContext(work_dir=tmp_path, progress=False))
    assert rec["details"]["native"] is False and "float16" in rec["details"]["reason"]
    assert art_q.bundle_dir == tmp_path / "float16"
    with pytest.raises(BundleError, match="parity failed"):
        add_kernels(_model(False, seed=3), plain, tmp_path / "wrong", KernelsConfig(time_seconds=0))
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(ConfigError, match="WaveGlow"):
        add_kernels(tiny_model("waveflow"), plain, tmp_path / "other", KernelsConfig(time_seconds=0))


def test_native_waveglow_is_torch_free(bundles):
    run_torch_free(f"""
import numpy as np
from edgeflow.runtime import Synthesizer
s = Synthesizer.load(sys.argv[1], threads=1, engine="native")
assert s.synthesize(np.full((20, 9), -5.0, np.float32), seed=1).shape == ({9 * HOP},)
assert "onnxruntime" not in sys.modules          # the native engine needs neither torch nor onnxruntime
""", str(bundles[False][2]))

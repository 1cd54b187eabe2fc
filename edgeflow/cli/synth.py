"""``edgeflow synth BUNDLE_OR_MODEL.pt (--mel X.npy | --wav X.wav) -o OUT.wav``.

A bundle runs in the torch-free runtime (onnxruntime); a model.pt runs in PyTorch with the same
noise function, so the two can be A/B compared for a seed. A vocoder without noise (HiFi-GAN: mel in,
audio out) takes no --sigma and ignores --seed.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(sub) -> None:
    from edgeflow.cli.args import positive_int, seed_int, sigma_float

    p = sub.add_parser("synth", help="synthesize a wav from a mel (.npy) or resynthesize a wav, with a bundle "
                                     "(onnxruntime) or a model.pt (PyTorch)")
    p.add_argument("model", metavar="BUNDLE_OR_MODEL", help="bundle directory, or model.pt to run in PyTorch")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mel", metavar="X.npy", help="log-mel [n_mels, frames] (float) saved with numpy.save")
    src.add_argument("--wav", metavar="X.wav",
                     help="copy-synthesis: this audio's log-mel through the model's front-end")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav", help="output wav (16-bit PCM)")
    p.add_argument("--sigma", type=sigma_float, default=None, help="noise scale (default: the model's sigma_infer)")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: library default)")
    p.add_argument("--providers", default=None, help="bundle only: 'cpu' (default), 'auto', or provider names, "
                                                     "comma-separated")
    p.add_argument("--engine", choices=("auto", "onnxruntime", "native"), default="auto",
                   help="bundle only: onnxruntime, edgeflow's native C kernels, or auto (what the kernels pass "
                        "measured faster)")
    p.add_argument("--conv-layout", choices=("auto", "1d", "2d"), default="auto",
                   help="bundle only: how onnxruntime runs the float 1-D convolutions (2d: its NCHWc kernels; "
                        "auto: 2d for one thread on x86-64, else 1d; default auto)")
    p.set_defaults(func=run)


def load_mel_file(path: str | Path):
    """A .npy mel as an array (no pickles). Raises InputError if missing or unreadable."""
    import numpy as np

    from edgeflow.core.errors import InputError, not_a_file, short_reason

    path = Path(path)
    if not path.is_file():
        raise InputError(not_a_file("mel file", path))
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputError(f"{path} is not a .npy file (save the mel with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read mel file {path}: {short_reason(exc)}") from None


def _single(mel, n_mels: int):
    """Checked mel [1, n_mels, F] (one utterance: a wav holds one)."""
    from edgeflow.core.errors import InputError
    from edgeflow.runtime.synthesizer import check_mel

    arr, _ = check_mel(mel, n_mels)
    if arr.shape[0] != 1:
        raise InputError(f"mel has a batch of {arr.shape[0]}; synth writes one wav, give one [{n_mels}, frames] mel")
    return arr


def _check_sigma_used(args, has_noise: bool, family) -> None:
    """Refuse --sigma for a vocoder that draws no noise (HiFi-GAN): it would be silently ignored."""
    from edgeflow.core.errors import InputError

    if args.sigma is not None and not has_noise:
        raise InputError(f"--sigma: the {family} vocoder draws no noise (its graph takes only a mel); "
                         f"leave --sigma out")


def _with_bundle(args):
    from edgeflow.runtime import Synthesizer, read_manifest

    mel = None
    manifest = read_manifest(args.model)
    _check_sigma_used(args, len((manifest.get("io") or {}).get("inputs") or ()) != 1, manifest.get("family"))
    if args.mel:   # check the input before the (possibly slow) session load
        n_mels = (manifest.get("mel") or {}).get("n_mels")
        mel = load_mel_file(args.mel)
        if isinstance(n_mels, int):
            mel = _single(mel, n_mels)[0]
    providers = args.providers.split(",") if args.providers and "," in args.providers else args.providers
    synth = Synthesizer.load(args.model, threads=args.threads, providers=providers, engine=args.engine,
                             conv_layout=args.conv_layout)
    if args.wav:
        audio = synth.vocode(args.wav, sigma=args.sigma, seed=args.seed)
    else:
        audio = synth.synthesize(_single(mel, synth.n_mels)[0], sigma=args.sigma, seed=args.seed)
    return audio, synth.sample_rate, "onnxruntime"


def _with_torch(args):
    import numpy as np
    import torch

    from edgeflow.core.errors import InputError
    from edgeflow.models.checkpoint import load_model
    from edgeflow.models.family import get_family
    from edgeflow.runtime.synthesizer import check_seed, check_sigma

    if getattr(args, "conv_layout", "auto") != "auto":
        raise InputError("--conv-layout applies to bundles (a model.pt runs in PyTorch)")
    model, _ = load_model(args.model)
    _check_sigma_used(args, len(getattr(get_family(model).export, "input_names", "xyz")) != 1, model.family)
    sigma = None if args.sigma is None else check_sigma(args.sigma)
    seed = check_seed(args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = model.config.mel
    if args.wav:
        from edgeflow.audio.io import load_wav
        from edgeflow.audio.mel import log_mel

        wav, _ = load_wav(args.wav, sample_rate=cfg.sample_rate)
        mel = _single(log_mel(wav, cfg), model.n_mels)
    else:
        mel = _single(load_mel_file(args.mel), model.n_mels)
    frames = mel.shape[2]
    multiple = model.length_multiple // model.hop_length   # pad like the runtime does, then cut
    pad = (-frames) % multiple
    if pad:
        mel = np.concatenate([mel, np.repeat(mel[:, :, -1:], pad, axis=2)], axis=2)
    audio = model.synthesize(torch.from_numpy(mel), sigma=sigma, seed=seed)[0, :frames * model.hop_length]
    return audio.numpy(), cfg.sample_rate, "PyTorch"


def run(args) -> int:
    from edgeflow.audio.io import save_wav
    from edgeflow.cli.args import check_out_file
    from edgeflow.core.errors import BundleError

    src, out = Path(args.model), Path(args.output)
    check_out_file(out)
    if not src.exists():
        raise BundleError(f"not found: {src} (expected a bundle directory or a model.pt)")
    t0 = time.perf_counter()
    audio, sr, backend = _with_bundle(args) if src.is_dir() else _with_torch(args)
    seconds = time.perf_counter() - t0
    save_wav(out, audio, sr)
    dur = audio.size / sr
    print(f"wrote {out}: {dur:.2f} s of audio at {sr} Hz ({backend}, {seconds:.2f} s with loading, "
          f"RTF {seconds / max(dur, 1e-9):.3f})")
    return 0

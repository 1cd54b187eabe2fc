"""``edgeflow say MODEL.pt|BUNDLE|VOICE.onnx (--text T | --text-file F) -o OUT.wav``: text to speech.

A VITS or flow-matching (fmtts) bundle or a stock Piper voice (``VOICE.onnx`` + ``VOICE.onnx.json``) runs in
the torch-free :class:`edgeflow.runtime.Voice` (``--nfe``, ``--solver``, ``--sway``, ``--guidance``: fmtts
only); a VITS ``model.pt`` runs in PyTorch with the same text front-end and noise. Audio is streamed sentence
by sentence into the wav (bounded memory for any text length), written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

from pathlib import Path

#: Longest --text-file accepted (bytes); a 10,000-word text is about 60 kB.
MAX_TEXT_BYTES = 10_000_000


def add_arguments(sub) -> None:
    from edgeflow.cli.args import finite_float, model_source, positive_int, seed_int

    p = sub.add_parser("say", help="speak text with a VITS or fmtts bundle, a Piper voice (.onnx) or a VITS model.pt")
    p.add_argument("model", metavar="MODEL", type=model_source, help="VITS bundle directory, Piper VOICE.onnx (with VOICE.onnx.json "
                                                   "next to it), or a VITS model.pt (PyTorch)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to speak")
    src.add_argument("--text-file", metavar="F", help="a UTF-8 text file to speak")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav", help="output wav (16-bit PCM)")
    p.add_argument("--noise-scale", type=float, default=None,
                   help="prior noise temperature (default: the voice's)")
    p.add_argument("--length-scale", type=float, default=None,
                   help="duration multiplier, > 1 is slower (default: the voice's)")
    p.add_argument("--noise-w", type=float, default=None,
                   help="duration noise temperature (default: the voice's)")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed; sentence i uses seed + i (default 0; a stock "
                                                            "Piper graph samples its own noise and ignores it)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: library default)")
    p.add_argument("--config", metavar="VOICE.onnx.json", default=None,
                   help="Piper voice only: its json, if not VOICE.onnx.json")
    p.add_argument("--sentence-silence", type=finite_float(0.0, 60.0), default=0.0,
                   help="seconds of silence after each sentence")
    p.add_argument("--engine", choices=("auto", "onnxruntime", "native"), default="auto",
                   help="VITS bundles: the prior flow's engine (native: edgeflow's C kernels from the tts_kernels pass; "
                        "auto: native where that pass measured it faster; default auto)")
    p.add_argument("--conv-layout", choices=("auto", "1d", "2d"), default="auto",
                   help="bundles and Piper voices: how onnxruntime runs the float 1-D convolutions (2d: its NCHWc "
                        "kernels; auto: 2d for one thread on x86-64, else 1d; default auto)")
    p.add_argument("--nfe", type=int, default=None,
                   help="flow-matching (fmtts) bundles: ODE function evaluations (default: the bundle's)")
    p.add_argument("--solver", choices=("euler", "midpoint"), default=None,
                   help="flow-matching bundles: ODE solver (midpoint: NFE must be even; default: the bundle's)")
    p.add_argument("--sway", type=float, default=None,
                   help="flow-matching bundles: sway coefficient of the time grid (F5-TTS: -1; default: the bundle's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="flow-matching bundles: classifier-free guidance scale (0: none; default: the bundle's)")
    p.set_defaults(func=run)


def read_text(args) -> str:
    """The text from --text or --text-file (InputError: missing, unreadable, not UTF-8, too big, empty)."""
    from edgeflow.core.errors import InputError, not_a_file

    if args.text_file is not None:
        path = Path(args.text_file)
        if not path.is_file():
            raise InputError(not_a_file("text file", path))
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise InputError(f"text file {path} is larger than {MAX_TEXT_BYTES // 1_000_000} MB")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"text file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise InputError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    else:
        text = args.text
    if not text.strip():
        raise InputError("the text is empty")
    return text


def _torch_stream(args, text: str, scales):
    """(chunks, sample_rate) of a VITS model.pt in PyTorch, sentence by sentence (seed + i)."""
    import torch

    from edgeflow.core.errors import CheckpointError, InputError
    from edgeflow.models.checkpoint import load_model
    from edgeflow import text as frontend
    from edgeflow.runtime.voice_config import VoiceConfig

    model, _ = load_model(args.model)
    cfg = model.config
    if getattr(model, "family", None) != "vits" or getattr(cfg, "phoneme_id_map", None) is None:
        raise CheckpointError(f"{args.model}: a {getattr(model, 'family', '?')} model without a phoneme map cannot "
                              "speak text (edgeflow say needs a VITS model.pt)")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    voice = VoiceConfig.from_dict({"sample_rate": cfg.sample_rate, "phoneme_type": cfg.phoneme_type,
                                   "espeak": {"voice": cfg.espeak_voice}, "phoneme_id_map": cfg.phoneme_id_map,
                                   "num_symbols": cfg.num_symbols,
                                   "inference": {"noise_scale": cfg.noise_scale, "length_scale": cfg.length_scale,
                                                 "noise_w": cfg.noise_w}}, str(args.model))
    s = scales(voice)

    def chunks():
        missing, count = frontend.new_counter(), 0
        for i, phonemes in enumerate(voice.phonemize_iter(text)):
            ids = frontend.phonemes_to_ids(phonemes, voice.phoneme_id_map, missing)
            yield model.synthesize(ids, seed=args.seed + i, **s).float().numpy()
            count += 1
        if missing:
            print(f"edgeflow: warning: {frontend.describe_missing(missing)}")
        if not count:
            raise InputError("the text has nothing to speak (empty, or punctuation only)")
    return chunks(), voice.sample_rate


def run(args) -> int:
    import warnings

    from edgeflow.cli.args import check_out_file
    from edgeflow.core.errors import BundleError, InputError
    from edgeflow.runtime.checks import check_seed
    from edgeflow.runtime.voice import PhonemeWarning, Voice
    from edgeflow.runtime.voice_io import write_wav_stream
    from edgeflow.runtime.voice_config import check_scales, resolve_scales

    src, out = Path(args.model), Path(args.output)
    check_out_file(out)
    if not src.exists():
        raise BundleError(f"not found: {src} (expected a VITS bundle directory, a Piper .onnx or a model.pt)")
    text = read_text(args)
    check_seed(args.seed)
    check_scales(*(0.5 if v is None else v for v in (args.noise_scale, args.length_scale, args.noise_w)))

    def scales(cfg):
        return resolve_scales(cfg, args.noise_scale, args.length_scale, args.noise_w)

    ode = {k: getattr(args, k) for k in ("nfe", "solver", "sway", "guidance") if getattr(args, k, None) is not None}
    if src.is_file() and src.suffix == ".pt":
        if getattr(args, "engine", "auto") != "auto" or getattr(args, "conv_layout", "auto") != "auto":
            raise InputError("--engine and --conv-layout apply to bundles (a model.pt runs in PyTorch)")
        if ode:
            raise InputError("--nfe, --solver, --sway and --guidance apply to flow-matching (fmtts) bundles only")
        chunks, sr = _torch_stream(args, text, scales)
        backend = "PyTorch"
    else:
        voice = Voice.load(src, threads=args.threads, config=args.config, engine=getattr(args, "engine", "auto"),
                           conv_layout=getattr(args, "conv_layout", "auto"))
        if ode and voice.kind != "fmtts":
            raise InputError("--nfe, --solver, --sway and --guidance apply to flow-matching (fmtts) bundles only")
        chunks = voice.speak_stream(text, seed=args.seed, sentence_silence=max(0.0, args.sentence_silence),
                                    **scales(voice.config), **ode)
        wave = getattr(voice, "wave", None)
        stages = "INT8 decoder stages" if len(getattr(wave, "stages", ())) > 1 else "INT8 waveform stage"
        parts = [name for name, attr in (("prior flow", "flow"), (stages, "wave"),
                                          ("text encoder", "text_encoder")) if getattr(voice, attr, None) is not None]
        native = getattr(voice, "engine", None) == "native" and parts
        sr, backend = voice.sample_rate, f"onnxruntime, {voice.kind}" + (
            f", native {', '.join(parts[:-1]) + ' and ' + parts[-1] if len(parts) > 1 else parts[0]}"
            + _amx_note(voice) if native else "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PhonemeWarning)
        stats = write_wav_stream(chunks, sr, out)
    for w in caught:
        print(f"edgeflow: warning: {w.message}")
    print(f"wrote {out}: {stats['seconds']:.2f} s of audio at {sr} Hz ({backend}; first audio after "
          f"{stats['time_to_first_audio']:.2f} s, RTF {stats['wall'] / max(stats['seconds'], 1e-9):.3f})")
    return 0


def _amx_note(voice) -> str:
    """", INT8 on AMX tiles" where the voice's native parts run INT8 convs and the library runs them on AMX."""
    from edgeflow.runtime import native

    int8 = any(getattr(voice, a, None) is not None for a in ("wave", "text_encoder")) or \
        getattr(getattr(voice, "flow", None), "int8_layers", 0)
    return ", INT8 on AMX tiles" if int8 and native.available() and native.info()["amx"] else ""

"""TensorRT on the device for a text-to-speech (VITS) bundle: two graphs, two engines.

The encoder graph (phoneme ids -> prior statistics and durations) and the decoder graph (prior statistics +
noise -> audio) get one strongly typed engine each (``encoder.plan``, ``decoder.plan``), with shape profiles
over phoneme-id counts and frame counts. The bundle carries ``tensorrt.json`` (graph checks, profiles, the two
``trtexec`` commands) and ``build_engine.sh``; ``edgeflow build-engine BUNDLE`` builds both with the Python
API on the device.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Dict, List, Tuple

#: phoneme ids of the encoder profile: min, opt, max (Piper ids: about 40 per second of speech)
PROFILE_IDS = (2, 120, 1000)
#: frames of the decoder profile: min, opt, max (about 0.1 s, 1 s and 16 s at hop 256, 22.05 kHz)
PROFILE_FRAMES = (8, 88, 1384)
#: engine file per graph role
ENGINES = {"encoder": "encoder.plan", "decoder": "decoder.plan"}


def voice_profiles(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Tuple[Tuple[int, ...], ...]]]:
    """{role: {input name: (min shape, opt shape, max shape)}} of a voice bundle's two graphs."""
    c = int(manifest["inter_channels"])
    enc = {"input": tuple((1, n) for n in PROFILE_IDS), "input_lengths": ((1,),) * 3, "scales": ((3,),) * 3,
           "noise_w_z": tuple((1, 2, n) for n in PROFILE_IDS)}
    dec = {name: tuple((1, c, f) for f in PROFILE_FRAMES) for name in ("m_p", "logs_p", "noise_z")}
    dec["scales"] = ((3,),) * 3
    return {"encoder": enc, "decoder": dec}


def _shape_arg(profile: Dict[str, Tuple[Tuple[int, ...], ...]], k: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[k])}" for name, shapes in profile.items())


def voice_trtexec_commands(bundle_dir: str | Path, manifest: Dict[str, Any]) -> Dict[str, List[str]]:
    """{role: trtexec argv} building each graph's engine from the bundle's ONNX."""
    out = {}
    for role, profile in voice_profiles(manifest).items():
        onnx_file = Path(bundle_dir) / manifest["graphs"][role]
        out[role] = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={Path(bundle_dir) / ENGINES[role]}",
                     "--stronglyTyped", f"--minShapes={_shape_arg(profile, 0)}",
                     f"--optShapes={_shape_arg(profile, 1)}", f"--maxShapes={_shape_arg(profile, 2)}",
                     "--skipInference"]
    return out


def voice_tensorrt_plan(bundle_dir: str | Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The ``tensorrt.json`` of a voice bundle: per graph its TensorRT check and build command."""
    from edgeflow.export.tensorrt import check_graph

    cmds = voice_trtexec_commands(".", manifest)
    return {"graph_check": {role: check_graph(Path(bundle_dir) / manifest["graphs"][role]) for role in cmds},
            "tensorrt_versions": ["10.3 (JetPack 6.2)", "11"],
            "profile": {"phoneme_ids": dict(zip(("min", "opt", "max"), PROFILE_IDS)),
                        "frames": dict(zip(("min", "opt", "max"), PROFILE_FRAMES))},
            "trtexec": {role: " ".join(shlex.quote(c) for c in cmd) for role, cmd in cmds.items()},
            "note": "Run `edgeflow build-engine BUNDLE` on the device (or both trtexec commands from inside the "
                    "bundle directory). Engines only run on the GPU and TensorRT version that built them."}


def build_voice_engines(bundle_dir: str | Path, manifest: Dict[str, Any], workspace_mb: int = 1024) -> List[Path]:
    """Build both engines on this device (strongly typed networks). Returns their paths.

    Raises:
        DependencyError: TensorRT is not installed here. BundleError: an ONNX does not parse or build.
    """
    from edgeflow.export.tensorrt import build_engine_from

    return [build_engine_from(Path(bundle_dir) / manifest["graphs"][role], profile,
                              Path(bundle_dir) / ENGINES[role], workspace_mb)
            for role, profile in voice_profiles(manifest).items()]

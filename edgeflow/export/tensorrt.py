"""What a Jetson / GPU device needs to build its TensorRT engine from a bundle.

Engines are device-specific, so a bundle carries the ONNX, a graph check against TensorRT's
documented ONNX operator support, and the exact ``trtexec`` command (shape profiles for the mel
lengths). ``edgeflow build-engine BUNDLE`` runs on the device; TensorRT is imported lazily.

The operator list is the onnx-tensorrt support matrix (``docs/operators.md``; TensorRT 10.x parses
opsets 9-20). TensorRT 11 accepts only explicit quantization (Q/DQ in the graph, no calibrators and
no --int8/--fp16 flags): we always build *strongly typed* networks, whose precisions come from the
graph, which works on TensorRT 10.3 (JetPack 6.2) and 11 alike.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

#: ONNX ops the TensorRT 10.x ONNX parser supports (onnx-tensorrt docs/operators.md).
TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization GRU HardSigmoid HardSwish Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mod Mul Neg NonZero Not OneHot Or Pad ParametricSoftplus Pow
PRelu QuantizeLinear RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample
Where Xor
""".split())

#: Mel lengths (frames) of the optimisation profile: min, opt, max (about 0.1 s, 1 s and 16 s at 22.05 kHz).
PROFILE_FRAMES = (8, 88, 1384)


def check_graph(onnx_path: str | Path) -> Dict[str, Any]:
    """Check an ONNX graph against TensorRT's ONNX support and restrictions.

    Returns:
        {"ops": {op: count}, "unsupported": [...], "problems": [...], "ok": bool}
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {o for n in g.node if n.op_type == "Constant" for o in n.output}
    dq_of_init = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    ops = Counter(n.op_type for n in g.node)
    unsupported = sorted(op for op in ops if op not in TRT_ONNX_OPS)
    problems: List[str] = []
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in inits and n.input[1] not in dq_of_init \
                and n.input[1] not in consts:
            problems.append(f"{n.name or n.op_type}: weights are not an initializer")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.any():
                problems.append(f"{n.name or n.op_type}: zero point must be 0 for TensorRT")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not 9 <= opset <= 20:
        problems.append(f"opset {opset} is outside TensorRT 10's range 9-20")
    return {"ops": dict(sorted(ops.items())), "unsupported": unsupported, "problems": problems[:20],
            "opset": opset, "ok": not unsupported and not problems}


def shape_args(io: Dict[str, Any], hop: int, frames=PROFILE_FRAMES) -> Dict[str, str]:
    """trtexec --minShapes/--optShapes/--maxShapes values for the mel lengths in ``frames``."""
    out = {}
    for key, f in zip(("min", "opt", "max"), frames):
        out[key] = f"mel:1x{io.get('n_mels', 80)}x{f},z:1x{f * hop},sigma:1"
    return out


def trtexec_command(bundle_dir: str | Path, manifest: Dict[str, Any], engine: str = "model.plan") -> List[str]:
    """The trtexec command (argv) that builds the engine on the device from the bundle's ONNX."""
    hop = int(manifest["mel"]["hop_length"])
    shapes = shape_args({"n_mels": manifest["mel"]["n_mels"]}, hop)
    return ["trtexec", f"--onnx={Path(bundle_dir) / 'model.onnx'}", f"--saveEngine={Path(bundle_dir) / engine}",
            "--stronglyTyped", f"--minShapes={shapes['min']}", f"--optShapes={shapes['opt']}",
            f"--maxShapes={shapes['max']}", "--skipInference"]


def tensorrt_plan(bundle_dir: str | Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The ``tensorrt.json`` a Jetson/GPU bundle carries: graph check, versions and the build command."""
    cmd = trtexec_command(".", manifest)
    return {"graph_check": check_graph(Path(bundle_dir) / "model.onnx"),
            "tensorrt_versions": ["10.3 (JetPack 6.2)", "11"],
            "profile_frames": dict(zip(("min", "opt", "max"), PROFILE_FRAMES)),
            "trtexec": " ".join(shlex.quote(c) for c in cmd),
            "note": "Run `edgeflow build-engine BUNDLE` on the device (or the trtexec command from inside the "
                    "bundle directory). Engines only run on the GPU and TensorRT version that built them."}


def build_engine(bundle_dir: str | Path, manifest: Dict[str, Any], engine: str = "model.plan",
                 workspace_mb: int = 1024) -> Path:
    """Build a vocoder bundle's TensorRT engine on this device with the Python API (strongly typed network).

    Args:
        bundle_dir: the bundle directory.
        manifest: its manifest, as read (and verified) by :func:`edgeflow.runtime.bundle.read_manifest`.

    Raises:
        DependencyError: TensorRT is not installed here.
        BundleError: the ONNX does not parse.
    """
    hop, n_mels = int(manifest["mel"]["hop_length"]), int(manifest["mel"]["n_mels"])
    profile = {"mel": tuple((1, n_mels, f) for f in PROFILE_FRAMES), "z": tuple((1, f * hop) for f in PROFILE_FRAMES),
               "sigma": ((1,),) * 3}
    return build_engine_from(Path(bundle_dir) / "model.onnx", profile, Path(bundle_dir) / engine, workspace_mb)


def build_engine_from(onnx_path: Path, profile: Dict[str, Any], out: Path, workspace_mb: int = 1024) -> Path:
    """Build one strongly typed engine from ``onnx_path`` with ``profile`` {input: (min, opt, max) shapes}."""
    from edgeflow.core.errors import BundleError, DependencyError, short_reason
    from edgeflow.core.io import atomic_path

    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise DependencyError("TensorRT is not installed here: build-engine runs on the device (Jetson: JetPack "
                              "ships it; elsewhere pip install edgeflow[tensorrt]). Or run the trtexec command "
                              "in the bundle's tensorrt.json") from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {onnx_path.name}: {short_reason(errs, 300)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    prof = builder.create_optimization_profile()
    for name, (mn, op, mx) in profile.items():
        prof.set_shape(name, mn, op, mx)
    config.add_optimization_profile(prof)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BundleError(f"TensorRT failed to build the engine of {onnx_path.name} (see the TensorRT log above)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(blob))
    return out

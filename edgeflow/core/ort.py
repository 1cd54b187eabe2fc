"""onnxruntime session options, the one place they are made (onnxruntime is imported lazily, so the
core layer stays importable without it).

Every session edgeflow opens (the runtime's synthesizer, the exporter's parity check, INT8
calibration and budget checks, the Piper voice of the corpus builder) gets its options here.
"""

from __future__ import annotations

from typing import Any, Optional

#: Graphs with more nodes than this are loaded with onnxruntime's memory-reuse planning off: the planner
#: is superlinear in graph size (the unrolled cached WaveFlow demo graph, ~20k nodes, takes minutes to
#: plan, ~10 s without); intermediates are still freed after their last use.
LARGE_GRAPH_NODES = 4000


def session_options(threads: Optional[int] = None, nodes: int = 0, basic: bool = False) -> Any:
    """onnxruntime ``SessionOptions``: quiet logging (errors only), and

    Args:
        threads: intra-op threads, with one inter-op thread (None or 0: onnxruntime's default).
        nodes: the graph's node count; more than :data:`LARGE_GRAPH_NODES` turns memory-reuse planning off.
        basic: basic graph optimizations only (Q/DQ pairs then run as quantize -> float op -> dequantize,
            numerically what the fused INT8 kernels compute, and the session starts much faster).

    Returns:
        An ``onnxruntime.SessionOptions``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if nodes > LARGE_GRAPH_NODES:
        opts.enable_mem_reuse = False
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return opts

"""Post-export compaction: one ``Constant`` node per distinct value.

Why a float bundle is larger than its checkpoint: the weights are stored once (the exported
graph has no duplicated initializers), but the cached WaveFlow inverse is unrolled row by row,
and the TorchScript exporter writes a separate ``Constant`` node (mostly int64 Slice bounds and
axes) for every use, each with its own shape entry in ``value_info``. On the demo model
(936,592 parameters, 3.7 MB of float32 weights) that was 10,517 Constant nodes (0.83 MB) plus
their shape entries. :func:`dedup_constants` keeps the first Constant of each distinct value,
points every consumer of a duplicate at it and drops the duplicates and their ``value_info``.
The graph computes exactly the same function (constants are immutable values).
"""

from __future__ import annotations

import hashlib
from typing import Dict


def _key(node) -> str | None:
    """A hash of a Constant node's value attribute (None: not a plain Constant we can merge)."""
    if node.op_type != "Constant" or len(node.output) != 1 or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    h = hashlib.sha256(attr.name.encode())
    h.update(attr.SerializeToString())
    return h.hexdigest()


def dedup_constants(model) -> Dict[str, int]:
    """Merge identical ``Constant`` nodes of ``model``'s main graph in place.

    Graphs with subgraphs (If / Loop / Scan bodies may capture outer names) are left as they are.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        ``{"constants_before", "constants_after"}``.
    """
    graph = model.graph
    before = sum(n.op_type == "Constant" for n in graph.node)
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):     # GRAPH / GRAPHS attributes
        return {"constants_before": before, "constants_after": before}
    outputs = {o.name for o in graph.output}
    first: Dict[str, str] = {}
    rename: Dict[str, str] = {}
    keep = []
    for node in graph.node:
        key = _key(node)
        if key is not None and node.output[0] not in outputs:
            if key in first:
                rename[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        keep.append(node)
    if not rename:
        return {"constants_before": before, "constants_after": before}
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    vi = [v for v in graph.value_info if v.name not in rename]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    return {"constants_before": before, "constants_after": before - len(rename)}

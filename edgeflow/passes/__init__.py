"""Passes: a config dataclass plus a registered handler, applied in place to an :class:`Artifact`.

Importing this package registers the built-in passes. Later passes (quantize, distill, prune,
reduce_flows) register themselves the same way; the pipeline looks them up by name only.
"""

from edgeflow.passes.base import PASSES, Artifact, PassConfig, PassContext, apply_pass, register_pass  # noqa: F401
from edgeflow.passes import builtin as _builtin  # noqa: F401  (freeze, export, validate)
from edgeflow.passes import distill as _distill  # noqa: F401,E402  (distill)
from edgeflow.passes import prune as _prune  # noqa: F401,E402  (prune)
from edgeflow.passes import reduce_flows as _reduce_flows  # noqa: F401,E402  (reduce_flows)
from edgeflow.passes import quantize as _quantize  # noqa: F401,E402  (quantize: int8 / float16 bundles)

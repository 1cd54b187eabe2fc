"""Validation: the metric table (:mod:`.table`), objective metrics (:mod:`.metrics`, :mod:`.perceptual`),
compute cost (:mod:`.cost`) and evaluation-only reference vocoders (:mod:`.baselines`).

Only numpy/scipy are needed at import time; the perceptual metrics import their packages
(pesq, pystoi, speechmos, pocketsphinx) when called and raise
:class:`edgeflow.core.errors.DependencyError` when one is missing.
"""

from edgeflow.validate.table import METRICS, TABLE, compare, no_reference  # noqa: F401

"""Invertible building blocks with one contract (see :class:`edgeflow.flows.base.InvertibleModule`)."""

from edgeflow.flows.base import Inverse, InvertibleModule, Sequential  # noqa: F401

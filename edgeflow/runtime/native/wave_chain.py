"""A VITS decoder's upsampling stages chained in the native engine: the earlier stages (each its upsampler and
resblocks, no conv_post: :func:`edgeflow.runtime.native.wave_stage.pack_stage` with ``post_w=None``) ahead of the
waveform-rate stage, all block-scaled INT8 (``ef_hq8.c``).

A bundle's ``wave_stage.npz`` holds the last stage's arrays as :mod:`edgeflow.runtime.native.wave_stage` names them
and, with the ``tts_head`` pass, each earlier stage k's under ``head.{k}.`` (``head.0.spec``, ``head.0.up.q``, ...).

Example::

    wave = load_wave(load_arrays("bundle/wave_stage.npz"), threads=2)
    audio = wave.run(x)      # x [cin, T]: the first native stage's input (conv_pre's output) -> audio [T x strides]
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import BundleError
from edgeflow.runtime.native.wave_stage import WaveStage

_HEAD = re.compile(r"^head\.(\d+)\.(.+)$")


def split_arrays(arrays: Dict[str, np.ndarray]) -> Tuple[List[Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
    """(the earlier stages' arrays in run order, the last stage's) of a ``wave_stage.npz``.

    Raises:
        BundleError: the earlier stages are not numbered 0, 1, ...
    """
    head: Dict[int, Dict[str, np.ndarray]] = {}
    last = {}
    for key, value in arrays.items():
        m = _HEAD.match(key)
        if m:
            head.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            last[key] = value
    if sorted(head) != list(range(len(head))):
        raise BundleError(f"waveform stages: the earlier stages are numbered {sorted(head)}, not 0, 1, ...")
    return [head[k] for k in range(len(head))], last


def join_arrays(head: List[Dict[str, np.ndarray]], last: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The inverse of :func:`split_arrays`."""
    out = {k: v for k, v in last.items() if not _HEAD.match(k)}
    for i, arrays in enumerate(head):
        out.update({f"head.{i}.{k}": v for k, v in arrays.items()})
    return out


class WaveChain:
    """Stages run one after the other (each a :class:`WaveStage`; thread-safe as they are).

    Args:
        stages: the earlier stages (no conv_post, each with its upsampler) then the last one.
    """

    def __init__(self, stages: List[WaveStage]):
        for a, b in zip(stages, stages[1:]):
            if a.has_post or a.channels != b.input_channels:
                raise BundleError(f"waveform stages: a stage of {a.channels} channels"
                                  f"{' with conv_post' if a.has_post else ''} cannot feed one that takes "
                                  f"{b.input_channels}")
        self.stages = stages
        self.input_channels = stages[0].input_channels
        self.stride = int(np.prod([s.stride for s in stages]))
        self.has_post = stages[-1].has_post

    def run(self, x: np.ndarray) -> np.ndarray:
        """The last stage's output (audio [T x stride]) of the first stage's input x [input_channels, T]."""
        for stage in self.stages:
            x = stage.run(x)
        return x


def load_wave(arrays: Dict[str, np.ndarray], threads: Optional[int] = None):
    """The bundle's native stages: a :class:`WaveStage`, or a :class:`WaveChain` where earlier stages are there.

    Raises:
        BundleError: the arrays do not describe stages, or the last one has no conv_post (it would give [C, T], not
            audio).
    """
    head, last = split_arrays(arrays)
    out = WaveStage(last, threads=threads)
    if not out.has_post:
        raise BundleError("waveform stages: the last stage has no conv_post (it must end in audio)")
    if not head:
        return out
    return WaveChain([WaveStage(a, threads=threads) for a in head] + [out])

"""Progress lines with an ETA for steps that take more than a few seconds.

A step says how much work it has (``total``, any unit: clips, audio seconds) and reports each part
done; :class:`Progress` prints ``"    LABEL: 3/8 clips, 12 s, ETA 20 s"`` once the step has run for
:data:`AFTER` seconds, then at most every :data:`EVERY` seconds, so quick steps stay silent.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

#: seconds a step runs before its first progress line
AFTER = 3.0
#: seconds between progress lines
EVERY = 5.0


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


class Progress:
    """Progress of one step.

    Args:
        label: what is being done (e.g. "scoring the final bundle").
        total: the amount of work (> 0).
        log: where lines go (``print`` or the pipeline's log); None: silent.
        unit: the unit of ``total`` shown after the count (e.g. "clips").
    """

    def __init__(self, label: str, total: float, log: Optional[Callable[[str], None]], unit: str = ""):
        self.label, self.total, self.log, self.unit = label, float(max(total, 1e-9)), log, unit
        self.done = 0.0
        self.t0 = time.perf_counter()
        self.last = None

    def eta(self) -> Optional[float]:
        """Seconds left at the pace so far (None before any work is done)."""
        if self.done <= 0:
            return None
        return (time.perf_counter() - self.t0) / self.done * max(0.0, self.total - self.done)

    def advance(self, amount: float = 1.0) -> None:
        """Count ``amount`` more work done and print a line if it is time to."""
        self.done += amount
        now = time.perf_counter()
        elapsed = now - self.t0
        if self.log is None or elapsed < AFTER or (self.last is not None and now - self.last < EVERY):
            return
        self.last = now
        count = f"{self.done:g}/{self.total:g}{(' ' + self.unit) if self.unit else ''}"
        left = self.eta()
        tail = "done" if self.done >= self.total else f"ETA {_secs(left)}"
        self.log(f"    {self.label}: {count}, {_secs(elapsed)}, {tail}")

"""The text front-end lives in :mod:`edgeflow.text` (below training and the runtime); this name is kept for
code written against ``edgeflow.runtime.text`` and is the very same module object."""

import sys

from edgeflow import text as _text

sys.modules[__name__] = _text

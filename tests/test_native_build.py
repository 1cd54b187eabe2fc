"""The native engine's C library is built and current: ``pip install`` treats the extension as optional, so a C
error leaves either no library (every native test then skips) or, in an editable tree, the previous build (the
tests then run old code). Both must fail here instead. (The ``*_driver.c`` files are standalone programs for the
cross-compiled tests, not part of the library.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeflow.runtime import native

SRC = Path(native.__file__).parent
#: Seconds a source file may be newer than the library (files unpacked from a wheel or sdist at nearly one time).
SLACK_SECONDS = 5.0


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler: the library is optional")
@pytest.mark.skipif(bool(os.environ.get("EDGEFLOW_NATIVE_LIB")), reason="EDGEFLOW_NATIVE_LIB names another build")
def test_library_is_built_and_not_older_than_its_sources():
    lib = native.library_path()
    assert lib is not None and native.available(), f"the C library did not build or load: {native.load_error()}"
    sources = [p for p in SRC.iterdir() if p.suffix in (".c", ".h") and not p.stem.endswith("_driver")]
    newest = max(sources, key=lambda p: p.stat().st_mtime)
    age = newest.stat().st_mtime - lib.stat().st_mtime
    assert age <= SLACK_SECONDS, (f"{lib.name} is {age:.0f} s older than {newest.name}: a rebuild failed or was not "
                                  f"run (pip install -e . --no-deps; compile by hand to see the error)")

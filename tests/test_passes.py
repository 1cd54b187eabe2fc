"""The pass registry: one module per pass found without a hand-kept list, a handler required at registration,
and what the pipeline needs to know about a pass declared on it (not looked up by name)."""

from __future__ import annotations

import dataclasses
import pkgutil

import pytest

import edgeflow.passes as passes_pkg
from edgeflow.passes import PASSES, PassConfig, register_pass
from edgeflow.passes.base import make_config


def test_every_pass_module_is_imported_and_registered():
    modules = {m.name for m in pkgutil.iter_modules(passes_pkg.__path__)} - {"base"}
    assert modules >= {"builtin", "distill", "prune", "quantize", "reduce_flows"}
    # passes the test suite registers itself (tests/test_pipeline*.py) live outside the package
    owners = [PASSES.get(n).handler.__module__ for n in PASSES]
    registered = {m.rsplit(".", 1)[1] for m in owners if m.startswith("edgeflow.passes.")}
    assert registered <= modules and {"builtin", "distill", "prune", "quantize", "reduce_flows"} <= registered
    assert {"freeze", "export", "validate", "distill", "prune", "quantize", "reduce_flows"} <= set(PASSES)


def test_a_pass_needs_a_handler():
    @dataclasses.dataclass
    class NoHandler(PassConfig):
        pass

    for bad in (None, "not callable"):
        with pytest.raises(ValueError, match="needs a handler"):
            register_pass("test_no_handler", NoHandler, bad)
    assert "test_no_handler" not in PASSES
    with pytest.raises(ValueError, match="PassConfig dataclass"):
        register_pass("test_not_a_config", dict, lambda a, c, x: {})
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("freeze", NoHandler, lambda a, c, x: {})


def test_output_changing_is_declared():
    assert make_config("freeze").changes_output is False and make_config("validate").changes_output is False
    assert all(make_config(n, {"ratio": 0.25} if n == "prune" else {"n_flows": 1} if n == "reduce_flows"
                           else {}).changes_output for n in ("export", "prune", "reduce_flows", "distill"))
    assert PASSES.get("freeze").changes_output is False and PASSES.get("prune").changes_output is True


def test_pipeline_names_no_pass():
    """The pipeline modules decide from declarations, never from a pass's name."""
    import re
    from pathlib import Path

    import edgeflow

    root = Path(edgeflow.__file__).parent
    for f in [root / "pipeline.py", *root.glob("pipeline_*.py")]:
        text = f.read_text()
        for name in PASSES:
            assert not re.search(rf"""(==|!=|\bin\b)\s*["']{name}["']|["']{name}["']\s*(==|!=)""", text), \
                f"{f.name} special-cases the {name!r} pass"

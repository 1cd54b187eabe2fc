"""A restricted unpickler for torch files that pickle whole model objects (the original NVIDIA WaveGlow files).

Such a file holds ``{"model": glow.WaveGlow(...), ...}``: module objects pickled by class path, tensors
rebuilt by torch's own storage and rebuild functions. ``torch.load(weights_only=True)`` refuses it (the
classes are not weights), and a plain ``torch.load`` would import ``glow`` and could run anything the file
names. :func:`load_pickled_objects` reads it through ``torch.load``'s storage machinery with a pickle
module whose ``find_class`` answers only from an allow-list:

* torch's tensor rebuild functions (``torch._utils._rebuild_tensor_v2`` and its kin), ``OrderedDict``,
  ``set``, ``torch.Size`` (storages are resolved by torch itself);
* the model and layer class paths the caller allows (``glow.WaveGlow``, ``torch.nn.modules.conv.Conv1d``,
  ...): each is answered with a :class:`PickledObject` placeholder that records its class path and the
  attribute dict the file sets (``BUILD``), never the real class, so no ``__setstate__`` of the real class
  runs and nothing is imported.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises :class:`RefusedGlobal`
before it is resolved, so a malicious reduce never runs.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Tuple

import torch


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (``path`` is ``module.name``)."""

    def __init__(self, path: str):
        super().__init__(f"refused global {path}")
        self.path = path


class PickledObject:
    """Stand-in for an allowed class: ``cls_path`` (e.g. ``glow.WN``) and the attribute dict the file set."""

    cls_path = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:        # (dict state, slot state)
            state = dict(state[0] or {}, **(state[1] or {}))
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.cls_path}: unexpected object state {type(state).__name__}")
        self.__dict__["state"] = state

    @property
    def attrs(self) -> Dict[str, Any]:
        """The pickled attribute dict (empty if the file set none)."""
        return self.__dict__.get("state", {})

    def __repr__(self) -> str:
        return f"<pickled {self.cls_path}>"


def _none(*_args: Any) -> None:
    """Stands for functions old torch pickled by reference whose result is irrelevant (e.g. a module's
    ``_backend``): returns None."""
    return None


#: Data-building functions torch pickles with tensors (they build tensors, run nothing else).
SAFE_FUNCTIONS: Dict[str, Any] = {
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "torch.Size": torch.Size,
    # torch <= 0.4 pickled each module's ``_backend`` as a call of this function (no arguments)
    "torch.nn.backends.thnn._get_thnn_function_backend": _none,
}


def _placeholder_classes(paths: Iterable[str]) -> Dict[str, type]:
    return {p: type(p.rsplit(".", 1)[-1], (PickledObject,), {"cls_path": p}) for p in paths}


def _pickle_module(allowed: Dict[str, Any]) -> types.ModuleType:
    """A module exposing ``Unpickler`` and ``load`` that resolve globals from ``allowed`` only."""

    def reconstructor(cls, base, state):           # copyreg._reconstructor, protocols 0/1
        if not (isinstance(cls, type) and issubclass(cls, PickledObject)) or base is not object:
            raise pickle.UnpicklingError("refused copyreg._reconstructor of a class outside the allow-list")
        obj = object.__new__(cls)
        if state is not None:
            obj.__setstate__(state)
        return obj

    table = dict(allowed, **{"copyreg._reconstructor": reconstructor, "builtins.object": object})
    for path, value in table.items():     # fresh closures: a BUILD on a function cannot touch torch's own
        if isinstance(value, types.FunctionType):
            table[path] = (lambda fn: lambda *args, **kwargs: fn(*args, **kwargs))(value)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # Python 2 names (torch.save writes protocol 2): __builtin__.set -> builtins.set, as pickle does
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            path = f"{module}.{name}"
            if path not in table:
                raise RefusedGlobal(path)
            return table[path]

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    mod = types.ModuleType("edgeflow_restricted_pickle")
    mod.Unpickler, mod.load = Unpickler, load
    return mod


def load_pickled_objects(path: str | Path, classes: Iterable[str]) -> Any:
    """Read a torch file whose pickle holds objects of ``classes`` (class paths) as :class:`PickledObject`.

    Args:
        path: a ``torch.save`` file (zip or legacy format).
        classes: allowed class paths (``module.Name``); every other global but :data:`SAFE_FUNCTIONS` is refused.

    Returns:
        The unpickled object: dicts, lists, tensors (CPU) and placeholders.

    Raises:
        RefusedGlobal: the file names a global outside the allow-list (nothing of it was run).
        Exception: whatever torch raises on a corrupt file (the caller words the error).
    """
    allowed = dict(SAFE_FUNCTIONS, **_placeholder_classes(classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_pickle_module(allowed))


def module_tensors(obj: Any, prefix: str = "") -> Tuple[Dict[str, torch.Tensor], Dict[str, PickledObject]]:
    """Flatten a pickled module tree: ({dotted name: tensor}, {dotted module name: placeholder}).

    Tensors come from each module's ``_parameters`` and ``_buffers`` and from tensor-valued plain attributes
    (old-style weight norm keeps the computed ``weight`` there next to the ``weight_g`` / ``weight_v``
    parameters); children from ``_modules``.
    """
    tensors: Dict[str, torch.Tensor] = {}
    modules: Dict[str, PickledObject] = {prefix.rstrip("."): obj}
    attrs = obj.attrs if isinstance(obj, PickledObject) else {}
    for key, value in attrs.items():
        if torch.is_tensor(value):
            tensors[prefix + key] = value
    for group in ("_buffers", "_parameters"):
        for key, value in (attrs.get(group) or {}).items():
            if torch.is_tensor(value):
                tensors[prefix + key] = value
    for key, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            t, m = module_tensors(child, f"{prefix}{key}.")
            tensors.update(t)
            modules.update(m)
    return tensors, modules


def read_torch_weights(path: str | Path, what: str) -> Tuple[Any, bool]:
    """``torch.load(path, weights_only=True)``, or why not. Returns (object, needs_objects).

    ``needs_objects`` is True (object None) when the file is a readable pickle that names classes beyond
    weights (a pickled model object: the caller may retry with :func:`load_pickled_objects`).

    Raises:
        CheckpointError: missing, not a PyTorch file, or corrupt (one line naming ``what`` was expected).
    """
    from edgeflow.core.errors import CheckpointError, not_a_file, short_reason
    from edgeflow.models.checkpoint import _pickle_runs_code  # noqa: PLC2701 - shared safety probe

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(not_a_file("checkpoint", path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or _pickle_runs_code(path):
            return None, True
        reason = "unreadable pickle data"
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes raise KeyError, RuntimeError, ...
        reason = "unreadable pickle data" if isinstance(exc, LookupError) else short_reason(exc)
    raise CheckpointError(f"{path}: not {what} (not a readable PyTorch file: {reason})")

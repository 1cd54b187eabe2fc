"""The native engine: edgeflow's own C kernels for a bundle's flows, loaded with ctypes. No torch, no onnxruntime.

The C library (``ef_kernels.c``, built at ``pip install`` as ``edgeflow/runtime/native/_kernels*.so``; a plain
shared library, no Python C API) runs the whole WaveFlow inverse (float32, or with INT8 dilated / conditioning
convs: ``ef_int8.c``) from the bundle's ``kernels.npz`` (:mod:`edgeflow.runtime.native.format`, written by the
``kernels`` pass). A missing or failed build leaves edgeflow importable: :func:`available` is then False and
:func:`load_error` says why in one line.
The same library runs the VITS prior flow (``ef_wn.c``, :mod:`edgeflow.runtime.native.wn`) and WaveGlow's
couplings (:mod:`edgeflow.runtime.native.waveglow`: the same kernels, the cheap parts in numpy).
``EDGEFLOW_NATIVE_LIB`` names another build of the library (a cross-compiled one under an emulator, say);
``EDGEFLOW_NATIVE_AMX=0`` makes it run as on a CPU without AMX (the VNNI / AVX2 / portable INT8 tiles).

:class:`NativeSession` mirrors the part of an onnxruntime ``InferenceSession`` the Synthesizer uses
(``run``, ``get_inputs``, ``get_providers``), so streaming and batching are shared code. It is thread-safe: a
call reads the packed weights only and allocates its own buffers (ctypes releases the GIL during it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np

from edgeflow.core.errors import BundleError, DependencyError, InputError
from edgeflow.runtime.native import format as fmt

#: Instruction-set names of the C library, by its index.
ISAS = ("portable", "avx2", "avx512")
#: What the slots of a run's profile (``NativeSession.run(..., prof=)``) time, in CPU seconds.
PROFILE = ("layer_gemm", "gate", "res_skip", "affine_start", "upsampler", "quantize")
PROFILE_SLOTS = len(PROFILE)
#: The provider name :meth:`NativeSession.get_providers` reports.
PROVIDER = "EdgeflowNativeEngine"
_ERRORS = {-1: "bad arguments", -2: "audio length is not a multiple of the model's height", -3: "out of memory"}
_lock = threading.Lock()
_state: Dict[str, Any] = {}


def library_path() -> Optional[Path]:
    """The C library this process loads (``EDGEFLOW_NATIVE_LIB``, else the build beside this module), or None."""
    env = os.environ.get("EDGEFLOW_NATIVE_LIB")
    if env:
        return Path(env)
    here = Path(__file__).parent
    found = sorted(p for pat in ("_kernels*.so", "_kernels*.pyd", "_kernels*.dylib") for p in here.glob(pat))
    return found[0] if found else None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    f32, i32 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
    i8, u8 = ctypes.POINTER(ctypes.c_int8), ctypes.POINTER(ctypes.c_uint8)
    sigs = {"ef_version": ([], ctypes.c_int), "ef_get_isa": ([], ctypes.c_int),
            "ef_set_isa": ([ctypes.c_int], ctypes.c_int), "ef_has_isa": ([ctypes.c_int], ctypes.c_int),
            "ef_openmp": ([], ctypes.c_int), "ef_amx_available": ([], ctypes.c_int),
            "ef_set_amx": ([ctypes.c_int], ctypes.c_int), "ef_amx_in_use": ([], ctypes.c_int),
            "ef_wf_create": ([i32, ctypes.c_int, f32, ctypes.c_longlong], ctypes.c_void_p),
            "ef_wf_free": ([ctypes.c_void_p], None),
            "ef_wf_run": ([ctypes.c_void_p, f32, ctypes.c_int, ctypes.c_int, f32, ctypes.c_float, f32, ctypes.c_int,
                           ctypes.POINTER(ctypes.c_double)], ctypes.c_int),
            "ef_wf_set_q8": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, i8, f32], ctypes.c_int),
            "ef_q8_kernel": ([], ctypes.c_char_p),
            "ef_q8_gemm_test": ([ctypes.c_int, ctypes.c_int, i8, u8, ctypes.c_int, i32], ctypes.c_int)}
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def library() -> ctypes.CDLL:
    """The loaded C library (loaded once). Raises DependencyError (one line) when it is unavailable."""
    with _lock:
        if "lib" not in _state and "error" not in _state:
            path = library_path()
            try:
                if path is None:
                    raise OSError("not built (no C compiler at install time? reinstall with one: pip install .)")
                lib = _bind(ctypes.CDLL(str(path)))
                if lib.ef_version() != fmt.FORMAT:
                    raise OSError(f"version {lib.ef_version()} of {path.name}, this edgeflow needs {fmt.FORMAT}")
                _state["lib"] = lib
            except (OSError, AttributeError) as exc:
                _state["error"] = f"the native engine is unavailable: {str(exc).splitlines()[0] if str(exc) else exc}"
    if "error" in _state:
        raise DependencyError(_state["error"])
    return _state["lib"]


def bind(sigs: Dict[str, Any], what: str) -> ctypes.CDLL:
    """The loaded library with the functions of one kernel family bound: ``sigs`` maps a name to (argtypes,
    restype), bound once per process.

    Raises:
        DependencyError: the library is unavailable, or was built before ``what`` existed (one line).
    """
    lib = library()
    with _lock:
        bound = _state.setdefault("bound", set())
        if not bound.issuperset(sigs):
            try:
                for name, (args, res) in sigs.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = args, res
            except AttributeError:
                raise DependencyError(f"the native engine's library has no {what} (rebuild it: pip install .)") \
                    from None
            bound.update(sigs)
    return lib


def available() -> bool:
    """Whether the C library loads here."""
    try:
        library()
        return True
    except DependencyError:
        return False


def load_error() -> Optional[str]:
    """Why the native engine is unavailable (one line), or None when it loads."""
    try:
        library()
        return None
    except DependencyError as exc:
        return str(exc)


def info() -> Dict[str, Any]:
    """The library's facts: path, instruction set in use, its INT8 kernel, whether the INT8 convs run on AMX
    tiles, OpenMP threads (0: built without OpenMP)."""
    lib = library()
    return {"library": str(library_path()), "isa": ISAS[lib.ef_get_isa()],
            "int8_kernel": lib.ef_q8_kernel().decode(), "amx": bool(lib.ef_amx_in_use()),
            "openmp_threads": lib.ef_openmp()}


def int8_gemm(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int32 ``w @ x`` for int8 ``w`` [M, K] and uint8 ``x`` [K, N], by the INT8 kernel of the instruction set in
    use (the engine's own tile and weight packing; tests compare it with exact integer math)."""
    w, x = np.ascontiguousarray(w, np.int8), np.ascontiguousarray(x, np.uint8)
    if w.ndim != 2 or x.ndim != 2 or w.shape[1] != x.shape[0] or 0 in w.shape + x.shape:
        raise InputError(f"int8_gemm: shapes {w.shape} and {x.shape} do not multiply")
    out = np.empty((w.shape[0], x.shape[1]), np.int32)
    rc = library().ef_q8_gemm_test(w.shape[0], w.shape[1], _ptr(w, ctypes.c_int8), _ptr(x, ctypes.c_uint8),
                                   x.shape[1], _ptr(out, ctypes.c_int))
    if rc != 0:
        raise InputError("int8_gemm: out of memory")
    return out


def set_isa(name: str) -> None:
    """Use instruction set ``name`` (one of :data:`ISAS`) from now on, process-wide (tests, benchmarks)."""
    if name not in supported_isas() or library().ef_set_isa(ISAS.index(name)) != 0:
        raise InputError(f"instruction set {name!r} is not available here (have: {', '.join(supported_isas())})")


def amx_available() -> bool:
    """Whether this CPU has AMX-INT8 and the OS lets this process use it. The engine's INT8 convs (the decoder
    stage kernel, the text encoder, the WaveNet couplings, WaveFlow's layers) then run on AMX tiles while the
    AVX-512 instruction set is in use, bit-identical to its VNNI tiles."""
    return bool(library().ef_amx_available())


def set_amx(on: bool) -> None:
    """Run those INT8 convs on AMX tiles (where available: the default) or not, process-wide (tests, benchmarks);
    it takes effect at the next run.

    Raises:
        InputError: ``on`` where AMX is not available.
    """
    if library().ef_set_amx(int(bool(on))) != 0:
        raise InputError("AMX is not available on this CPU or kernel")


def supported_isas() -> List[str]:
    """The instruction sets this CPU and build can run."""
    lib = library()
    return [n for i, n in enumerate(ISAS) if lib.ef_has_isa(i)]


def _ptr(a: np.ndarray, kind=ctypes.c_float):
    return a.ctypes.data_as(ctypes.POINTER(kind))


def open_session(section: Dict[str, Any], bundle_dir: Path, input_names: List[str], hop_length: int,
                 threads: Optional[int] = None) -> Any:
    """The session of a bundle's checked ``native`` manifest section: :class:`NativeSession` (WaveFlow kernels) or
    :class:`edgeflow.runtime.native.waveglow.WaveGlowSession` (engines ``waveglow-float32``, ``waveglow-int8``)."""
    path = Path(bundle_dir) / section["file"]
    if str(section.get("engine", "")).startswith("waveglow-"):
        from edgeflow.runtime.native.waveglow import WaveGlowSession

        return WaveGlowSession(path, input_names, hop_length, threads)
    return NativeSession(path, input_names, hop_length, threads)


class NativeSession:
    """The packed weights of one bundle in the C library, run like an onnxruntime session.

    Args:
        path: the bundle's ``kernels.npz``.
        input_names: the graph's (mel, z, sigma) names, from the manifest.
        hop_length: samples per mel frame (checked against the weights).
        threads: threads per call (None or 0: OpenMP's default).
    """

    def __init__(self, path: str | Path, input_names: List[str], hop_length: int, threads: Optional[int] = None):
        self._lib = library()
        arrays = fmt.load(path)
        hop = int(np.prod(arrays["up_factors"]))
        if hop != hop_length or len(input_names) != 3:
            raise BundleError(f"{path}: native weights do not fit the bundle (hop {hop} vs {hop_length}, "
                              f"{len(input_names)} graph inputs)")
        self.n_mels, self.height = int(arrays["config"][4]), int(arrays["config"][5])
        cfg, weights = fmt.blob(arrays)
        handle = self._lib.ef_wf_create(_ptr(cfg, ctypes.c_int), len(cfg), _ptr(weights), weights.size)
        if not handle:
            raise BundleError(f"{path}: the native engine refused the weights (inconsistent sizes)")
        self._handle = handle
        self.precision = fmt.precision(arrays)
        for flow, layer, part, q, scale in fmt.int8_parts(arrays):
            if self._lib.ef_wf_set_q8(handle, flow, layer, part, _ptr(q, ctypes.c_int8), _ptr(scale)) != 0:
                raise BundleError(f"{path}: the native engine refused the INT8 weights of flow {flow} layer {layer}")
        self.input_names, self.hop_length, self.threads = list(input_names), hop, int(threads or 0)

    def run(self, output_names: Any, feeds: Dict[str, np.ndarray], prof: Optional[np.ndarray] = None
            ) -> List[np.ndarray]:
        """audio [B, F * hop] = inverse(z * sigma, mel), like the graph: feeds {mel [B, M, F], z [B, F * hop],
        sigma [1]}. ``prof`` (float64 [:data:`PROFILE_SLOTS`], single-threaded runs) accumulates per-kernel
        seconds (:data:`PROFILE`)."""
        mel_name, z_name, sigma_name = self.input_names
        mel = np.ascontiguousarray(feeds[mel_name], dtype=np.float32)
        z = np.ascontiguousarray(feeds[z_name], dtype=np.float32)
        sigma = float(np.asarray(feeds[sigma_name], dtype=np.float32).reshape(-1)[0])
        b, m, f = mel.shape
        if m != self.n_mels or z.shape != (b, f * self.hop_length):
            raise InputError(f"native engine: mel {mel.shape} and z {z.shape} do not fit [B, {self.n_mels}, F], "
                             f"[B, F*{self.hop_length}]")
        audio = np.empty((b, f * self.hop_length), dtype=np.float32)
        if b == 0 or f == 0:
            return [audio]
        if prof is not None and (prof.dtype != np.float64 or prof.size < PROFILE_SLOTS or not prof.flags.c_contiguous):
            raise InputError(f"native engine: prof must be a contiguous float64 array of {PROFILE_SLOTS}")
        pr = None if prof is None else prof.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        rc = self._lib.ef_wf_run(self._handle, _ptr(mel), b, f, _ptr(z), sigma, _ptr(audio), self.threads, pr)
        if rc != 0:
            raise InputError(f"native engine: {_ERRORS.get(rc, f'error {rc}')}")
        return [audio]

    def get_inputs(self) -> List[Any]:
        return [SimpleNamespace(name=n) for n in self.input_names]

    def get_providers(self) -> List[str]:
        return [PROVIDER]

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.ef_wf_free(handle)

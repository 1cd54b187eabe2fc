"""Compute cost: real-time factor, peak memory, machine GEMM peak and analytic FLOPs of the vocoders.

Real-time factor (RTF) = wall-clock compute seconds / seconds of audio produced; below 1 is
faster than real time. Nothing here imports torch (a running torch is only queried for its
thread count when it is already imported).

Analytic FLOPs (:func:`flops_per_second_of_audio`) count ``2 x multiply-adds`` of every
convolution per second of output audio; biases, activations, gates, the affine transform and
reshapes are left out (they are O(channels) per position against O(channels^2)). Each model family
declares its own cost model (:meth:`edgeflow.models.family.Family.flops_breakdown`; the formulas are in
the family modules, e.g. :mod:`edgeflow.models.waveflow_family`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from edgeflow.core.errors import ConfigError


def measure_rtf(fn: Callable[[], Any], audio_seconds: float, warmup: int = 1, repeats: int = 5) -> Dict[str, Any]:
    """Time ``fn()`` (which must produce ``audio_seconds`` of audio) and report its RTF.

    Returns:
        ``{"median", "p10", "p90", "runs", "audio_seconds", "warmup"}``: RTF statistics over
        ``repeats`` timed runs (``runs`` lists each), after ``warmup`` untimed ones.
    """
    if audio_seconds <= 0 or repeats < 1:
        raise ConfigError("measure_rtf needs audio_seconds > 0 and repeats >= 1")
    for _ in range(max(0, warmup)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) / audio_seconds)
    return {"median": float(np.median(runs)), "p10": float(np.percentile(runs, 10)),
            "p90": float(np.percentile(runs, 90)), "runs": [float(r) for r in runs],
            "audio_seconds": float(audio_seconds), "warmup": int(warmup)}


#: Seconds the interleaved timers wait before each timed call. Measured 2026-12-05 on this project's 2-core CPU
#: (onnxruntime 1.32, 2 threads, joe-medium's stock graph and its `balanced` bundle, 8 sentences): timed back to
#: back, each ran 22-37% slower than alone; a 0.05 s pause left that unchanged, 0.15 s and 0.3 s removed it; one
#: thread showed no such effect. The likely cause: the previous onnxruntime session's pool threads still spinning.
SETTLE_SECONDS = 0.2


def interleaved_best(runs: Dict[str, Callable[[], Any]], rounds: int, warmup: bool = False,
                     settle: float = SETTLE_SECONDS, clock: Optional[Callable[[], float]] = None
                     ) -> Dict[str, float]:
    """Seconds of each of ``runs`` by ``clock`` (None: wall, ``time.perf_counter``; ``time.thread_time``: the
    calling thread's CPU time), called in turn round by round (a busy machine slows them alike), the fastest of
    ``rounds``; ``warmup``: one untimed call of each first; ``settle``: seconds waited (untimed) before each timed call
    (:data:`SETTLE_SECONDS`)."""
    if warmup:
        for run in runs.values():
            run()
    clock = clock or time.perf_counter
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(settle)
            t0 = clock()
            run()
            best[name] = min(best[name], clock() - t0)
    return best


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # no /proc: best effort


def peak_memory(fn: Optional[Callable[[], Any]] = None, trace_python: bool = False) -> Dict[str, Any]:
    """Peak resident memory of this process, or the extra peak RSS that running ``fn()`` costs.

    Without ``fn``: ``{"ru_maxrss_mb", "rss_mb"}`` (lifetime peak and current RSS).

    With ``fn`` (run once, in-process): ``peak_increase_mb`` = peak RSS during the call minus
    RSS just before it. On Linux the kernel's high-water mark is reset first (``5`` written to
    ``/proc/self/clear_refs``) so the peak is exact (``method: "VmHWM"``); elsewhere RSS is
    sampled every 1 ms by a thread (``method: "sampled"``, may miss short spikes). Memory the
    call keeps (caches, lazily built weights) counts too: warm it up first to measure steady
    state. With ``trace_python``, ``tracemalloc_peak_mb`` adds the peak of Python/numpy
    allocations (not torch's; tracing slows the call down).
    """
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0          # Linux: kB
    if fn is None:
        return {"ru_maxrss_mb": ru, "rss_mb": _rss_bytes() / 2 ** 20}
    out: Dict[str, Any] = {}
    method = "sampled"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        if _status_kb("VmHWM") is not None:
            method = "VmHWM"
    except OSError:
        pass
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.001):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True) if method == "sampled" else None
    if trace_python:
        import tracemalloc
        tracemalloc.start()
    if sampler:
        sampler.start()
    try:
        fn()
    finally:
        stop.set()
        if sampler:
            sampler.join()
        if trace_python:
            out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
    if method == "VmHWM":
        peak[0] = max(peak[0], (_status_kb("VmHWM") or 0) * 1024)
    else:
        peak[0] = max(peak[0], _rss_bytes())
    out.update({"baseline_rss_mb": base / 2 ** 20, "peak_rss_mb": peak[0] / 2 ** 20,
                "peak_increase_mb": (peak[0] - base) / 2 ** 20, "method": method})
    return out


def thread_info() -> Dict[str, Any]:
    """Threads in use: OS CPUs, BLAS pools (threadpoolctl when installed), torch if imported."""
    info: Dict[str, Any] = {"os_cpus": os.cpu_count(),
                            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads")} for p in threadpool_info()]
    except ImportError:
        info["blas"] = None
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].get_num_threads()
    return info


def machine_peak_gflops(n: int = 2048, dtype=np.float32, threads: Optional[int] = None,
                        repeats: int = 3) -> Dict[str, Any]:
    """Measured GEMM throughput of this machine (numpy matmul of two n x n matrices, 2 n^3 FLOPs).

    A practical peak for dense compute (higher is faster), not the datasheet figure. ``threads``
    limits the BLAS pool through threadpoolctl (``threads_applied`` says whether it could).

    Returns:
        ``{"gflops"`` (best run), ``"median_gflops", "n", "dtype", "threads", "threads_applied"}``.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    ctx, applied = None, False
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits
            ctx, applied = threadpool_limits(limits=int(threads), user_api="blas"), True
        except ImportError:
            pass
    try:
        a @ b                                                                   # warm-up
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    finally:
        if ctx is not None:
            ctx.restore_original_limits()
    flops = 2.0 * n ** 3
    return {"gflops": flops / min(times) / 1e9, "median_gflops": flops / float(np.median(times)) / 1e9,
            "n": n, "dtype": np.dtype(dtype).name, "threads": threads, "threads_applied": applied}


def _config_of(model: Any) -> Any:
    return getattr(model, "config", model)


def flops_breakdown(model: Any) -> Dict[str, float]:
    """FLOPs per second of audio by part, from the model's family (:meth:`Family.flops_breakdown`).

    Args:
        model: a model of a registered family, or its config.
    """
    from edgeflow.models.family import get_family

    config = _config_of(model)
    return get_family(config).flops_breakdown(config)


def flops_per_second_of_audio(model: Any) -> float:
    """Analytic FLOPs (2 x multiply-adds of all convolutions) to synthesise one second of audio
    at the model's sample rate. Lower is cheaper. See the module docstring for the formulas."""
    return float(sum(flops_breakdown(model).values()))


def cost_report(make_run: Callable[[float], Callable[[], Any]], lengths: Sequence[float] = (1.0, 4.0, 16.0),
                provider: str = "torch-cpu", model: Any = None, warmup: int = 1, repeats: int = 3,
                peak_gflops: Optional[float] = None, memory: bool = True) -> Dict[str, Any]:
    """RTF at several audio lengths plus the context needed to read it.

    Args:
        make_run: ``make_run(seconds)`` prepares inputs for that much audio and returns a
            zero-argument callable that synthesises it (only the callable is timed).
        lengths: audio lengths in seconds.
        provider: what runs the model (``"torch-cpu"``, ``"onnxruntime-cpu"``, ...), recorded as is.
        model: WaveFlow/WaveGlow (or config) for the analytic FLOPs and achieved GFLOP/s.
        peak_gflops: :func:`machine_peak_gflops` result to report utilisation against.
        memory: also report the peak RSS increase of one run at the longest length.

    Returns:
        ``{"provider", "threads", "rtf": {"<s>": measure_rtf(...)}, "flops_per_second_of_audio",
        "achieved_gflops": {"<s>": ...}, "utilisation": {...}, "peak_memory"}`` (entries that
        need ``model``/``peak_gflops``/``memory`` only when given).
    """
    report: Dict[str, Any] = {"provider": provider, "threads": thread_info(), "rtf": {}}
    runs = {}
    for sec in lengths:
        run = make_run(float(sec))
        runs[sec] = run
        report["rtf"][f"{sec:g}"] = measure_rtf(run, float(sec), warmup=warmup, repeats=repeats)
    if model is not None:
        fps = flops_per_second_of_audio(model)
        report["flops_per_second_of_audio"] = fps
        report["achieved_gflops"] = {k: fps / v["median"] / 1e9 for k, v in report["rtf"].items()}
        if peak_gflops:
            report["machine_peak_gflops"] = float(peak_gflops)
            report["utilisation"] = {k: v / peak_gflops for k, v in report["achieved_gflops"].items()}
    if memory and lengths:
        longest = max(lengths)
        report["peak_memory"] = {"audio_seconds": float(longest), **peak_memory(runs[longest])}
    return report

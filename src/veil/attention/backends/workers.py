"""CPU block parallelism: independent attention calls spread over worker threads, one OpenMP thread each.

PyTorch's fused CPU attention kernel parallelises a call over (batch, heads, query blocks) with OpenMP. For the
many small blocks of a local mask (32 queries over ~500 keys) that scales poorly: on 2 cores one call ran 1.45-1.7x
faster on 2 threads than on 1, while the same blocks split in two halves, each run single-threaded in its own
thread, ran 1.9x faster (``sliding_window(512)`` at 16k tokens, docs/benchmarks.md). This module keeps a pool of
``torch.get_num_threads()`` worker threads whose OpenMP teams are one thread (their own thread-local setting, set
through the OpenMP runtime PyTorch loaded; ``torch.set_num_threads`` cannot be used: it changes the process-wide
count), and runs a list of jobs on it.

Used only where it is safe and pays: CPU tensors, more than one torch thread, ATen's OpenMP backend with a runtime
that can be found and PyTorch's MKL (x86 builds), outside ``torch.compile`` and for jobs without autograd (each
job writes its own rows of a preallocated output, or its own slot of a list of block-group outputs). Anywhere
else :func:`run_jobs` runs the jobs in the calling thread, in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

_LOCK = threading.Lock()
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (workers, process id, pool)
_OMP: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: none usable
_SERIAL = 0  # > 0 inside serial()
MIN_WORK = 2.0 ** 24  # multiply-adds below which one call in the caller's thread is cheaper than handing out jobs


def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime ATen runs on (``omp_set_num_threads`` / ``omp_get_max_threads``), or None."""
    global _OMP
    if _OMP is not False:
        return _OMP  # type: ignore[return-value]
    found = None
    if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        names = [p for pattern in ("libgomp*.so*", "libiomp5*", "libomp*") for p in
                 sorted(glob.glob(os.path.join(lib_dir, pattern)))]
        for name in [*names, None]:  # torch's own copy first, then the symbols already in the process
            try:
                lib = ctypes.CDLL(name)
                lib.omp_set_num_threads, lib.omp_get_max_threads  # noqa: B018 (both must exist)
            except (OSError, AttributeError, TypeError):
                continue
            found = lib
            break
    _OMP = found
    return found


def _mkl() -> ctypes.CDLL | None:
    """PyTorch's MKL, where its thread-local thread count can be set, or None (its C interface: the lower-case
    names are the Fortran one, which takes pointers)."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        lib.MKL_Set_Num_Threads_Local, lib.MKL_Get_Max_Threads  # noqa: B018 (both must exist)
    except (OSError, AttributeError, TypeError):
        return None
    return lib


def _one_thread(omp: ctypes.CDLL, mkl: ctypes.CDLL, ok: list[bool]) -> None:
    torch.get_num_threads()  # ATen's per-thread lazy initialisation first: it would reset the settings below
    omp.omp_set_num_threads(1)  # this thread's own OpenMP setting: its kernels run single-threaded
    # and MKL's (its GEMMs would otherwise open a team of torch.get_num_threads() threads per call, 5x slower)
    mkl.MKL_Set_Num_Threads_Local(1)
    ok.append(omp.omp_get_max_threads() == 1 and mkl.MKL_Get_Max_Threads() == 1)


def _pool(workers: int) -> ThreadPoolExecutor | None:
    """A pool of ``workers`` single-threaded workers (rebuilt when the count changes), or None: no OpenMP runtime
    or no MKL to set (a GEMM library whose threads cannot be set per thread would oversubscribe the cores), or a
    runtime that did not take the setting (then never again in this process)."""
    global _POOL, _OMP
    omp = _openmp()
    mkl = _mkl()
    if omp is None or mkl is None:
        return None
    with _LOCK:
        if _POOL is not None and _POOL[:2] == (workers, os.getpid()):
            return _POOL[2]
        if _POOL is not None:
            if _POOL[1] == os.getpid():  # a forked child inherits the object but not its threads: drop it
                _POOL[2].shutdown(wait=False)
            _POOL = None
        ok: list[bool] = []
        pool = ThreadPoolExecutor(workers, thread_name_prefix="veil-tiles", initializer=_one_thread,
                                  initargs=(omp, mkl, ok))
        barrier = threading.Barrier(workers)  # every worker must hold one of these jobs: all of them start now
        try:
            for f in [pool.submit(barrier.wait, 10.0) for _ in range(workers)]:
                f.result()
        except threading.BrokenBarrierError:
            ok.append(False)
        if len(ok) != workers or not all(ok):  # a runtime that did not take the setting: do not use it
            pool.shutdown(wait=False)
            _OMP = None
            return None
        _POOL = (workers, os.getpid(), pool)
        return pool


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Within this block every job runs in its caller's thread (e.g. to measure memory with a profiler that sees
    only the calling thread's allocations)."""
    global _SERIAL
    with _LOCK:
        _SERIAL += 1
    try:
        yield
    finally:
        with _LOCK:
            _SERIAL -= 1


def parallel_workers(device: torch.device, work: float) -> int:
    """How many workers to give :func:`run_jobs` for ``work`` multiply-adds on ``device`` (1: the caller's thread).

    The caller vouches that its jobs need no autograd."""
    n = torch.get_num_threads()
    if (device.type != "cpu" or n < 2 or work < MIN_WORK or _SERIAL or torch.compiler.is_compiling()
            or _openmp() is None):
        return 1
    return n


def run_jobs(jobs: Sequence[Callable[[], None]], workers: int) -> None:
    """Run ``jobs`` (closures that write disjoint outputs and need no autograd) on ``workers`` threads.

    The workers run under ``torch.no_grad()``, and under ``torch.inference_mode()`` when the caller is in it
    (tensors created there can only be written there). With ``workers`` <= 1, or no usable pool, the jobs run
    here, in order. An exception in a job is raised here.
    """
    pool = _pool(workers) if workers > 1 and len(jobs) > 1 else None
    if pool is None:
        for job in jobs:
            job()
        return
    inference = torch.is_inference_mode_enabled()

    def run(job: Callable[[], None]) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            job()

    for f in [pool.submit(run, job) for job in jobs]:
        f.result()


__all__ = ["parallel_workers", "run_jobs", "serial"]

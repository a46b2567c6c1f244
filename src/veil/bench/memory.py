"""Peak memory allocated by one call, on CUDA and on CPU.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before the call. CPU: torch's CPU allocations are invisible to ``tracemalloc`` and to RSS (the allocator
may reuse freed pages), so the call runs once under ``torch.profiler.profile(profile_memory=True)``, whose
``[memory]`` events record every allocation (+bytes) and free (-bytes) made by torch's allocator; the
peak of their running sum in time order is the most memory the call held at once beyond its inputs.
Both count the call's own allocations only: inputs that exist before the call are not included, the
output is.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from veil.attention.backends.workers import serial


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated by torch during ``fn()`` beyond what was allocated before it.

    Args:
        fn: the call to measure; it is run once.
        device: where the call allocates (``"cpu"`` or ``"cuda..."``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    if device.type != "cpu":
        raise ValueError(f"device: peak memory is measured on 'cpu' or 'cuda', got {device}")
    from torch.profiler import ProfilerActivity, profile

    # the profiler sees the calling thread's allocations only: work that veil's CPU attention would hand to its
    # worker threads runs here instead (the same blocks in one call: at least the workers' transient memory)
    with serial(), _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


class _quiet_stderr:
    """Silence the profiler's start/stop lines (kineto writes them to file descriptor 2)."""

    def __enter__(self):
        try:
            self._saved = os.dup(2)
        except OSError:
            self._saved = None
            return self
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False

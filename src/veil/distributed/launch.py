"""Starting processes: :func:`init` under ``torchrun``, and :func:`spawn` for tests and benchmarks on one machine.

``spawn`` starts ``nprocs`` fresh Python processes (the ``spawn`` start method: nothing is inherited from the
parent's threads), joins them into a gloo group through a file store in a temporary directory (no port to
pick, nothing reachable from outside), runs ``fn(*args)`` on each and returns what each returned. Any rank
that raises ends the whole run with its traceback, the others are killed, and a run past ``timeout`` seconds
is killed and reported: a failure never leaves a test waiting. Collectives time out too (``collective_timeout``)
so a rank stuck in a collective whose peer died raises instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def init(backend: str | None = None, *, timeout: float = 600.0) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment; returns ``(rank, world_size)``.

    Args:
        backend: "gloo" or "nccl" (default: nccl when CUDA is available, else gloo). On CUDA the process's
            device becomes ``LOCAL_RANK``.
        timeout: seconds a collective may wait for its peers before it raises.

    Raises:
        ValueError: torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are missing.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"launch: {', '.join(missing)} not set; start the program with torchrun, e.g. "
                         "'torchrun --nproc-per-node 2 -m veil.cli.main train ...'")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


def _entry(rank: int, fn: Callable, nprocs: int, store: str, out: str, threads: int, collective_timeout: float,
           args: tuple) -> None:
    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=nprocs,
                            timeout=datetime.timedelta(seconds=collective_timeout))
    result = fn(*args)
    with open(Path(out) / f"{rank}.pkl", "wb") as f:
        pickle.dump(result, f)
    # every rank reaches this point before any closes its connections: a gloo peer that disappears while the
    # other's transport threads still read from it aborts that process
    dist.barrier()
    dist.destroy_process_group()
    (Path(out) / f"{rank}.done").touch()
    # the result is on disk: skip the interpreter's teardown, whose destruction of gloo's threads has been seen
    # to abort a process that had finished its work
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any, timeout: float = 300.0, threads: int = 1,
          collective_timeout: float = 60.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` new processes joined in a gloo group; returns each rank's result.

    ``fn`` must be importable by name (a module-level function) and its arguments and result picklable.

    Raises:
        RuntimeError: a rank raised (its traceback is in the message) or the run passed ``timeout`` seconds.
        ValueError: ``nprocs < 1``.
    """
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs: expected a positive int, got {nprocs!r}")
    with tempfile.TemporaryDirectory(prefix="veil-spawn-") as tmp:
        store = os.path.join(tmp, "store")
        ctx = mp.start_processes(_entry, args=(fn, nprocs, store, tmp, threads, collective_timeout, args),
                                 nprocs=nprocs, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"spawn: {nprocs} processes still running after {timeout:.0f} s; killed")
        except mp.ProcessRaisedException as e:
            raise RuntimeError(f"spawn: a rank failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            done = sorted(int(p.stem) for p in Path(tmp).glob("*.done"))
            raise RuntimeError(f"spawn: a rank died: {e} (ranks that had finished: {done})") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        results = []
        for rank in range(nprocs):
            with open(Path(tmp) / f"{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results

"""``veil bench gpu``: the GPU readiness check, in one command, within 10 minutes on one CUDA device.

It runs, in order, and stops adding work when the time budget is spent:

1. every CUDA-only test (``pytest -m cuda``: the paths ``auto`` picks on CUDA, each against the reference backend,
   forward and backward, including softcapped Gemma 2 layers, padded half-precision cross-attention, FlexAttention's
   backward, a compiled WanDiT);
2. the quick attention benchmark on the device in bf16, forward and forward + backward (every backend, every mask);
3. the optional ``flash-attn`` check (installed version against the supported range).

It writes one dated section of ``docs/benchmarks.md`` naming the device, with the test summary and both tables.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from veil.attention.backends.varlen import flash_attn_status
from veil.bench import attention, report

BUDGET_S = 600.0  # the whole command


@dataclass
class Result:
    device: str
    tests: str
    tests_ok: bool
    flash: str
    tables: list[tuple[str, list[attention.Row]]]
    seconds: float


def run(tests_dir: str | pathlib.Path = "tests", budget_s: float = BUDGET_S, device: str = "cuda") -> Result:
    """Run the checks on ``device``; raises ``RuntimeError`` without a CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("veil bench gpu: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
                           "machine")
    t0 = time.monotonic()
    name = torch.cuda.get_device_name(torch.device(device))
    tests_dir = pathlib.Path(tests_dir)
    if tests_dir.is_dir():
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               str(tests_dir)], capture_output=True, text=True, timeout=budget_s / 2)
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        summary, ok = (lines[-1] if lines else "no output"), proc.returncode == 0
        if not ok:
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    else:
        summary, ok = f"skipped: no test directory {tests_dir} (run from the repository root)", False
    tables = []
    for backward in (False, True):
        if time.monotonic() - t0 > budget_s * 0.8:
            break
        cfg = attention.quick(device=device, dtype="bf16", backward=backward)
        tables.append(("forward + backward" if backward else "forward", attention.run(cfg)))
    return Result(name, summary, ok, flash_attn_status(), tables, time.monotonic() - t0)


def section(result: Result, command: str) -> str:
    """The dated markdown section of one run."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    key = "gpu"
    parts = [
        f"<!-- veil bench {key} -->",
        f"## `veil bench gpu`: {result.device}, {date}",
        "",
        f"Command: `{command}`  ",
        f"Device: {result.device} (torch {torch.__version__}, CUDA {torch.version.cuda}); host "
        f"{report.machine('cpu')}, load average {os.getloadavg()[0]:.1f}  ",
        f"CUDA-only tests (`pytest -m cuda`): {result.tests}  ",
        f"flash-attn: {result.flash}  ",
        f"Total: {result.seconds:.0f} s.",
        "",
        report.LEGEND,
    ]
    for what, rows in result.tables:
        parts += ["", f"Quick attention benchmark, bf16, {what}:", "", report.table(rows)]
    parts.append(f"<!-- /veil bench {key} -->")
    return "\n".join(parts)

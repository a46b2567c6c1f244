"""Markdown for benchmark results: the table, the machine, and a section of docs/benchmarks.md that a new run
replaces (between ``<!-- veil bench NAME -->`` and ``<!-- /veil bench NAME -->``) instead of appending."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform

import torch

from veil.bench.attention import Config, Row

NEW_DOC = ("# Benchmarks\n\nWritten by `veil bench`; a run replaces its own section. Times on a machine shared with "
           "other jobs are noisy: compare the ratios within one run, not the milliseconds across runs.\n")
LEGEND = ("`x dense` = t(sdpa, no mask) / t(backend) on the same shapes, the dense runs interleaved with the "
          "backend's; `ideal x` = 1 / density; `% of ideal` = x dense / ideal x. `peak MiB`: memory allocated by "
          "the call beyond its inputs. `(auto)` marks the backend `attend(..., backend=\"auto\")` picks.")
COLUMNS = ("mask", "tokens", "backend", "density", "ms (median)", "x dense", "ideal x", "% of ideal",
           "peak MiB", "max abs diff", "note")


def header() -> str:
    """The table's first two lines."""
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def format_row(row: Row) -> str:
    """One markdown table line; cells of a backend that did not run are empty and the note says why."""
    def size(x: float | None) -> str:  # 3 significant digits without an exponent
        return "" if x is None else format(x, ".0f" if x >= 100 else ".1f" if x >= 10 else ".2f" if x >= 1 else ".3f")

    backend = f"{row.backend} (auto)" if row.auto else row.backend
    diff = "" if row.diff is None else f"{row.diff:.1e} vs {row.oracle}"
    ideal = "" if row.backend == "sdpa, no mask" else size(row.ideal)
    pct = "" if row.backend == "sdpa, no mask" else size(row.pct_ideal)
    cells = (row.mask, row.tokens, backend, f"{row.density:.3f}", size(row.ms), size(row.speedup),
             ideal, pct, size(row.peak_mib), diff, row.note)
    return "| " + " | ".join(cells) + " |"


def table(rows: list[Row]) -> str:
    return "\n".join([header(), *(format_row(r) for r in rows)])


def machine(device: str) -> str:
    """CPU model, cores, torch version, threads, and the GPU when the device is CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, Python {platform.python_version()}")
    if torch.device(device).type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def section(name: str, title: str, rows: list[Row], cfg: Config, command: str) -> str:
    """The markdown section for one run, between the markers of ``name`` (no spaces or ``--`` in it)."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = "forward + backward" if cfg.backward else "forward"
    return "\n".join([
        f"<!-- veil bench {name} -->",
        f"## `veil bench {title}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine(cfg.device)}, device `{cfg.device}`  ",
        f"Date: {date}  ",
        f"Shapes: batch {cfg.batch}, {cfg.heads} heads, head dim {cfg.head_dim}, {cfg.dtype}, {what}; "
        f"median of {cfg.repeats} runs after {cfg.warmup} warm-up.",
        "",
        LEGEND,
        "",
        table(rows),
        f"<!-- /veil bench {name} -->",
    ])


def update_doc(path: str | pathlib.Path, name: str, text: str) -> None:
    """Replace the section ``name`` of the markdown file at ``path`` with ``text`` (append it if absent)."""
    path = pathlib.Path(path)
    begin, end = f"<!-- veil bench {name} -->", f"<!-- /veil bench {name} -->"
    old = path.read_text() if path.exists() else NEW_DOC
    i, j = old.find(begin), old.find(end)
    if i >= 0 and j > i:
        new = old[:i] + text + old[j + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)

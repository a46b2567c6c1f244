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


def machine(device: str, threads: int | None = None) -> str:
    """CPU model, cores, torch version, threads (``threads``, default torch's now), and the GPU on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"{cpu}, {os.cpu_count()} cores ({threads or torch.get_num_threads()} torch threads), "
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
        f"Machine: {machine(cfg.device, cfg.threads)}, device `{cfg.device}`, load average "
        f"{os.getloadavg()[0]:.1f}  ",
        f"Date: {date}  ",
        f"Shapes: batch {cfg.batch}, {cfg.heads} heads, head dim {cfg.head_dim}, {cfg.dtype}, {what}; "
        f"median of {cfg.repeats} runs after {cfg.warmup} warm-up; clock: {cfg.clock} "
        f"({'process CPU time' if cfg.clock == 'cpu' else 'elapsed time'}).",
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


# -- veil bench models ------------------------------------------------------------------------------------------
MODELS_LEGEND = (
    "Parity: diffusers' model built from a config with random weights, veil's with `from_diffusers` (same "
    "weights); `max abs diff` = the largest difference of the output (forward+backward: of the output and of "
    "the latent's gradient), checked before timing (a pair beyond the tolerance is not timed). `x diffusers` = "
    "median over repeats of t(diffusers) / t(veil), the two runs side by side in each repeat. `peak MiB`: memory "
    "allocated by the call beyond its inputs.")
SPARSE_LEGEND = (
    "Sparse: one veil Wan model, every layer's pattern set to the row's (same weights). `attn x full` = "
    "t(attend, full) / t(attend, pattern) on the model's `[1, N, L, D]` shapes and mask; `ideal x` = 1 / density; "
    "`% of ideal` = attn x full / ideal x; `model x full` = t(model, full) / t(model, pattern); `attn share` = "
    "layers x t(attend, full) / t(model, full); `model ideal x` = 1 / (1 - share + share x density). "
    "`max abs diff`: the pattern's kernel against dense SDPA with the mask materialised.")
PARITY_COLUMNS = ("family", "size", "tokens", "params (M)", "mode", "max abs diff", "diffusers ms", "veil ms",
                  "x diffusers", "diffusers peak MiB", "veil peak MiB", "note")
SPARSE_COLUMNS = ("pattern", "tokens", "density", "attn ms", "full attn ms", "attn x full", "ideal x", "% of ideal",
                  "model ms", "full model ms", "model x full", "attn share", "model ideal x", "max abs diff", "note")


def _num(x: float | None) -> str:
    """3 significant digits without an exponent; empty for None."""
    return "" if x is None else format(x, ".0f" if x >= 100 else ".1f" if x >= 10 else ".2f" if x >= 1 else ".3f")


def _table_head(columns: tuple[str, ...]) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def parity_header() -> str:
    return _table_head(PARITY_COLUMNS)


def sparse_header() -> str:
    return _table_head(SPARSE_COLUMNS)


def format_parity(row) -> str:
    """One line of the parity table (a :class:`veil.bench.models.ParityRow`)."""
    cells = (row.family, row.size, row.tokens, f"{row.params_m:.2f}", row.mode, f"{row.diff:.1e}",
             _num(row.diffusers_ms), _num(row.veil_ms), _num(row.speedup), _num(row.diffusers_mib),
             _num(row.veil_mib), row.note)
    return "| " + " | ".join(cells) + " |"


def format_sparse(row) -> str:
    """One line of the sparse table (a :class:`veil.bench.models.SparseRow`)."""
    diff = "" if row.diff is None else f"{row.diff:.1e}"
    cells = (row.pattern, row.tokens, f"{row.density:.3f}", _num(row.attn_ms), _num(row.attn_full_ms),
             _num(row.attn_speedup), _num(row.ideal), _num(row.pct_ideal), _num(row.model_ms),
             _num(row.model_full_ms), _num(row.model_speedup), f"{100 * row.attn_share:.0f}%",
             _num(row.model_ideal), diff, row.note)
    return "| " + " | ".join(cells) + " |"


def models_section(name: str, title: str, parity: list, sparse: list, cfg, command: str) -> str:
    """The markdown section of one ``veil bench models`` run (``cfg``: a :class:`veil.bench.models.Config`)."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1 / 5 / 15 min, at the end of the run)"

    def sizes(family: str) -> str:
        return "; ".join(f"{s.name}: E {s.dim} ({s.dim // s.head_dim} heads x {s.head_dim}), {s.layers} layers, "
                         f"latent {'x'.join(map(str, s.latent))}, text {s.text_len}" for s in cfg.sizes(family))

    s = cfg.sparse_size
    lines = [
        f"<!-- veil bench {name} -->",
        f"## `veil bench {title}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine(cfg.device, cfg.threads)}, device `{cfg.device}`; load average {load}  ",
        f"Date: {date}  ",
        f"float32, batch 1; median of {cfg.repeats} runs after {cfg.warmup} warm-up. "
        + " ".join(f"{f.capitalize()} sizes: {sizes(f)}." for f in cfg.families),
        "",
        MODELS_LEGEND,
        "",
        parity_header(),
        *(format_parity(r) for r in parity),
    ]
    if sparse:
        lines += ["", f"Sparse model: Wan, E {s.dim} ({s.dim // s.head_dim} heads x {s.head_dim}), {s.layers} "
                  f"layers, latent {'x'.join(map(str, s.latent))}, text {s.text_len}, forward.", "", SPARSE_LEGEND,
                  "", sparse_header(), *(format_sparse(r) for r in sparse)]
    lines.append(f"<!-- /veil bench {name} -->")
    return "\n".join(lines)

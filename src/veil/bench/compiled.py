"""``veil bench models --compile``: compiled veil Wan and Latte against eager and compiled diffusers, same weights.

For each family and size (the models and inputs of :func:`veil.bench.models.build_pair`), four variants run side by
side: diffusers eager, diffusers under ``torch.compile``, veil eager and veil under
``torch.compile(fullgraph=True)``. The outputs (forward + backward: and the latent's gradient) of the compiled veil
model are checked against diffusers' eager ones first, then the four are timed interleaved (the order reversed
every other repeat) after their compile runs, and the speed-ups are medians of per-repeat ratios.

One more Wan row, ``text 512 @ p%``: a Wan step whose text is 512 tokens of which ``p%`` are valid (the rest zero
padding, as Wan's text encoder pads). veil gets the text lengths and never attends the padding; diffusers attends
every token, so the outputs differ (veil's are the ones without padding) and the check compares compiled veil with
eager veil instead. A fifth variant times diffusers given the valid tokens alone: the padding's whole cost, so its
ratio to diffusers on the padded text bounds what any handling of the padding can save (the row's note).

Legend: L video tokens, S text tokens.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from veil.bench.models import Config, Pair, Size, build_pair, interleaved, paired_speedup, runner

Tensor = torch.Tensor
COMPILE_SIZES = {"wan": Size(name="M", dim=512, head_dim=128, layers=4, latent=(8, 32, 32)),
                 "latte": Size(name="M", dim=512, head_dim=64, layers=2, latent=(8, 32, 32))}
QUICK_SIZES = {"wan": Size(name="S", dim=128, head_dim=64, layers=1, latent=(2, 8, 8), text_len=16),
               "latte": Size(name="S", dim=128, head_dim=64, layers=1, latent=(2, 8, 8), text_len=16)}
TEXT_VALID = 0.2  # share of the 512 text tokens that are valid in the padded-text row


@dataclass
class CompileRow:
    """One family, size, text setting and mode: the four variants' median ms and the ratios."""

    family: str
    size: str
    tokens: str
    text: str
    mode: str
    diff: float
    against: str
    ms: dict[str, float] | None = None
    x_diffusers: float | None = None
    x_diffusers_compiled: float | None = None
    x_veil_eager: float | None = None
    note: str = ""


def _padded_text_pair(size: Size, cfg: Config) -> tuple[Pair, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor],
                                                     Callable[[Tensor], Tensor]]:
    """The Wan pair with 512 text tokens, ``TEXT_VALID`` of them valid: diffusers sees the zero padding, veil the
    lengths; and diffusers given the valid tokens alone (the most any handling of the padding can save)."""
    big = Size(name=size.name, dim=size.dim, head_dim=size.head_dim, layers=size.layers, latent=size.latent,
               text_len=512)
    pair = build_pair("wan", big, seed=cfg.seed, device=cfg.device)
    valid = max(1, int(TEXT_VALID * 512))
    g = torch.Generator().manual_seed(cfg.seed + 5)
    text = torch.zeros(1, 512, size.dim)
    text[:, :valid] = torch.randn(1, valid, size.dim, generator=g)
    text = text.to(cfg.device)
    lengths = torch.tensor([valid], device=cfg.device)
    t = torch.tensor([500.0], device=cfg.device)
    theirs, ours = pair.theirs, pair.ours
    trimmed = text[:, :valid]
    return (pair, (lambda x: theirs(x, t, text, return_dict=False)[0]), (lambda x: ours(x, t, text, lengths)),
            (lambda x: theirs(x, t, trimmed, return_dict=False)[0]))


def compile_rows(cfg: Config, sizes: dict[str, Size], families: tuple[str, ...]) -> Iterator[CompileRow]:
    """The rows of ``veil bench models --compile`` (see the module docstring)."""
    dev = torch.device(cfg.device)
    settings: list[tuple[str, str, Size]] = [(f, "full", sizes[f]) for f in families]
    if "wan" in families:
        settings.append(("wan", f"512 @ {round(100 * TEXT_VALID)}%", sizes["wan"]))
    for family, text, size in settings:
        if text == "full":
            pair = build_pair(family, size, seed=cfg.seed, device=cfg.device)
            call_theirs, call_ours = pair.call_theirs, pair.call_ours
        else:
            pair, call_theirs, call_ours, call_trimmed = _padded_text_pair(size, cfg)
        t, h, w = pair.grid
        tokens = f"{t}x{h}x{w} = {t * h * w}"
        calls = {
            "diffusers": (pair.theirs, call_theirs),
            "diffusers compiled": (pair.theirs, _compiled(pair.theirs, call_theirs)),
            "veil": (pair.ours, call_ours),
            "veil compiled": (pair.ours, _compiled(pair.ours, call_ours, fullgraph=True)),
        }
        if text != "full":  # the padding's whole cost: diffusers without it
            calls["diffusers, valid tokens only"] = (pair.theirs, call_trimmed)
        for mode in cfg.modes:
            backward = mode == "forward+backward"
            grad_out = None
            if backward:
                with torch.no_grad():
                    shape = call_ours(pair.x).shape
                grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed + 2)).to(dev)
            gos = {name: runner(model, call, pair.x, backward, grad_out) for name, (model, call) in calls.items()}
            against = "diffusers" if text == "full" else "veil"
            want, got = gos[against](), gos["veil compiled"]()  # also the compile run of veil
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(want, got))
            row = CompileRow(family, size.name, tokens, text, mode, diff, against)
            if not diff <= cfg.tolerance:
                row.note = f"not timed: compiled veil differs from {against} by {diff:.2e}"
                yield row
                continue
            gos["diffusers compiled"]()  # its compile run
            names = list(gos)
            times = interleaved([gos[n] for n in names], cfg.repeats, cfg.warmup, dev)
            by = dict(zip(names, times))
            row.ms = {n: 1e3 * statistics.median(ts) for n, ts in by.items()}
            row.x_diffusers = paired_speedup(by["diffusers"], by["veil compiled"])
            row.x_diffusers_compiled = paired_speedup(by["diffusers compiled"], by["veil compiled"])
            row.x_veil_eager = paired_speedup(by["veil"], by["veil compiled"])
            if "diffusers, valid tokens only" in by:
                bound = paired_speedup(by["diffusers"], by["diffusers, valid tokens only"])
                row.note = (f"diffusers on the valid tokens alone: {row.ms['diffusers, valid tokens only']:.3g} ms, "
                            f"so skipping the padding can give at most {bound:.3g}x")
            yield row
        del pair, calls
        torch._dynamo.reset()


def _compiled(module: torch.nn.Module, call: Callable[[Tensor], Tensor], **options) -> Callable[[Tensor], Tensor]:
    """``call`` with ``module`` compiled: the module's call goes through ``torch.compile`` (as after
    ``module.compile(**options)``) for the duration of the call only, so the same object also runs eagerly."""
    impl = torch.compile(module._call_impl, **options)

    def run(x: Tensor) -> Tensor:
        module._compiled_call_impl = impl
        try:
            return call(x)
        finally:
            module._compiled_call_impl = None
    return run


HEADER = ("| family | size | tokens | text | mode | max abs diff | diffusers ms | diffusers compiled ms | veil ms | "
          "veil compiled ms | x diffusers | x diffusers compiled | x veil eager | note |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: CompileRow) -> str:
    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.3g}"
    ms = r.ms or {}
    return (f"| {r.family} | {r.size} | {r.tokens} | {r.text} | {r.mode} | {r.diff:.1e} vs {r.against} | "
            f"{num(ms.get('diffusers'))} | {num(ms.get('diffusers compiled'))} | {num(ms.get('veil'))} | "
            f"{num(ms.get('veil compiled'))} | {num(r.x_diffusers)} | {num(r.x_diffusers_compiled)} | "
            f"{num(r.x_veil_eager)} | {r.note} |")

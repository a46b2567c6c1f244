"""Prompt-following evaluation: generate, recover (colour, shape, direction) with the world's analyzer, score.

Legend: B batch, C channels, T frames, H W pixels. Videos are float32 ``[B, C, T, H, W]`` in ``[-1, 1]``.

Scores are shares in [0, 1]: per attribute (colour, shape, motion) and for all three at once, over the seen
prompts and over the held-out ones (combinations the training run excluded), and per held-out combination.
The extension check generates ``factor`` times the trained length window by window and counts the windows
(consecutive, non-overlapping, of the trained length) whose colour and motion still match the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from veil.data import (
    COLOURS,
    MOTIONS,
    SHAPES,
    analyze,
    caption,
    parse_phrase,
    render_many,
    sample_spec,
    split_combinations,
)
from veil.data.fidelity import fidelity
from veil.data.world import RADIUS, check_edges
from veil.models import TimestepExperts, WanDiT
from veil.pipelines.media import save_grid

__all__ = ["ATTRIBUTES", "CONTINUED_SIGMAS", "SENSITIVITY_SIGMAS", "caption_sensitivity", "default_prompts",
           "evaluate", "extension_ceiling", "fidelity_scores", "head_span_projection", "score_videos", "trained_world",
           "truth_of", "window_scores"]

ATTRIBUTES = ("colour", "shape", "motion")


def truth_of(prompt: str) -> tuple[str, str, str]:
    """The (colour, shape, motion) a prompt names ("a red circle moving left").

    Raises:
        ValueError: the prompt does not name all three (or uses unknown words).
    """
    p = parse_phrase(prompt)
    if None in (p.colour, p.shape, p.motion):
        raise ValueError(f"prompt {prompt!r}: expected a colour, a shape and a motion, got {p}")
    return p.colour, p.shape, p.motion  # type: ignore[return-value]


def default_prompts(exclude: Iterable[str] | None) -> dict[str, list[str]]:
    """Canonical prompts of every seen and every held-out combination under ``exclude``."""
    seen, held = split_combinations(list(exclude) if exclude else None)
    return {"seen": [caption(*c) for c in seen], "held_out": [caption(*c) for c in held]}


def score_videos(videos: Tensor, truths: Sequence[tuple[str, str, str]], *, wrap: bool = False) -> dict[str, Any]:
    """Analyze each video and compare with its truth.

    Args:
        videos: [B, 3, T, H, W] in [-1, 1].
        truths: B (colour, shape, motion) triples.
        wrap: the videos show the world with ``edges="wrap"`` (see :func:`veil.data.analyze`).

    Returns:
        ``{"n", "colour", "shape", "motion", "all"}`` (shares in [0, 1]) and ``"rows"``: per video the truth,
        the analysis and which attributes matched.

    Raises:
        ValueError: a count of truths other than B.
    """
    if videos.dim() != 5 or len(truths) != videos.shape[0]:
        raise ValueError(f"truths: expected {videos.shape[0] if videos.dim() == 5 else '?'} triples for videos "
                         f"{list(videos.shape)}, got {len(truths)}")
    rows = []
    for v, truth in zip(videos, truths):
        got = analyze(v, wrap=wrap).as_tuple()
        ok = {a: g == t for a, g, t in zip(ATTRIBUTES, got, truth)}
        rows.append({"truth": list(truth), "got": list(got), **ok, "all": all(ok.values())})
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for key in (*ATTRIBUTES, "all"):
        out[key] = sum(r[key] for r in rows) / n if n else float("nan")
    out["rows"] = rows
    return out


def window_scores(videos: Tensor, truths: Sequence[tuple[str, str, str]], window: int, *,
                  wrap: bool = False) -> dict[str, Any]:
    """Split each long video into consecutive windows of ``window`` frames and score each.

    Returns:
        ``{"windows", "colour", "shape", "motion", "both", "all"}``: the number of windows and the shares that
        kept the prompt's colour, its shape, its motion, colour and motion, and all three.
    """
    t = videos.shape[2]
    if window < 2 or t < window:
        raise ValueError(f"window: expected 2 <= window <= T = {t}, got {window}")
    counts = {"colour": 0, "shape": 0, "motion": 0, "both": 0, "all": 0}
    n = 0
    for v, (colour, shape, motion) in zip(videos, truths):
        for start in range(0, t - window + 1, window):
            got = analyze(v[:, start:start + window], wrap=wrap)
            c, s, m = got.colour == colour, got.shape == shape, got.motion == motion
            counts["colour"] += c
            counts["shape"] += s
            counts["motion"] += m
            counts["both"] += c and m
            counts["all"] += c and s and m
            n += 1
    return {"windows": n, **{k: v / n for k, v in counts.items()}}


def extension_ceiling(truths: Sequence[tuple[str, str, str]], frames: int, size: int, factor: int, *,
                      samples: int = 8, seed: int = 0, edges: str = "inside",
                      radius: tuple[float, float] = RADIUS, cross: float = 1.0) -> dict[str, Any]:
    """What a perfect model scores on the extension check: the world's own motion, continued.

    For each triple, ``samples`` clips are drawn as the world draws them for ``frames`` frames (with ``edges``,
    ``radius`` and ``cross``), then rendered for ``factor * frames`` frames at the same speed and direction, and
    scored with :func:`window_scores`. A moving object travels 20-40% of the frame per trained length: with
    ``edges="inside"`` it leaves the frame within a few windows, so the ceiling is below 100% by the world's
    geometry; with ``edges="wrap"`` it re-enters at the opposite edge and the motion stays true.

    Returns:
        :func:`window_scores`' dict over all the rendered clips.
    """
    rng = np.random.default_rng([seed, 7])
    specs, clip_truths = [], []
    for truth in truths:
        for _ in range(samples):
            spec = sample_spec(*truth, frames=frames, size=size, rng=rng, edges=edges, radius=radius, cross=cross)
            specs.append(dataclasses.replace(spec, frames=factor * frames))
            clip_truths.append(truth)
    return window_scores(render_many(specs), clip_truths, frames, wrap=edges == "wrap")


def trained_world(pipeline: Any) -> dict[str, Any]:
    """The world settings a checkpoint was trained on (its ``run.t2v_config`` metadata; ``{}`` if none):
    ``exclude``, ``edges``, ``radius``, ... as :class:`~veil.training.t2v.T2VConfig` fields."""
    return dict((getattr(pipeline, "extra", {}) or {}).get("run", {}).get("t2v_config", {}))


def fidelity_scores(videos: Tensor, truths: Sequence[tuple[str, str, str]], *, seed: int = 0, edges: str = "inside",
                    radius: tuple[float, float] = RADIUS) -> dict[str, Any]:
    """How cleanly ``videos`` are drawn, next to the world's own renders of the same triples.

    Each video is measured with :func:`veil.data.fidelity.fidelity` (background residual, square fill, edge
    width), and so is one render per triple, drawn as the world draws it (``edges``, ``radius``, the videos' size
    and length).

    Returns:
        ``{"generated": m, "rendered": m}`` with ``m = {"background", "square_fill", "edge", "edges_sharp"}``:
        the mean background residual over the clips, the mean fill of the square clips (None without squares),
        the mean edge rise in pixels over the clips with a measured edge, and the share of those clips whose
        edge rises within 1.5 pixels.
    """
    _, _, t, h, _ = videos.shape
    rng = np.random.default_rng([seed, 11])
    renders = render_many(sample_spec(*truth, frames=t, size=h, rng=rng, edges=edges, radius=radius)
                          for truth in truths)
    return {name: _fidelity_means(clips, truths, edges == "wrap")
            for name, clips in (("generated", videos), ("rendered", renders))}


def _fidelity_means(clips: Tensor, truths: Sequence[tuple[str, str, str]], wrap: bool) -> dict[str, Any]:
    rows = [fidelity(v, truth[1], wrap=wrap) for v, truth in zip(clips, truths)]
    fills = [r["fill"] for r in rows if r["fill"] is not None]
    sharp = [r["edge"] for r in rows if r["edge"] is not None]
    return {"background": float(np.mean([r["background"] for r in rows])),
            "square_fill": float(np.mean(fills)) if fills else None,
            "edge": float(np.mean(sharp)) if sharp else None,
            "edges_sharp": float(np.mean([e <= 1.5 for e in sharp])) if sharp else None}


def _has_denoiser(pipeline: Any) -> bool:
    """A flow-matching pipeline that exposes its denoiser (``model``, ``codec``, ``encode_prompts``)."""
    return getattr(pipeline.config, "objective", "flow") == "flow" and all(
        hasattr(pipeline, a) for a in ("model", "codec", "encode_prompts"))


FLOOR_SIGMAS = (0.05, 0.1, 0.2, 0.4)
FLOOR_CLIPS = 24  # seen prompts (spread over the list) whose renders :func:`evaluate` gives the denoiser


@torch.no_grad()
def denoiser_floor(pipeline: Any, truths: Sequence[tuple[str, str, str]], *, sigmas: Sequence[float] = FLOOR_SIGMAS,
                   seed: int = 0, edges: str = "inside", radius: tuple[float, float] = RADIUS,
                   cross: float = 1.0) -> dict[str, Any] | None:
    """How cleanly the denoiser draws when it is handed the answer nearly clean.

    The world's renders of ``truths`` (drawn as the world draws them: ``edges``, ``radius``, ``cross``) are noised
    to each ``sigma`` (flow matching: ``(1 - sigma) x0 + sigma noise``, one noise for all levels), the model's
    clean-clip estimate (``x_t - sigma v``, with the true caption) is decoded, and the three measures of
    :func:`fidelity_scores` are taken on it. A sampler returns such an estimate at its last noise level, made from
    its own noisy clip rather than a render's; where even the estimate from a render misses a target at every
    level, a better sampler is unlikely to reach it and the model itself has to draw more cleanly.

    For a network that predicts the clean clip through a linear patch head (a :class:`~veil.models.WanDiT` under
    ``prediction="x0"``), every clean-clip estimate is ``W h + b`` per token: it lies in the affine span of the
    head's weights whatever the rest of the network computes. ``"head"`` measures the renders projected onto that
    span (least squares per patch): the best that head can draw. Far below the levels above, the head is not what
    limits the model; near them, it is.

    Returns:
        ``{f"{sigma:g}": m, ["head": m,] "rendered": m}`` with ``m`` as in :func:`fidelity_scores`; None for a
        pipeline whose objective is not flow matching or that exposes no denoiser (``model``, ``codec``,
        ``encode_prompts``).
    """
    if not _has_denoiser(pipeline):
        return None
    if not truths:
        raise ValueError("truths: expected at least one (colour, shape, motion) triple, got none")
    bad = [s for s in sigmas if not 0 < s <= 1]
    if bad:
        raise ValueError(f"sigmas: expected noise levels in (0, 1], got {list(sigmas)}")
    frames, size = pipeline.config.frames, pipeline.config.size
    rng = np.random.default_rng([seed, 17])
    x0 = render_many(sample_spec(*t, frames=frames, size=size, rng=rng, edges=edges, radius=radius, cross=cross)
                     for t in truths).to(getattr(pipeline, "device", "cpu"))
    latents = pipeline.codec.encode(x0).float()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents)
    ctx, lengths = pipeline.encode_prompts([caption(*t) for t in truths])
    wrap = edges == "wrap"
    out: dict[str, Any] = {}
    for sigma in sigmas:
        xt = (1 - sigma) * latents + sigma * noise
        timestep = torch.full((len(truths),), 1000.0 * sigma, device=xt.device)
        v = pipeline.model(xt, timestep, ctx, lengths).float()
        out[f"{sigma:g}"] = _fidelity_means(pipeline.codec.decode(xt - sigma * v).float().cpu(), truths, wrap)
    projected = head_span_projection(pipeline, latents)
    if projected is not None:
        out["head"] = _fidelity_means(pipeline.codec.decode(projected).float().cpu(), truths, wrap)
    out["rendered"] = _fidelity_means(x0.float().cpu(), truths, wrap)
    return out


@torch.no_grad()
def head_span_projection(pipeline: Any, latents: Tensor) -> Tensor | None:
    """``latents`` [B, C, T, H, W] projected onto the affine span of the pipeline's linear output head.

    The head of a :class:`~veil.models.WanDiT` maps each token's features ``h`` to a patch ``W h + b`` (``W``
    ``[C_out * prod(patch), E]``); with ``prediction="x0"`` that patch is the clean-clip estimate, so no estimate
    leaves ``{W h + b}``. Each patch of ``latents`` is replaced by its nearest point there (least squares in
    float64; the first C of the head's output channels, as :class:`~veil.pipelines.t2v.XPrediction` reads them).

    With a pair of experts (:class:`~veil.models.TimestepExperts`) the head is the low-noise expert's: the one that
    makes the last, nearly clean estimates.

    Returns:
        The projected latents (``latents``' shape and dtype), or None where the pipeline's network predicts
        something else (``prediction`` not ``"x0"``) or has no WanDiT head.
    """
    if getattr(pipeline.config, "prediction", None) != "x0":
        return None
    net = pipeline.model
    if isinstance(net, TimestepExperts):
        net = net.low_noise_model
    wan = next((m for m in net.modules() if isinstance(m, WanDiT)), None)
    if wan is None:
        return None
    (pt, ph, pw), (b, c, t, h, w) = wan.config.patch_size, latents.shape
    if c > wan.config.out_channels or t % pt or h % ph or w % pw:
        raise ValueError(f"latents: expected [B, <= {wan.config.out_channels}, T, H, W] divisible by the patch "
                         f"{(pt, ph, pw)}, got {list(latents.shape)}")
    weight = wan.proj_out.weight.double().reshape(pt * ph * pw, wan.config.out_channels, -1)[:, :c].flatten(0, 1)
    bias = wan.proj_out.bias.double().reshape(pt * ph * pw, wan.config.out_channels)[:, :c].flatten()
    # (B, C, T, H, W) -> one row per patch in the head's order (pt, ph, pw, C), as WanDiT.unpatchify reads it
    x = latents.double().reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    rows = x.reshape(-1, pt * ph * pw * c)
    coef = torch.linalg.lstsq(weight, (rows - bias).T).solution  # (E, patches)
    near = ((weight @ coef).T + bias).reshape(b, -1, pt * ph * pw * c)  # (B, L, pt * ph * pw * C)
    return wan.unpatchify(near, (t // pt, h // ph, w // pw)).to(latents.dtype)


SENSITIVITY_SIGMAS = (0.5, 0.8, 0.9, 0.95)
CONTINUED_SIGMAS = (0.8, 0.95, 0.99, 1.0)  # from a clean first patch the motion is decided near pure noise
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@torch.no_grad()
def caption_sensitivity(pipeline: Any, *, clips: int = 48, sigmas: Sequence[float] = SENSITIVITY_SIGMAS,
                        seed: int = 0, edges: str = "inside", radius: tuple[float, float] = RADIUS,
                        cross: float = 1.0, prefix: int = 0) -> dict[str, dict[str, float]] | None:
    """How much the denoiser's clean-clip estimate depends on each attribute of the caption.

    ``clips`` world clips of moving objects (colours, shapes and the four directions in turn, drawn as the world
    draws them: ``edges``, ``radius``, ``cross``) are noised to each ``sigma`` (flow matching: ``(1 - sigma) x0 +
    sigma noise``, the same noise for every caption), and the model's estimate of the clean clip (``x_t - sigma
    v``) is scored against the clip, once with its canonical caption and once with the caption whose ``colour``,
    ``shape`` or ``motion`` is replaced (the next colour / shape of the vocabulary; the opposite direction).

    With ``prefix`` > 0 (a model trained for continuation, ``PipelineConfig.clean_anchors``) the first ``prefix``
    latent frames are given clean, at timestep 0 (per-frame timesteps ``[B, T]``), and the error is taken over the
    other frames: how much the caption decides a clip continued from its first frames, as the second stage of
    ``PipelineConfig.staged`` sampling and every window of an extension continue.

    Returns:
        ``{attribute: {f"{sigma:g}": mse(wrong caption) / mse(true caption)}}``: 1 where the model ignores the
        attribute; None for a pipeline whose objective is not flow matching or that exposes no denoiser
        (``model``, ``codec``, ``encode_prompts``).
    """
    if not _has_denoiser(pipeline):
        return None
    frames, size = pipeline.config.frames, pipeline.config.size
    rng = np.random.default_rng([seed, 13])
    moving = [m for m in MOTIONS if m in _OPPOSITE]
    colours = list(COLOURS)
    triples = [(colours[i % len(colours)], SHAPES[i % len(SHAPES)], moving[i % len(moving)]) for i in range(clips)]
    x0 = render_many(sample_spec(*t, frames=frames, size=size, rng=rng, edges=edges, radius=radius, cross=cross)
                     for t in triples).to(getattr(pipeline, "device", "cpu"))
    latents = pipeline.codec.encode(x0).float()
    t = latents.shape[2]
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix < t:
        raise ValueError(f"prefix: expected an int in [0, {t}) (latent frames), got {prefix!r}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g).to(latents)
    free = (torch.arange(t, device=latents.device) >= prefix).to(latents)  # (T,) 0 on the clean prefix
    level = free.view(1, 1, t, 1, 1)  # noise level per frame, times sigma
    # shared by every caption set
    noised = [(sigma, (1 - sigma * level) * latents + sigma * level * noise) for sigma in sigmas]

    def swap(t: tuple[str, str, str], attribute: str) -> tuple[str, str, str]:
        c, s, m = t
        if attribute == "colour":
            return colours[(colours.index(c) + 1) % len(colours)], s, m
        if attribute == "shape":
            return c, SHAPES[(SHAPES.index(s) + 1) % len(SHAPES)], m
        return c, s, _OPPOSITE[m]

    def errors(captions: list[str]) -> list[float]:
        ctx, lengths = pipeline.encode_prompts(captions)
        out = []
        for sigma, xt in noised:
            timestep = torch.full((clips,), 1000.0 * sigma, device=xt.device)
            if prefix:
                timestep = timestep[:, None] * free  # (B, T)
            v = pipeline.model(xt, timestep, ctx, lengths).float()
            out.append(float(((xt - sigma * level * v - latents)[:, :, prefix:] ** 2).mean()))
        return out

    true = errors([caption(*t) for t in triples])
    report = {}
    for attribute in ATTRIBUTES:
        wrong = errors([caption(*swap(t, attribute)) for t in triples])
        report[attribute] = {f"{sigma:g}": w / max(e, 1e-12) for sigma, w, e in zip(sigmas, wrong, true)}
    return report


def _generate(pipeline: Any, prompts: Sequence[str], batch: int, **kw: Any) -> Tensor:
    out = [pipeline(list(prompts[i:i + batch]), **kw) for i in range(0, len(prompts), batch)]
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(pipeline: Any, prompts: Sequence[str] | None = None, *, held_out: Sequence[str] | None = None,
             exclude: Iterable[str] | None = None, edges: str | None = None, seed: int = 0,
             guidance: float | None = None, steps: int | None = None, batch_size: int = 40,
             extension_prompts: int = 10, extend_factor: int = 4, measure_fidelity: bool = True,
             measure_sensitivity: bool = True, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score how well ``pipeline`` follows prompts, and whether a long extension keeps colour and motion.

    Args:
        pipeline: a :class:`~veil.pipelines.TextToVideo` (anything called like one, with ``config.frames``).
        prompts: seen prompts; None: every seen combination under ``exclude``.
        held_out: held-out prompts; None: every held-out combination under ``exclude`` (none when ``prompts``
            is given).
        exclude: the training run's exclude phrases; None: the pipeline's checkpoint metadata (if any).
        edges: the world's edges ("inside" or "wrap", see :class:`~veil.data.CaptionedVideoWorld`); None: the
            checkpoint metadata's (else "inside"). With "wrap" the analyzer reassembles objects across the edges.
        seed, guidance, steps: passed to the pipeline (None: its defaults).
        batch_size: prompts per pipeline call.
        extension_prompts: how many seen prompts (spread over the list) to extend; 0 skips the check.
        extend_factor: the extension length in trained lengths.
        measure_fidelity: also measure how cleanly the seen prompts' clips are drawn, next to the world's renders
            (:func:`fidelity_scores`).
        measure_sensitivity: also measure how much the denoiser's estimate depends on each attribute of the
            caption (:func:`caption_sensitivity`, on clips of the trained world).
        out_dir: where to write ``report.json``, ``report.md``, ``seen.gif``, ``held_out.gif`` and
            ``extension.gif`` (None: nothing written).

    Returns:
        The report: ``{"seen": scores, "held_out": scores, "held_out_combinations": {prompt: row},
        "extension": window scores, "fidelity": ..., "sensitivity": ..., "seconds": ...}`` with the scores of
        :func:`score_videos`, :func:`fidelity_scores` and :func:`caption_sensitivity` (and, for a model trained for
        continuation, ``"sensitivity_continued"``: from a clean first temporal patch, at ``CONTINUED_SIGMAS``).
    """
    t0 = time.perf_counter()
    trained = trained_world(pipeline)
    if exclude is None:
        exclude = trained.get("exclude")
    edges = check_edges(edges if edges is not None else trained.get("edges", "inside"))
    wrap = edges == "wrap"
    radius = tuple(trained.get("radius", RADIUS))
    cross = float(trained.get("cross", 1.0))
    if prompts is None:
        defaults = default_prompts(exclude)
        prompts = defaults["seen"]
        held_out = defaults["held_out"] if held_out is None else held_out
    held_out = list(held_out or [])
    prompts = list(prompts)
    kw = dict(seed=seed, guidance=guidance, steps=steps)
    report: dict[str, Any] = {"exclude": list(exclude or []), "edges": edges, "seed": seed}
    experts = (getattr(pipeline, "extra", {}) or {}).get("experts")
    if experts:  # a pair of experts split along the noise axis (TextToVideo.from_checkpoint's low_noise)
        report["experts"] = dict(experts)
    groups = {"seen": prompts, "held_out": held_out}
    videos: dict[str, Tensor] = {}
    for name, group in groups.items():
        if not group:
            continue
        videos[name] = _generate(pipeline, group, batch_size, **kw)
        report[name] = score_videos(videos[name], [truth_of(p) for p in group], wrap=wrap)
        for p, row in zip(group, report[name]["rows"]):
            row["prompt"] = p
    if measure_fidelity and "seen" in videos:
        report["fidelity"] = fidelity_scores(videos["seen"], [truth_of(p) for p in prompts], seed=seed, edges=edges,
                                             radius=radius)
        spread = [truth_of(p) for p in prompts[::max(1, len(prompts) // FLOOR_CLIPS)][:FLOOR_CLIPS]]
        floor = denoiser_floor(pipeline, spread, seed=seed, edges=edges, radius=radius, cross=cross)
        if floor is not None:
            report["fidelity_floor"] = floor
    if measure_sensitivity:
        sens = caption_sensitivity(pipeline, seed=seed, edges=edges, radius=radius, cross=cross)
        if sens is not None:
            report["sensitivity"] = sens
            if getattr(pipeline.config, "clean_anchors", False):  # continued from a clean first temporal patch
                pt = int(pipeline.config.model.get("patch_size", (1,))[0])
                report["sensitivity_continued"] = caption_sensitivity(
                    pipeline, seed=seed, edges=edges, radius=radius, cross=cross, prefix=pt, sigmas=CONTINUED_SIGMAS)
    if held_out:
        report["held_out_combinations"] = {r["prompt"]: {a: r[a] for a in (*ATTRIBUTES, "all")} | {"got": r["got"]}
                                           for r in report["held_out"]["rows"]}
    long_videos = None
    if extension_prompts > 0 and prompts:
        stride = max(1, len(prompts) // extension_prompts)
        chosen = prompts[::stride][:extension_prompts]
        frames = pipeline.config.frames
        long_videos = _generate(pipeline, chosen, batch_size, extend_to=extend_factor * frames, **kw)
        truths = [truth_of(p) for p in chosen]
        report["extension"] = {"factor": extend_factor, "prompts": chosen,
                               **window_scores(long_videos, truths, frames, wrap=wrap),
                               "ceiling": extension_ceiling(truths, frames, pipeline.config.size, extend_factor,
                                                            seed=seed, edges=edges, radius=radius, cross=cross)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(markdown(report))
        for name, v in videos.items():
            save_grid(v, out / f"{name}.gif", groups[name], columns=8)
        if long_videos is not None:
            save_grid(long_videos, out / "extension.gif", report["extension"]["prompts"], columns=5)
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fidelity_row(label: str, m: dict[str, Any]) -> str:
    def cell(key: str, fmt: str) -> str:
        return "-" if m[key] is None else format(m[key], fmt)

    return (f"| {label} | {m['background']:.4f} | {cell('square_fill', '.1%')} | {cell('edge', '.2f')} | "
            f"{cell('edges_sharp', '.0%')} |")


def markdown(report: dict[str, Any]) -> str:
    """A short markdown summary of :func:`evaluate`'s report."""
    lines = ["# Prompt-following evaluation", "", f"exclude (held out in training): {report.get('exclude')}", ""]
    if "experts" in report:
        e = report["experts"]
        lines += [f"experts: {e['high_noise']} at noise levels >= {e['boundary']:g}, {e['low_noise']} below", ""]
    lines += ["| prompts | n | colour | shape | motion | all three |", "|---|---|---|---|---|---|"]
    for name in ("seen", "held_out"):
        if name in report:
            s = report[name]
            lines.append(f"| {name} | {s['n']} | " + " | ".join(_pct(s[k]) for k in (*ATTRIBUTES, "all")) + " |")
    if "held_out_combinations" in report:
        lines += ["", "| held-out prompt | colour | shape | motion | recovered |", "|---|---|---|---|---|"]
        for p, r in report["held_out_combinations"].items():
            lines.append(f"| {p} | " + " | ".join("yes" if r[a] else "no" for a in ATTRIBUTES) +
                         f" | {' '.join(str(g) for g in r['got'])} |")
    if "fidelity" in report:
        f = report["fidelity"]
        lines += ["", "| fidelity (seen prompts) | background residual | square fill | edge rise (px) "
                      "| edges <= 1.5 px |", "|---|---|---|---|---|"]
        lines += [_fidelity_row(name, f[name]) for name in ("generated", "rendered")]
    if "fidelity_floor" in report:
        lines += ["", "Denoiser floor: the same measures of the denoiser's clean-clip estimate (true caption) from "
                  "the world's renders noised to sigma: how cleanly it draws when handed the answer.", "",
                  "| from a render at | background residual | square fill | edge rise (px) | edges <= 1.5 px |",
                  "|---|---|---|---|---|"]
        names = {"rendered": "the render itself", "head": "the render projected onto the output head's span"}
        lines += [_fidelity_row(names.get(name, f"sigma {name}"), m) for name, m in report["fidelity_floor"].items()]
    for key, what in (("sensitivity", "Caption sensitivity"),
                      ("sensitivity_continued", "Caption sensitivity of a clip continued from its clean first "
                                                "temporal patch")):
        if key not in report:
            continue
        sens = report[key]
        sigmas = list(next(iter(sens.values())))
        lines += ["", f"{what}: the denoiser's clean-clip error with one attribute of the caption "
                  "replaced, over its error with the true caption (1.00: the attribute is ignored).", "",
                  "| attribute | " + " | ".join(f"sigma {s}" for s in sigmas) + " |",
                  "|---|" + "---|" * len(sigmas)]
        for attribute, row in sens.items():
            lines.append(f"| {attribute} | " + " | ".join(f"{row[s]:.3f}" for s in sigmas) + " |")
    if "extension" in report:
        e = report["extension"]
        lines += ["", f"Extension to {e['factor']}x the trained length ({e['windows']} windows): colour kept in "
                  f"{_pct(e['colour'])}, shape in {_pct(e['shape'])}, motion in {_pct(e['motion'])}, all three in "
                  f"{_pct(e['all'])}."]
        if "ceiling" in e:
            c = e["ceiling"]
            lines.append(f"Ceiling (the world's own motion continued for the same prompts, {c['windows']} windows, "
                         f"edges {report.get('edges', 'inside')!r}): colour {_pct(c['colour'])}, shape "
                         f"{_pct(c['shape'])}, motion {_pct(c['motion'])}, all three {_pct(c['all'])}.")
    return "\n".join(lines) + "\n"

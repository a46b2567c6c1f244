"""How cleanly a video of the world is drawn: background flatness, square corners and edge sharpness.

Legend: C channels (3), T frames, H W pixels. Videos are float ``[3, T, H, W]`` in ``[-1, 1]``; every measure is on
the ``[0, 1]`` scale.

The world draws a flat object of one colour over a background that is a plane in every channel (a base colour
plus a linear gradient), with 4x4-supersampled edges. Three measures compare a generated clip with that:

- **background residual**: per frame, a plane ``a + b x + c y`` per channel is fitted (least squares) to the pixels
  farther than 2 pixels from the object; the mean absolute residual of those pixels. A render scores ~0.
- **square fill**: the object's coverage ``alpha`` (each pixel's projection from the fitted background towards the
  object's colour, 0 = background, 1 = object) is cut at the half-maximum contour (``alpha >= 0.5``); the fill is
  its area over the area of its bounding box. A rendered square fills 93-97% (its box is rounded to whole
  pixels); rounded corners fill less (a circle ~78%).
- **edge width**: the distance over which ``alpha`` rises from 10% to 90% across the object's edge, along the
  row and the column through its centroid (for the upward triangle: its base, along the column, and its sides
  along the row, scaled by ``sin(atan 2)`` to the distance normal to the side), estimated from the spread of
  the sampled edge less the spread the pixel grid adds (see :func:`_rise`). A rendered edge measures ~0.74 pixels
  on average over its sub-pixel phase; a 3x3 box blur ~2.2.
"""

from __future__ import annotations

import math

import torch

from veil.data.analyze import _dilate, _recentre, segment

__all__ = ["fidelity"]

_SIDE = math.sin(math.atan(2.0))  # the triangle's sides: a row crosses them 1 / _SIDE times wider than their normal


def _design(h: int, w: int) -> torch.Tensor:
    """The plane's design matrix ``[1, x / W, y / H]`` over a frame's pixels: [H * W, 3] float64."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([torch.ones(h * w, dtype=torch.float64), xs.flatten() / w, ys.flatten() / h], 1)


def _plane_fit(pix: torch.Tensor, keep: torch.Tensor, design: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``a + b x + c y`` per channel to the kept pixels of one frame.

    Args:
        pix: [H * W, 3]; keep: bool [H * W]; design: :func:`_design` of the frame.

    Returns:
        (the plane over the whole frame [H * W, 3], mean absolute residual of the kept pixels).
    """
    a, b = design[keep], pix[keep].double()
    coef = torch.linalg.lstsq(a, b).solution  # (3, 3)
    plane = (design @ coef).float()
    return plane, (pix[keep] - plane[keep]).abs().mean()


def _rise(profile: torch.Tensor, centre: int, step: int) -> float | None:
    """The 10-90% rise of the edge met going from ``centre`` by ``step`` (+1 / -1), in pixels.

    Pixel values sample the edge profile after a box filter (the pixel) and any blur. The spread of the sampled
    fall, ``var(d)`` of the differences ``d`` of consecutive samples around the edge, is the spread of the edge's
    own fall plus ``1/12`` added by the sampling (on average over the edge's sub-pixel phase); the rise of a
    Gaussian edge with the remaining spread is ``2.563 sqrt(var(d) - 1/12)``. A box-filtered sharp edge measures
    ~0.74 on average, a 3-pixel box blur ~2.2.
    """
    n = profile.shape[0]
    if not 0 <= centre < n or profile[centre] < 0.9:
        return None
    values = profile[centre::step] if step > 0 else profile[: centre + 1].flip(0)  # outward from the centre
    below90 = (values < 0.9).nonzero()
    below10 = (values < 0.1).nonzero()
    if not len(below90) or not len(below10):
        return None
    lo, hi = max(int(below90[0]) - 2, 0), min(int(below10[0]) + 2, values.shape[0] - 1)
    d = (values[lo:hi] - values[lo + 1:hi + 1]).clamp_min(0)  # the fall between consecutive samples
    if float(d.sum()) <= 0:
        return None
    pos = torch.arange(lo, hi, dtype=d.dtype) + 0.5
    mean = (d * pos).sum() / d.sum()
    var = float((d * (pos - mean) ** 2).sum() / d.sum())
    return 2.563 * math.sqrt(max(var - 1 / 12, 0.0))


def fidelity(video: torch.Tensor, shape: str | None = None, *, wrap: bool = False) -> dict[str, float | None]:
    """The three measures of one clip (see the module docstring): the median over the frames (background, fill)
    and the mean over the edges read in every frame with an object (edge).

    Args:
        video: float [3, T, H, W] in [-1, 1].
        shape: the prompt's shape ("circle", "square", "triangle"): square fill is measured for squares only, and
            the triangle's edges are read along its base and sides. None: edges along the row and column.
        wrap: the world's ``edges="wrap"`` (objects are reassembled across the frame edges first).

    Returns:
        ``{"background": mean absolute residual, "fill": square fill or None, "edge": 10-90% rise in pixels or
        None}`` (None when not measured or no frame has an object; the background is then fitted to the whole
        frame).
    """
    mask, _ = segment(video, wrap=wrap)
    t, h, w = mask.shape
    x = (video.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (3, T, H, W)
    present = mask.flatten(1).sum(1) >= 3  # (T,)
    near = _dilate(mask, 2)  # the object and its edge band, excluded from the background fit
    planes, residuals = [], []
    design = _design(h, w)
    for i in range(t):
        pix = x[:, i].permute(1, 2, 0).reshape(h * w, 3)
        keep = ~near[i].flatten()
        if int(keep.sum()) < 16:
            keep = torch.ones_like(keep)
        plane, res = _plane_fit(pix, keep, design)
        planes.append(plane.reshape(h, w, 3).permute(2, 0, 1))
        residuals.append(float(res))
    out: dict[str, float | None] = {"background": float(torch.tensor(residuals).median()), "fill": None,
                                    "edge": None}
    if not bool(present.any()):
        return out
    bg = torch.stack(planes, 1)  # (3, T, H, W)
    inner = mask & present[:, None, None]
    rgb = x.permute(1, 2, 3, 0)[inner].median(0).values  # (3,)
    direction = rgb[:, None, None, None] - bg  # (3, T, H, W)
    alpha = ((x - bg) * direction).sum(0) / (direction * direction).sum(0).clamp_min(1e-6)  # (T, H, W)
    if wrap:  # every frame rolled so that its object is whole
        rolled, mask, _, _ = _recentre(alpha[None], mask, present)
        alpha = rolled[0]
    fills, edges = [], []
    for i in present.nonzero()[:, 0].tolist():
        a = alpha[i] * _dilate(mask[i][None], 2)[0]  # the object's neighbourhood only
        half = a >= 0.5
        if int(half.sum()) < 3:
            continue
        rows, cols = half.any(1).nonzero()[:, 0], half.any(0).nonzero()[:, 0]
        box = (int(rows[-1] - rows[0]) + 1) * (int(cols[-1] - cols[0]) + 1)
        fills.append(float(half.sum()) / box)
        weights = a.clamp(0, 1)
        total = float(weights.sum())
        cy = int(float((weights.sum(1) * torch.arange(h)).sum()) / total)
        cx = int(float((weights.sum(0) * torch.arange(w)).sum()) / total)
        row, col = a[cy], a[:, cx]
        if shape == "triangle":
            reads = [(col, cy, 1, 1.0), (row, cx, -1, _SIDE), (row, cx, 1, _SIDE)]  # base (y down), two sides
        else:
            reads = [(row, cx, -1, 1.0), (row, cx, 1, 1.0), (col, cy, -1, 1.0), (col, cy, 1, 1.0)]
        for profile, centre, step, scale in reads:
            r = _rise(profile, centre, step)
            if r is not None:
                edges.append(r * scale)
    if shape == "square" and fills:
        out["fill"] = float(torch.tensor(fills).median())
    if edges:  # the mean: the grid's share is removed on average over the edges' sub-pixel phases
        out["edge"] = float(torch.tensor(edges).mean())
    return out

"""Recover (colour, shape, direction) from a video of the world, without a learned model.

This is the oracle that scores generated videos. Legend: C channels, T frames, H W pixels.

Per frame: the background colour is the median pixel (the object covers well under half of the frame); the
object is the set of pixels whose colour distance from the background exceeds half the distance of the frame's
most distant pixels (a threshold midway between background and object, so blur moves the edge little), less
isolated speckle.
Colour: the mean colour of the object's interior pixels over all frames, nearest palette entry. Shape: from the
object's soft coverage (see :func:`shape_features`): a skewed vertical profile is the upward triangle, otherwise
the ratio of covered area to the extent box separates the square (~1) from the circle (~pi/4).
Direction: the least-squares slope of the mask centroid over time;
a displacement over the clip below ``still_fraction`` of the frame size is "still".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from veil.data.vocab import COLOURS

_TRIANGLE_SKEW, _SQUARE_FILL = -0.25, 0.89
_MIN_CONTRAST = 0.2  # an object must differ from the background by this much (RGB distance, [0, 1] units)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What :func:`analyze` recovered from one video.

    Attributes:
        colour, shape, motion: canonical names, or ``None`` when no object was found.
        found: number of frames in which an object was segmented.
        rgb: mean object colour, RGB in [0, 1].
        displacement: (dx, dy) of the centroid over the clip in pixels (y down), from the fitted slope.
        features: the shape features (median over frames) of :func:`shape_features`: fill, skew.
    """

    colour: str | None
    shape: str | None
    motion: str | None
    found: int
    rgb: tuple[float, float, float] | None = None
    displacement: tuple[float, float] = (0.0, 0.0)
    features: dict[str, float] = field(default_factory=dict)

    def as_tuple(self) -> tuple[str | None, str | None, str | None]:
        return self.colour, self.shape, self.motion


def _check_video(video: torch.Tensor) -> torch.Tensor:
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video: expected a float tensor [3, T, H, W] in [-1, 1], got {type(video).__name__}")
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video: expected shape [3, T, H, W], got {list(video.shape)}")
    if not video.is_floating_point():
        raise TypeError(f"video: expected a float tensor in [-1, 1], got dtype {video.dtype}")
    return video


def segment(video: torch.Tensor, *, wrap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Object masks and per-frame background colours.

    Args:
        video: float [3, T, H, W] in [-1, 1].
        wrap: the frame is a torus (pixels on opposite edges are neighbours).

    Returns:
        (mask bool [T, H, W], background float [T, 3] in [0, 1]). A frame whose most distant pixels differ from
        the background by less than 0.2 has an empty mask.
    """
    x = (_check_video(video).detach().float().cpu().clamp(-1, 1) + 1) / 2  # (3, T, H, W) in [0, 1]
    C, T, H, W = x.shape
    pixels = x.permute(1, 2, 3, 0).reshape(T, H * W, C)  # (T, HW, 3)
    bg = pixels.median(dim=1).values  # (T, 3)
    dist = (pixels - bg[:, None]).norm(dim=-1)  # (T, HW)
    # the object's contrast: a high quantile rather than the max, so that a few noisy pixels do not set it
    k = max(1, (H * W) // 200)
    contrast = dist.topk(k, dim=1).values[:, -1]  # (T,)
    mask = ((dist > contrast[:, None] / 2) & (contrast[:, None] >= _MIN_CONTRAST)).reshape(T, H, W)
    # drop speckle: a pixel of the object has at least 3 object pixels among its 8 neighbours, a noise outlier
    # almost never does
    padded = F.pad(mask.float()[:, None], (1, 1, 1, 1), mode="circular" if wrap else "constant")
    neighbours = F.conv2d(padded, torch.ones(1, 1, 3, 3))[:, 0] - mask.float()
    return mask & (neighbours >= 3), bg


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of [T, H, W] masks by a (2r+1) square."""
    return F.max_pool2d(mask.float()[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5


def _interp(profiles: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of each row of ``profiles`` [T, N] at the fractional index ``pos`` [T]."""
    pos = pos.clamp(0, profiles.shape[1] - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp_max(profiles.shape[1] - 1)
    f = pos - i0
    rows = torch.arange(profiles.shape[0])
    return profiles[rows, i0] * (1 - f) + profiles[rows, i1] * f


def shape_features(video: torch.Tensor, mask: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur-robust shape features per frame: (fill [T], skew [T]).

    ``alpha`` is each pixel's coverage by the object: the projection of (pixel - local background) onto
    (object colour - local background), unclamped so that noise averages out, summed over the mask dilated by
    2 pixels (the local background is the median of the ring 3 pixels out). Blurring preserves the total
    coverage, and a 50% threshold keeps straight edges in place, so ``fill`` = total coverage / the mask's
    "extent box" is ~1 for a square and ~pi/4 for a circle, blurred or not, where the extent box is
    width x height of the coverage through its centroid (sub-pixel, from the row and column sums). ``skew``
    is the skewness of the coverage's vertical profile (y down): ~ -0.57 for the upward triangle, 0 for the
    symmetric shapes; a Gaussian blur leaves the third cumulant unchanged and only shrinks it a little.

    Args:
        video: float [3, T, H, W] in [0, 1]; mask: bool [T, H, W]; rgb: float [3], the object colour.
    """
    C, T, H, W = video.shape
    region, outer = _dilate(mask, 2), _dilate(mask, 3)
    ring = outer & ~region  # (T, H, W)
    pix = video.permute(1, 2, 3, 0).reshape(T, H * W, C)  # (T, HW, 3)
    # local background: median over the ring (over the whole frame where the ring is empty)
    use = torch.where(ring.flatten(1).any(1, keepdim=True), ring.flatten(1), torch.ones_like(ring.flatten(1)))
    bg = torch.where(use[..., None], pix, torch.full_like(pix, float("nan"))).nanmedian(dim=1).values  # (T, 3)
    direction = rgb[None] - bg  # (T, 3)
    alpha = torch.einsum("tpc,tc->tp", pix - bg[:, None], direction) / (direction * direction).sum(1, True).clamp_min(
        1e-6)
    alpha = alpha.reshape(T, H, W) * region  # (T, H, W), unclamped
    w = alpha.clamp_min(0)
    total = w.sum(dim=(1, 2)).clamp_min(1e-6)  # (T,)
    pos_y, pos_x = torch.arange(H, dtype=torch.float32) + 0.5, torch.arange(W, dtype=torch.float32) + 0.5
    my = (w.sum(2) * pos_y).sum(1) / total  # (T,) centroid row, pixel centres at index + 0.5
    mx = (w.sum(1) * pos_x).sum(1) / total
    width, height = _interp(alpha.sum(2), my - 0.5), _interp(alpha.sum(1), mx - 0.5)  # extents through the centroid
    fill = alpha.sum(dim=(1, 2)) / (width * height).clamp_min(1e-6)
    dy = pos_y[None] - my[:, None]  # (T, H)
    var = (w.sum(2) * dy**2).sum(1) / total
    skew = (w.sum(2) * dy**3).sum(1) / total / var.clamp_min(1e-6) ** 1.5
    ok = mask.flatten(1).sum(1) >= 3
    fill, skew = fill * ok, skew * ok
    return fill, skew


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Mask pixels whose four neighbours are all in the mask (falls back to the mask when that is empty)."""
    m = F.pad(mask.float()[:, None], (1, 1, 1, 1))
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    inner = F.conv2d(m, kernel)[:, 0] > 4.5
    return inner if bool(inner.any()) else mask


def _recentre(x: torch.Tensor, mask: torch.Tensor, present: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """On a torus: roll every frame so that its object is whole around the frame centre.

    The object's centre per frame is the circular mean of its mask's pixels on each axis; consecutive centres are
    unwrapped (each step taken as the shortest way round), so a steady motion across an edge stays steady.

    Returns:
        (rolled x [3, T, H, W], rolled mask [T, H, W], unwrapped centres cx, cy [T'] of the present frames).
    """
    T, H, W = mask.shape
    m = mask.float()
    centres = []
    for size, dim in ((W, 1), (H, 2)):
        angle = 2 * torch.pi * (torch.arange(size, dtype=torch.float32) + 0.5) / size
        profile = m.sum(dim=dim)  # (T, size)
        c = torch.atan2((profile * angle.sin()).sum(1), (profile * angle.cos()).sum(1))
        centres.append(torch.remainder(c, 2 * torch.pi) * size / (2 * torch.pi))  # (T,) in [0, size)
    cx, cy = centres
    shifts = [(int(round(W / 2 - float(a))), int(round(H / 2 - float(b)))) for a, b in zip(cx, cy)]
    x = torch.stack([x[:, t].roll((sy, sx), dims=(1, 2)) for t, (sx, sy) in enumerate(shifts)], dim=1)
    mask = torch.stack([mask[t].roll((sy, sx), dims=(0, 1)) for t, (sx, sy) in enumerate(shifts)])
    out = []
    for c, size in ((cx[present], W), (cy[present], H)):
        step = torch.remainder(c.diff() + size / 2, size) - size / 2
        out.append(torch.cat([c[:1], c[:1] + step.cumsum(0)]))
    return x, mask, out[0], out[1]


def analyze(video: torch.Tensor, *, still_fraction: float = 0.1, wrap: bool = False) -> Analysis:
    """Recover the colour, shape and motion of the single object in ``video``.

    Args:
        video: float [3, T, H, W] with values in [-1, 1] (values outside are clamped); T >= 1.
        still_fraction: a centroid displacement over the clip below this fraction of max(H, W) is "still".
        wrap: the video shows a torus (the world's ``edges="wrap"``): an object crossing an edge is reassembled
            (each frame rolled to centre it) and its track unwrapped before the shape and motion are read.

    Returns:
        an :class:`Analysis`; its attributes are ``None`` when no frame has an object.

    Raises:
        TypeError / ValueError: ``video`` is not a float tensor of shape [3, T, H, W].
    """
    mask, _ = segment(video, wrap=wrap)
    T, H, W = mask.shape
    present = mask.flatten(1).sum(1) >= 3  # (T,)
    found = int(present.sum())
    if found == 0:
        return Analysis(colour=None, shape=None, motion=None, found=0)
    x = (video.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (3, T, H, W)
    if wrap:
        x, mask, track_x, track_y = _recentre(x, mask, present)
    inner = _interior(mask) & present[:, None, None]
    rgb = x.permute(1, 2, 3, 0)[inner].mean(0)  # (3,)
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names])
    colour = names[int((palette - rgb).norm(dim=1).argmin())]

    fill, skew = (f[present].median() for f in shape_features(x, mask, rgb))
    if float(skew) < _TRIANGLE_SKEW:
        shape = "triangle"
    else:
        shape = "square" if float(fill) > _SQUARE_FILL else "circle"

    if wrap:
        cx, cy = track_x, track_y
    else:
        ys = torch.arange(H, dtype=torch.float32)[:, None] + 0.5
        xs = torch.arange(W, dtype=torch.float32)[None, :] + 0.5
        m = mask[present].float()  # (T', H, W)
        area = m.sum(dim=(1, 2))
        cx, cy = (m * xs).sum(dim=(1, 2)) / area, (m * ys).sum(dim=(1, 2)) / area  # (T',)
    t = present.nonzero()[:, 0].float()
    if found >= 2:
        tc = t - t.mean()
        slope_x, slope_y = (tc * cx).sum() / (tc * tc).sum(), (tc * cy).sum() / (tc * tc).sum()
        dx, dy = float(slope_x) * (T - 1), float(slope_y) * (T - 1)
    else:
        dx, dy = 0.0, 0.0
    if max(abs(dx), abs(dy)) < still_fraction * max(H, W):
        motion = "still"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    return Analysis(colour=colour, shape=shape, motion=motion, found=found,
                    rgb=tuple(float(c) for c in rgb), displacement=(dx, dy),
                    features={"fill": float(fill), "skew": float(skew)})


def analyze_batch(videos: torch.Tensor, **kwargs) -> list[Analysis]:
    """:func:`analyze` over a batch [B, 3, T, H, W]."""
    if not isinstance(videos, torch.Tensor) or videos.dim() != 5:
        shape = list(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"videos: expected a tensor [B, 3, T, H, W], got {shape}")
    return [analyze(v, **kwargs) for v in videos]

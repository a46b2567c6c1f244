"""A procedural captioned video world: one coloured shape moving over a dark background, deterministic by seed.

Legend: C channels (3, RGB), T frames, H W pixels. Videos are float32 tensors ``[C, T, H, W]`` with values in
``[-1, 1]`` (``-1`` black, ``1`` full intensity); pixel ``(y, x)`` covers the square ``[x, x+1) x [y, y+1)`` and
``y`` grows downwards, so "up" means decreasing ``y``.

Every random draw comes from a ``numpy.random.Generator`` seeded with ``(seed, index)``: sample ``i`` of a world is
the same on every machine and in every worker, and no global RNG is touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from veil.data.vocab import COLOURS, MOTIONS, SHAPES, Pattern, _check_triple, caption, split_combinations

SIZES = (32, 64)
MIN_FRAMES, MAX_FRAMES = 8, 32
_MARGIN = 1.0  # pixels kept free between the object's bounding box and the frame edge
_SUPERSAMPLE = 4  # anti-aliasing: each pixel's coverage is the mean of 4x4 sub-pixel tests
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}


@dataclass(frozen=True, kw_only=True)
class VideoSpec:
    """Everything that determines one video of the world.

    Attributes:
        colour, shape, motion: canonical attribute names (see veil.data.vocab).
        rgb: the object's colour, RGB in [0, 1] (its palette entry with a small jitter).
        radius: half the side of the object's bounding box, in pixels (circle radius, square half-side,
            triangle half-base and half-height).
        start: the bounding-box centre (x, y) in pixels at frame 0.
        speed: pixels per frame along the motion direction (0 for "still").
        background: the dark base colour, RGB in [0, 1], each channel <= 0.22.
        gradient: background gradient (amplitude, angle in radians); amplitude <= 0.08.
        frames: T; size: H = W.
        edges: ``"inside"``: the trajectory stays inside the frame; ``"wrap"``: the frame is a torus, an object
            leaving one edge re-enters at the opposite one (positions are taken modulo the size), so its motion
            goes on for any number of frames in the direction the caption names.
    """

    colour: str
    shape: str
    motion: str
    rgb: tuple[float, float, float]
    radius: float
    start: tuple[float, float]
    speed: float
    background: tuple[float, float, float]
    gradient: tuple[float, float]
    frames: int
    size: int
    edges: str = "inside"

    def __post_init__(self):
        _check_triple(self.colour, self.shape, self.motion)
        check_edges(self.edges)
        if self.frames < 1 or self.size < 8:
            raise ValueError(
                f"VideoSpec: expected frames >= 1 and size >= 8, got frames={self.frames} size={self.size}")
        if self.radius <= 0:
            raise ValueError(f"VideoSpec.radius: expected > 0, got {self.radius}")

    def centre(self, t: int | float) -> tuple[float, float]:
        """The bounding-box centre (x, y) at frame ``t`` (in ``[0, size)`` when the edges wrap)."""
        dx, dy = _DIRECTIONS[self.motion]
        x, y = self.start[0] + dx * self.speed * t, self.start[1] + dy * self.speed * t
        return (x % self.size, y % self.size) if self.edges == "wrap" else (x, y)

    def record(self) -> dict:
        """The attributes as a flat dict of str / float / int (collates with torch's default_collate)."""
        d = asdict(self)
        d["rgb"], d["start"], d["background"], d["gradient"] = (list(d[k]) for k in ("rgb", "start", "background",
                                                                                       "gradient"))
        return d


def shape_inside(shape: str, x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Whether points (x, y) lie inside ``shape`` with bounding-box centre (cx, cy) and half-extents (rx, ry).

    The triangle points up: apex at the top centre, base along the bottom edge. Broadcasts over all arguments.
    """
    u, v = (x - cx) / rx, (y - cy) / ry  # the bounding box maps to [-1, 1]^2
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (u.abs() <= 1.0) & (v.abs() <= 1.0)
    if shape == "triangle":
        return (v <= 1.0) & (u.abs() <= (v + 1.0) / 2.0)
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


def render(spec: VideoSpec) -> torch.Tensor:
    """Draw the video of ``spec``.

    Returns:
        float32 tensor [3, T, H, W] with values in [-1, 1].
    """
    S, T, ss = spec.size, spec.frames, _SUPERSAMPLE
    # background: base colour plus a linear gradient, static over time
    pix = torch.arange(S, dtype=torch.float32) + 0.5
    amp, angle = spec.gradient
    ramp = (np.cos(angle) * (pix[None, :] - S / 2) + np.sin(angle) * (pix[:, None] - S / 2)) / S  # (H, W) in ±0.71
    bg = torch.tensor(spec.background, dtype=torch.float32)[:, None, None] + amp * ramp[None]  # (3, H, W)
    # object coverage by supersampling, one frame at a time would be slower than one broadcast over T
    sub = (torch.arange(S * ss, dtype=torch.float32) + 0.5) / ss
    centres = torch.tensor([spec.centre(t) for t in range(T)], dtype=torch.float32)  # (T, 2)
    cx, cy = centres[:, 0, None, None], centres[:, 1, None, None]
    sx, sy = sub[None, None, :], sub[None, :, None]
    if spec.edges == "wrap":  # offsets from the centre on the torus, in [-S/2, S/2)
        sx, sy = torch.remainder(sx - cx + S / 2, S) - S / 2, torch.remainder(sy - cy + S / 2, S) - S / 2
        cx, cy = torch.zeros_like(cx), torch.zeros_like(cy)
    inside = shape_inside(spec.shape, sx, sy, cx, cy, spec.radius, spec.radius)
    cover = inside.float().reshape(T, S, ss, S, ss).mean(dim=(2, 4))  # (T, H, W) in [0, 1]
    rgb = torch.tensor(spec.rgb, dtype=torch.float32)[:, None, None, None]
    video = bg[:, None] * (1 - cover[None]) + rgb * cover[None]  # (3, T, H, W) in [0, 1]
    return (video.clamp(0, 1) * 2 - 1).contiguous()


EDGES = ("inside", "wrap")


def check_edges(edges: object) -> str:
    """``edges`` if it is one of :data:`EDGES` ("inside": trajectories stay in the frame; "wrap": a torus).

    Raises:
        ValueError: anything else.
    """
    if edges not in EDGES:
        raise ValueError(f"edges: expected one of {list(EDGES)}, got {edges!r}")
    return str(edges)


def check_cross(cross: object) -> float:
    """``cross`` (the share of wrap clips that start anywhere on the torus) as a float in [0, 1].

    Raises:
        ValueError: not a number in [0, 1].
    """
    if isinstance(cross, bool) or not isinstance(cross, (int, float)) or not 0.0 <= cross <= 1.0:
        raise ValueError(f"cross: expected a share in [0, 1], got {cross!r}")
    return float(cross)


RADIUS = (0.14, 0.2)  # the default object radius range, as fractions of the frame size
MAX_RADIUS = 0.25  # the largest radius fraction whose longest trajectory still fits in a 32-pixel frame


def check_radius(radius: object) -> tuple[float, float]:
    """A radius range ``(lo, hi)`` as fractions of the frame size, with ``0 < lo <= hi <= 0.25``.

    Raises:
        TypeError / ValueError: not two numbers, or out of range.
    """
    if not isinstance(radius, (tuple, list)) or len(radius) != 2 or \
            any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in radius):
        raise TypeError(f"radius: expected two numbers (lo, hi), fractions of the frame size, got {radius!r}")
    lo, hi = float(radius[0]), float(radius[1])
    if not 0 < lo <= hi <= MAX_RADIUS:
        raise ValueError(f"radius: expected 0 < lo <= hi <= {MAX_RADIUS} (fractions of the frame size), "
                         f"got ({lo}, {hi})")
    return lo, hi


def render_many(specs: Iterable[VideoSpec]) -> torch.Tensor:
    """Draw many videos of equal shape: float32 ``[N, 3, T, H, W]`` in ``[-1, 1]``.

    Renders on one torch thread (restored after): these small tensors render much faster on one thread than on
    two contended ones.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.stack([render(spec) for spec in specs])
    finally:
        torch.set_num_threads(threads)


def sample_spec(colour: str, shape: str, motion: str, *, frames: int, size: int,
                rng: np.random.Generator, radius: tuple[float, float] = RADIUS, edges: str = "inside",
                cross: float = 1.0) -> VideoSpec:
    """Draw the continuous parameters of a video of the given triple from ``rng``.

    The radius is drawn from ``radius`` (fractions of the frame, default 14-20%) and a moving object travels 20-40%
    of the frame over the clip. With ``edges="inside"`` the whole trajectory stays inside the frame with a 1-pixel
    margin. With ``edges="wrap"``, a share ``cross`` of the clips start anywhere on the torus (they may cross an
    edge) and the others start as in the inside world (decided by one last draw, so apart from the start a wrap
    clip has the draws of the inside one).
    """
    _check_triple(colour, shape, motion)
    check_edges(edges)
    check_cross(cross)
    lo_r, hi_r = check_radius(radius)
    S = float(size)
    radius_px = float(rng.uniform(lo_r, hi_r) * S)
    travel = 0.0 if motion == "still" else float(rng.uniform(0.2, 0.4) * S)
    speed = travel / max(frames - 1, 1)
    lo, hi = _MARGIN + radius_px, S - _MARGIN - radius_px  # allowed range of the box centre
    dx, dy = _DIRECTIONS[motion]
    u = (float(rng.uniform()), float(rng.uniform()))  # one draw per axis, mapped below

    def along(d: float, v: float) -> float:  # start coordinate on one axis so that start + d * travel is in [lo, hi]
        a, b = (lo, hi - travel) if d > 0 else (lo + travel, hi) if d < 0 else (lo, hi)
        return a + (b - a) * v

    start = (along(dx, u[0]), along(dy, u[1]))
    rgb = tuple(float(np.clip(c + rng.uniform(-0.05, 0.05), 0.0, 1.0)) for c in COLOURS[colour])
    background = tuple(float(c) for c in rng.uniform(0.0, 0.22, size=3))
    gradient = (float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.0, 2 * np.pi)))
    if edges == "wrap" and float(rng.uniform()) < cross:  # anywhere on the torus
        start = (u[0] * S, u[1] * S)
    return VideoSpec(colour=colour, shape=shape, motion=motion, rgb=rgb, radius=radius_px, start=start, speed=speed,
                     background=background, gradient=gradient, frames=frames, size=size, edges=edges)


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name}: expected an int in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return int(value)


class CaptionedVideoWorld(Dataset):
    """A torch Dataset of captioned videos of one coloured shape moving over a dark background.

    Each item is a dict with ``"video"`` (float32 [3, T, H, W] in [-1, 1]), ``"caption"`` (a random template and
    synonyms, e.g. "a crimson disc slides leftward") and ``"attributes"`` (:meth:`VideoSpec.record`: colour,
    shape, motion, speed, radius, start, ...). The (colour, shape, motion) triple of sample ``i`` is drawn
    uniformly from the combinations left after ``exclude``; all draws come from a generator seeded by
    ``(seed, i)``.

    Args:
        num_samples: dataset length, >= 1.
        frames: T, in [8, 32].
        size: H = W, 32 or 64.
        seed: any int >= 0; the same seed gives the same dataset.
        exclude: phrases naming combinations never shown ("blue triangle", "green moving up", "still"); see
            veil.data.vocab.parse_phrase. Held-out combinations are in ``self.held_out``.
        radius: the object radius range (lo, hi) as fractions of the frame size, ``0 < lo <= hi <= 0.25``.
        edges: "inside" (every trajectory stays in the frame) or "wrap" (a torus: objects leave one edge and
            re-enter at the opposite one, so motion continued for any length stays true to the caption).
        cross: with ``edges="wrap"``, the share of clips that start anywhere on the torus (and may cross an edge);
            the others start as in the inside world, where the start depends on the direction (a "moving right"
            object starts on the left), which a model can read from the layout alone.

    Raises:
        TypeError / ValueError: a bad argument, an unknown word in ``exclude``, or an ``exclude`` that removes
            every combination.
    """

    def __init__(self, num_samples: int, frames: int = 16, size: int = 32, seed: int = 0,
                 exclude: Iterable[str | Pattern] | str | None = None, radius: tuple[float, float] = RADIUS,
                 edges: str = "inside", cross: float = 1.0):
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.frames = _check_int("frames", frames, MIN_FRAMES, MAX_FRAMES)
        self.size = _check_int("size", size, 1)
        if self.size not in SIZES:
            raise ValueError(f"size: expected one of {SIZES}, got {size}")
        self.seed = _check_int("seed", seed, 0)
        self.seen, self.held_out = split_combinations(exclude)
        self.radius = check_radius(radius)
        self.edges = check_edges(edges)
        self.cross = check_cross(cross)

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def spec(self, index: int) -> VideoSpec:
        """The :class:`VideoSpec` of sample ``index``."""
        index = self._index(index)
        rng = self._rng(index)
        colour, shape, motion = self.seen[int(rng.integers(len(self.seen)))]
        return sample_spec(colour, shape, motion, frames=self.frames, size=self.size, rng=rng, radius=self.radius,
                           edges=self.edges, cross=self.cross)

    def caption(self, index: int) -> str:
        """The caption of sample ``index``."""
        spec = self.spec(index)
        # a generator of its own so that the caption does not depend on how many draws the spec made
        return caption(spec.colour, spec.shape, spec.motion, np.random.default_rng([self.seed, self._index(index), 1]))

    def _index(self, index: int) -> int:
        index = _check_int("index", index, -self.num_samples, self.num_samples - 1)
        return index % self.num_samples

    def __getitem__(self, index: int) -> dict:
        spec = self.spec(index)
        return {"video": render(spec), "caption": self.caption(index), "attributes": spec.record()}


def make_video(colour: str, shape: str, motion: str, *, frames: int = 16, size: int = 32,
               seed: int = 0) -> tuple[torch.Tensor, VideoSpec]:
    """One video of the given triple (for evaluation prompts and tests).

    Returns:
        (video float32 [3, T, H, W] in [-1, 1], its VideoSpec).

    Raises:
        ValueError: an unknown attribute value or a size below 8.
    """
    spec = sample_spec(colour, shape, motion, frames=_check_int("frames", frames, 2), size=_check_int("size", size, 16),
                       rng=np.random.default_rng([seed, 2**31]))
    return render(spec), spec


__all__ = ["EDGES", "MOTIONS", "CaptionedVideoWorld", "VideoSpec", "make_video", "render", "render_many", "sample_spec",
           "shape_inside"]

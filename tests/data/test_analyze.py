import dataclasses

import pytest
import torch
import torch.nn.functional as F

from veil.data.analyze import analyze, analyze_batch
from veil.data.world import CaptionedVideoWorld, render

pytestmark = pytest.mark.usefixtures("one_thread")


def _blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [3, T, H, W] frames (replicate padding)."""
    x = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum()
    C, T, H, W = video.shape
    y = video.permute(1, 0, 2, 3).reshape(T * C, 1, H, W)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
    return y.reshape(T, C, H, W).permute(1, 0, 2, 3)


@pytest.mark.parametrize("size, frames, seeds, n", [(32, 8, (0, 1, 2), 25), (64, 8, (3, 4), 12), (32, 24, (5,), 10)])
@pytest.mark.parametrize("degrade", ["clean", "noise+blur"])
def test_recovers_the_truth(size, frames, seeds, n, degrade):
    gen = torch.Generator().manual_seed(size + frames)
    right = total = 0
    for seed in seeds:
        world = CaptionedVideoWorld(n, frames=frames, size=size, seed=seed)
        for i in range(n):
            spec, video = world.spec(i), world[i]["video"]
            if degrade != "clean":
                # noise std 0.1 in [-1, 1] units (0.05 of the range) and a slight blur
                video = _blur(video, 0.8) + 0.1 * torch.randn(video.shape, generator=gen)
            got = analyze(video).as_tuple()
            right += got == (spec.colour, spec.shape, spec.motion)
            total += 1
    assert right / total >= 0.98, f"{right}/{total}"


def _hand_video(direction: str) -> torch.Tensor:
    """A yellow square drawn by hand (not by the world's renderer), moving 2 px/frame on a flat grey-blue background."""
    v = torch.empty(3, 6, 32, 32)
    v[:] = torch.tensor([-0.8, -0.7, -0.5])[:, None, None, None]
    step = {"right": (2, 0), "up": (0, -2), "still": (0, 0)}[direction]
    for t in range(6):
        x0, y0 = 10 + step[0] * t, 16 + step[1] * t
        v[:, t, y0:y0 + 8, x0:x0 + 8] = torch.tensor([1.0, 0.8, -0.9])[:, None, None]
    return v


@pytest.mark.parametrize("direction", ["right", "up", "still"])
def test_hand_drawn_square(direction):
    a = analyze(_hand_video(direction))
    assert a.as_tuple() == ("yellow", "square", direction)
    assert a.found == 6
    expected = {"right": (10.0, 0.0), "up": (0.0, -10.0), "still": (0.0, 0.0)}[direction]
    assert a.displacement == pytest.approx(expected, abs=1e-4)
    assert analyze(_hand_video(direction)[..., 2:30]).as_tuple() == a.as_tuple()  # non-square frames


def test_empty_video_and_bad_input():
    a = analyze(torch.full((3, 4, 32, 32), -0.9))
    assert a.as_tuple() == (None, None, None) and a.found == 0
    with pytest.raises(ValueError, match="video"):
        analyze(torch.zeros(4, 4, 32, 32))
    with pytest.raises(TypeError, match="video"):
        analyze(torch.zeros(3, 4, 32, 32, dtype=torch.uint8))
    batch = torch.stack([_hand_video("right"), _hand_video("up")])
    assert [a.motion for a in analyze_batch(batch)] == ["right", "up"]


@pytest.mark.parametrize("degrade", ["clean", "noise+blur"])
def test_wrap_world_is_read_across_the_edges(degrade):
    # 48-frame clips of a 16-frame world: every moving object crosses an edge at least once
    gen = torch.Generator().manual_seed(7)
    world = CaptionedVideoWorld(30, frames=16, size=32, seed=3, radius=(0.2, 0.25), edges="wrap")
    right = total = crossed = 0
    for i in range(len(world)):
        spec = world.spec(i)
        long = dataclasses.replace(spec, frames=48)
        x = [long.start[0] + {"left": -1, "right": 1}.get(spec.motion, 0) * spec.speed * t for t in (0, 47)]
        y = [long.start[1] + {"up": -1, "down": 1}.get(spec.motion, 0) * spec.speed * t for t in (0, 47)]
        crossed += any(int(a // 32) != int(b // 32) for a, b in (x, y))
        video = render(long)
        if degrade != "clean":
            video = _blur(video, 0.8) + 0.1 * torch.randn(video.shape, generator=gen)
        for start in range(0, 48, 16):
            right += analyze(video[:, start:start + 16], wrap=True).as_tuple() == (spec.colour, spec.shape,
                                                                                   spec.motion)
            total += 1
    assert crossed >= 20 and right / total >= 0.97, f"{right}/{total}, {crossed} crossed"
    # an object split across the right edge from the first frame on is read as one, moving right
    spec = dataclasses.replace(world.spec(0), motion="right", start=(28.0, 16.0), speed=1.0)
    assert analyze(render(spec), wrap=True).motion == "right"

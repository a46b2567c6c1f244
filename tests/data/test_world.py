import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from veil.data.vocab import Pattern, parse_phrase
from veil.data.world import CaptionedVideoWorld, VideoSpec, render


def test_deterministic_by_seed_and_shapes():
    a, b = CaptionedVideoWorld(4, frames=8, size=32, seed=3), CaptionedVideoWorld(4, frames=8, size=32, seed=3)
    c = CaptionedVideoWorld(4, frames=8, size=32, seed=4)
    x, y, z = a[2], b[2], c[2]
    assert x["video"].shape == (3, 8, 32, 32) and x["video"].dtype == torch.float32
    assert torch.equal(x["video"], y["video"]) and x["caption"] == y["caption"]
    assert not torch.equal(x["video"], z["video"])
    assert float(x["video"].min()) >= -1 and float(x["video"].max()) <= 1
    assert torch.equal(a[-1]["video"], a[3]["video"])


def test_render_literal_pixels():
    # a square with its box on pixel boundaries: pixels inside are exactly the object colour, outside the background
    spec = VideoSpec(colour="red", shape="square", motion="right", rgb=(1.0, 0.0, 0.5), radius=3.0,
                     start=(8.0, 10.0), speed=2.0, background=(0.0, 0.2, 0.0), gradient=(0.0, 0.0), frames=3, size=32)
    v = (render(spec) + 1) / 2  # (3, T, H, W) in [0, 1]
    for t in range(3):
        x0 = 5 + 2 * t  # box [x0, x0 + 6) x [7, 13)
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[7:13, x0:x0 + 6] = True
        obj = (v[0, t] > 0.5)
        assert torch.equal(obj, expected)
        assert torch.allclose(v[:, t][:, expected], torch.tensor([1.0, 0.0, 0.5])[:, None], atol=1e-6)
        assert torch.allclose(v[:, t][:, ~expected], torch.tensor([0.0, 0.2, 0.0])[:, None], atol=1e-6)


def test_specs_stay_in_frame_and_match_captions():
    world = CaptionedVideoWorld(60, frames=16, size=32, seed=1)
    for i in range(len(world)):
        s = world.spec(i)
        for t in (0, s.frames - 1):
            cx, cy = s.centre(t)
            assert s.radius < cx < 32 - s.radius and s.radius < cy < 32 - s.radius
        travel = s.speed * (s.frames - 1)
        assert (travel == 0) == (s.motion == "still")
        assert max(s.background) <= 0.22 + 1e-9 and max(s.rgb) >= 0.8
        assert parse_phrase(world.caption(i)) == Pattern(s.colour, s.shape, s.motion)


def test_exclude_removes_combinations():
    world = CaptionedVideoWorld(200, frames=8, size=32, seed=0, exclude=["blue triangle", "green moving up"])
    triples = {(s.colour, s.shape, s.motion) for s in (world.spec(i) for i in range(len(world)))}
    assert not any(c == "blue" and sh == "triangle" for c, sh, _ in triples)
    assert not any(c == "green" and m == "up" for c, _, m in triples)
    assert ("blue", "circle", "up") in triples or ("blue", "square", "up") in triples
    assert len(world.held_out) == 8 and set(world.seen).isdisjoint(world.held_out)


def test_collates_in_a_dataloader():
    batch = next(iter(DataLoader(CaptionedVideoWorld(4, frames=8, size=32), batch_size=4)))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and len(batch["caption"]) == 4
    assert len(batch["attributes"]["colour"]) == 4 and batch["attributes"]["speed"].shape == (4,)


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(size=48), ValueError, "size"), (dict(frames=7), ValueError, "frames"),
    (dict(frames=33), ValueError, "frames"),
    (dict(exclude=["purple square"]), ValueError, "purple"), (dict(seed=-1), ValueError, "seed"),
    (dict(frames=8.0), TypeError, "frames"),
])
def test_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        CaptionedVideoWorld(4, **kwargs)


def test_independent_of_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    a = CaptionedVideoWorld(2, frames=8, seed=5)[1]["video"]
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(a, CaptionedVideoWorld(2, frames=8, seed=5)[1]["video"])


def test_radius_range_option():
    from veil.data.world import RADIUS

    default = CaptionedVideoWorld(50, frames=8, size=32, seed=2)
    big = CaptionedVideoWorld(50, frames=8, size=32, seed=2, radius=(0.2, 0.25))
    assert default.radius == RADIUS
    radii = [big.spec(i).radius / 32 for i in range(50)]
    assert min(radii) >= 0.2 and max(radii) <= 0.25
    for i in range(50):  # the same triple, caption and everything else drawn; the longest trajectory still fits
        a, b = default.spec(i), big.spec(i)
        assert (a.colour, a.shape, a.motion) == (b.colour, b.shape, b.motion) and default.caption(i) == big.caption(i)
        for t in (0, 7):
            x, y = b.centre(t)
            assert b.radius <= x <= 32 - b.radius and b.radius <= y <= 32 - b.radius
    with pytest.raises(ValueError, match="radius"):
        CaptionedVideoWorld(4, radius=(0.2, 0.3))
    with pytest.raises(TypeError, match="radius"):
        CaptionedVideoWorld(4, radius=0.2)


def test_wrap_world_is_a_torus():
    # a square whose box straddles the right edge: the part past the edge is drawn at the left
    spec = VideoSpec(colour="red", shape="square", motion="right", rgb=(1.0, 0.0, 0.5), radius=3.0,
                     start=(30.0, 10.0), speed=2.0, background=(0.0, 0.2, 0.0), gradient=(0.0, 0.0), frames=3, size=32,
                     edges="wrap")
    v = (render(spec) + 1) / 2
    for t in range(3):
        x0 = 27 + 2 * t  # box [x0, x0 + 6) mod 32 x [7, 13)
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[7:13, [(x0 + i) % 32 for i in range(6)]] = True
        assert torch.equal(v[0, t] > 0.5, expected)
    assert spec.centre(2) == (2.0, 10.0)  # 34 mod 32
    world = CaptionedVideoWorld(40, frames=16, size=32, seed=2, edges="wrap")
    starts = np.array([world.spec(i).start for i in range(len(world))])
    assert all(world.spec(i).edges == "wrap" for i in range(3)) and (starts >= 0).all() and (starts < 32).all()
    # the same draws as the inside world but the start: colour, shape, motion, speed, background
    inside = CaptionedVideoWorld(40, frames=16, size=32, seed=2)
    a, b = world.spec(5), inside.spec(5)
    assert (a.colour, a.shape, a.motion, a.speed, a.rgb, a.background) == (b.colour, b.shape, b.motion, b.speed,
                                                                           b.rgb, b.background)
    with pytest.raises(ValueError, match="edges: expected one of"):
        CaptionedVideoWorld(4, edges="bounce")


def test_wrap_world_cross_share_starts_the_rest_as_inside():
    inside = CaptionedVideoWorld(200, frames=16, size=32, seed=4)
    half = CaptionedVideoWorld(200, frames=16, size=32, seed=4, edges="wrap", cross=0.5)
    none = CaptionedVideoWorld(200, frames=16, size=32, seed=4, edges="wrap", cross=0.0)
    same = [half.spec(i).start == inside.spec(i).start for i in range(200)]
    assert 0.35 < np.mean(same) < 0.65  # about half start as in the inside world, the others anywhere
    assert all(none.spec(i).start == inside.spec(i).start for i in range(200))
    # a "moving right" object of the inside world starts in the left part of the frame, on the torus anywhere
    rights = [i for i in range(200) if inside.spec(i).motion == "right"]
    assert max(inside.spec(i).start[0] for i in rights) < 26
    with pytest.raises(ValueError, match="cross"):
        CaptionedVideoWorld(4, edges="wrap", cross=1.5)

"""evaluate: the analyzer scores world renders (ground truth) at 100%, wrong videos at 0, extensions per window."""

from __future__ import annotations

import json

import pytest
import torch

from tests.pipelines.t2v_helpers import HashEncoder, randomize, tiny_config
from veil.data import COLOURS, make_video
from veil.models import TimestepExperts
from veil.pipelines import PixelCodec, TextToVideo
from veil.pipelines.evaluate import (
    caption_sensitivity,
    default_prompts,
    denoiser_floor,
    evaluate,
    extension_ceiling,
    fidelity_scores,
    head_span_projection,
    score_videos,
    truth_of,
    window_scores,
)

TRIPLES = [("red", "circle", "left"), ("blue", "square", "up"), ("yellow", "triangle", "still"),
           ("green", "square", "down")]


def test_truth_of_reads_prompts():
    assert truth_of("a crimson ball drifts to the left") == ("red", "circle", "left")
    assert truth_of("a white box staying still") == ("white", "square", "still")
    with pytest.raises(ValueError, match="colour, a shape and a motion"):
        truth_of("a red circle")


def test_world_renders_score_100_and_wrong_videos_score_0():
    videos = torch.stack([make_video(*t, frames=8, seed=i)[0] for i, t in enumerate(TRIPLES)])
    s = score_videos(videos, TRIPLES)
    assert (s["n"], s["colour"], s["shape"], s["motion"], s["all"]) == (4, 1.0, 1.0, 1.0, 1.0)
    # the same videos against shifted truths: every attribute differs
    wrong = TRIPLES[1:] + TRIPLES[:1]
    s = score_videos(videos, wrong)
    assert (s["colour"], s["shape"], s["motion"], s["all"]) == (0.0, 0.0, 0.0, 0.0)
    # one attribute wrong at a time
    s = score_videos(videos[:1], [("red", "square", "left")])
    assert (s["colour"], s["shape"], s["motion"], s["all"]) == (1.0, 0.0, 1.0, 0.0)
    assert s["rows"][0]["got"] == ["red", "circle", "left"] and s["rows"][0]["truth"] == ["red", "square", "left"]


def test_window_scores_count_each_window():
    # three 8-frame clips one after the other (each moves a full clip's distance)
    long = torch.cat([make_video("red", "circle", "right", frames=8, seed=s)[0] for s in range(3)], dim=1)
    flipped = long.flip(1)  # played backwards: moving left
    s = window_scores(torch.stack([long, flipped]), [("red", "circle", "right")] * 2, 8)
    assert s["windows"] == 6 and s["colour"] == 1.0 and s["motion"] == 0.5 and s["both"] == 0.5


def test_extension_ceiling_is_the_world_continued():
    still = extension_ceiling([("red", "square", "still")], 8, 32, 4, samples=4)
    assert still == {"windows": 16, "colour": 1.0, "shape": 1.0, "motion": 1.0, "both": 1.0, "all": 1.0}
    moving = extension_ceiling([("green", "circle", "left"), ("white", "triangle", "down")], 8, 32, 4, samples=6)
    # the first window always moves the right way; by the fourth the object has travelled 80-160% of the frame
    assert moving["windows"] == 48 and 0.25 <= moving["motion"] < 0.75 and moving["colour"] < 1.0
    assert moving == extension_ceiling([("green", "circle", "left"), ("white", "triangle", "down")], 8, 32, 4,
                                       samples=6)  # deterministic by seed


def test_extension_ceiling_of_the_wrap_world_keeps_every_window():
    truths = [("green", "circle", "left"), ("white", "triangle", "down"), ("blue", "square", "right")]
    wrap = extension_ceiling(truths, 16, 32, 4, samples=4, edges="wrap", radius=(0.2, 0.25))
    # objects travel 80-160% of the frame over the four windows, crossing an edge, and the motion stays true
    assert wrap["windows"] == 48 and wrap["all"] >= 0.95
    inside = extension_ceiling(truths, 16, 32, 4, samples=4, radius=(0.2, 0.25))
    assert inside["motion"] < 0.75


def test_fidelity_scores_put_generated_clips_next_to_renders():
    truths = [("red", "square", "left"), ("blue", "circle", "up"), ("white", "square", "still")]
    clean = torch.stack([make_video(*t, frames=8, seed=i)[0] for i, t in enumerate(truths)])
    s = fidelity_scores(clean, truths)
    for m in (s["generated"], s["rendered"]):
        assert m["background"] < 1e-3 and m["square_fill"] >= 0.92 and m["edge"] < 1.0 and m["edges_sharp"] == 1.0
    blurred = torch.nn.functional.avg_pool3d(clean, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    noisy = blurred + 0.05 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))
    g = fidelity_scores(noisy, truths)["generated"]
    assert g["edge"] > 1.8 and g["edges_sharp"] == 0.0 and g["background"] > 0.015


class WorldPipeline:
    """Answers every prompt with the world's own render of it (a perfect model)."""

    class config:  # noqa: N801
        frames, size = 8, 32

    extra: dict = {}

    def __call__(self, prompts, *, seed=0, guidance=None, steps=None, extend_to=None):
        n = (extend_to or self.config.frames) // self.config.frames  # windows of the trained length, one per clip
        return torch.stack([torch.cat([make_video(*truth_of(p), frames=self.config.frames, seed=seed + i + w)[0]
                                       for w in range(n)], dim=1) for i, p in enumerate(prompts)])


def test_evaluate_a_perfect_pipeline_writes_its_report(tmp_path):
    exclude = ["blue triangle moving up", "white square still"]
    prompts = default_prompts(exclude)
    assert prompts["held_out"] == ["a blue triangle moving up", "a white square staying still"]
    seen = prompts["seen"][::12]
    report = evaluate(WorldPipeline(), seen, held_out=prompts["held_out"], exclude=exclude, extension_prompts=2,
                      out_dir=tmp_path)
    assert report["seen"]["all"] == 1.0 and report["held_out"]["all"] == 1.0
    assert report["held_out_combinations"]["a blue triangle moving up"]["got"] == ["blue", "triangle", "up"]
    assert report["extension"]["windows"] == 8 and report["extension"]["both"] == 1.0
    assert report["extension"]["ceiling"]["windows"] == 2 * 8 * 4  # 8 clips per prompt, 4 windows each
    assert json.loads((tmp_path / "report.json").read_text())["seen"]["n"] == len(seen)
    md = (tmp_path / "report.md").read_text()
    assert "| held_out | 2 | 100.0% | 100.0% | 100.0% | 100.0% |" in md
    assert all((tmp_path / f).is_file() for f in ("seen.gif", "held_out.gif", "extension.gif"))
    fid = report["fidelity"]
    assert fid["generated"]["background"] < 1e-3 and fid["rendered"]["edges_sharp"] == 1.0
    assert "| rendered |" in md and report["edges"] == "inside"
    assert "sensitivity" not in report and "fidelity_floor" not in report  # no denoiser to probe


class ColourDenoiser:
    """A flow-matching pipeline whose denoiser reads only the caption's colour: its clean-clip estimate is a frame
    of that colour at a tenth of its strength (context = the colour's index, from a fake encoder)."""

    class config:  # noqa: N801
        frames, size, objective = 8, 32, "flow"

    def __init__(self):
        self.codec, self.device, self.seen = PixelCodec(), torch.device("cpu"), []

    def encode_prompts(self, prompts):
        self.seen.append(list(prompts))
        index = [next(i for i, c in enumerate(COLOURS) if f" {c} " in p) for p in prompts]
        return torch.tensor(index, dtype=torch.float32).view(-1, 1, 1), torch.ones(len(prompts), dtype=torch.long)

    def model(self, xt, timestep, context, lengths):
        rgb = torch.tensor([COLOURS[c] for c in list(COLOURS)])[context.view(-1).long()]  # (B, 3) in [0, 1]
        x0_hat = 0.1 * (2 * rgb - 1).view(-1, 3, 1, 1, 1).expand_as(xt)
        sigma = (timestep / 1000).view(-1, 1, 1, 1, 1)
        return (xt - x0_hat) / sigma  # the velocity whose estimate x_t - sigma v is x0_hat


def test_caption_sensitivity_swaps_one_attribute_and_sees_what_the_denoiser_reads():
    pipe = ColourDenoiser()
    sens = caption_sensitivity(pipe, clips=8, sigmas=(0.5, 0.9))
    assert set(sens) == {"colour", "shape", "motion"} and set(sens["colour"]) == {"0.5", "0.9"}
    assert all(r > 1.0 for r in sens["colour"].values())  # the wrong colour is further from the clip
    assert all(r == 1.0 for a in ("shape", "motion") for r in sens[a].values())  # read nowhere: exactly 1
    true, colour, shape, motion = pipe.seen
    assert true[0] == "a red circle moving left" and colour[0] == "a green circle moving left"
    assert shape[0] == "a red square moving left" and motion[:4] == ["a red circle moving right",
                                                                     "a green square moving left",
                                                                     "a blue triangle moving down",
                                                                     "a yellow circle moving up"]



def test_denoiser_floor_measures_the_estimate_from_noised_renders():
    class Identity(ColourDenoiser):  # velocity 0: the clean-clip estimate is the noised render itself
        def model(self, xt, timestep, context, lengths):
            self.timesteps.append(timestep.clone())
            return torch.zeros_like(xt)

    pipe = Identity()
    pipe.timesteps = []
    floor = denoiser_floor(pipe, TRIPLES, sigmas=(0.05, 0.4))
    assert list(floor) == ["0.05", "0.4", "rendered"]
    assert pipe.seen == [["a red circle moving left", "a blue square moving up", "a yellow triangle staying still",
                          "a green square moving down"]]
    assert [t.tolist() for t in pipe.timesteps] == [[50.0] * 4, [400.0] * 4]
    low, high, render = floor["0.05"], floor["0.4"], floor["rendered"]
    assert render["background"] < 1e-3 and render["edges_sharp"] == 1.0
    # noise left in the estimate: the residual grows with sigma (mean |sigma * noise| / 2 on the 0-1 scale)
    assert 0.005 < low["background"] < 0.03 < 0.1 < high["background"]
    with pytest.raises(ValueError, match="sigmas"):
        denoiser_floor(pipe, TRIPLES, sigmas=(0.0,))
    with pytest.raises(ValueError, match="truths"):
        denoiser_floor(pipe, [])
    assert denoiser_floor(WorldPipeline(), TRIPLES) is None


def _tiny_pipeline(prediction: str, seed: int = 0) -> TextToVideo:
    config = tiny_config(prediction)
    return TextToVideo(randomize(config.build_model(), seed), PixelCodec(), HashEncoder(), config)


def test_head_span_projection_keeps_what_the_head_can_draw_and_removes_the_rest():
    pipe = _tiny_pipeline("x0")
    wan = pipe.model.model
    weight, bias = wan.proj_out.weight.detach(), wan.proj_out.bias.detach()  # (2*8*8*3, 24), (384,)
    grid = (2, 4, 4)  # a [1, 3, 4, 32, 32] clip in 2x8x8 patches
    h = torch.randn(1, 32, 24, dtype=torch.float64)
    drawable = wan.unpatchify((h @ weight.double().T + bias.double()).float(), grid)  # in the head's span
    assert drawable.shape == (1, 3, 4, 32, 32)
    torch.testing.assert_close(head_span_projection(pipe, drawable), drawable, atol=1e-4, rtol=1e-4)
    # a part orthogonal to the span (per patch) is removed exactly
    q, _ = torch.linalg.qr(weight.double())  # (384, 24): an orthonormal basis of the span
    r = torch.randn(32, 384, dtype=torch.float64)
    r = r - (r @ q) @ q.T
    off = drawable + wan.unpatchify(r.float()[None], grid)
    torch.testing.assert_close(head_span_projection(pipe, off), drawable, atol=1e-4, rtol=1e-4)
    # the floor reports it beside the noise levels; a velocity network's estimate is not bound to its head
    floor = denoiser_floor(pipe, TRIPLES[:2], sigmas=(0.2,))
    assert list(floor) == ["0.2", "head", "rendered"] and floor["head"]["background"] > 0
    assert head_span_projection(_tiny_pipeline("velocity"), drawable) is None
    # a pair of experts: the low-noise expert's head, which makes the last estimates
    other = _tiny_pipeline("x0", seed=1)
    pipe.model = TimestepExperts(other.model, pipe.model, 0.85)
    torch.testing.assert_close(head_span_projection(pipe, off), drawable, atol=1e-4, rtol=1e-4)
    pipe.model = TimestepExperts(pipe.model.low_noise_model, other.model, 0.85)
    assert (head_span_projection(pipe, off) - drawable).abs().max() > 1e-2
    with pytest.raises(ValueError, match="latents"):
        head_span_projection(pipe, drawable[:, :, :3])


def test_caption_sensitivity_of_a_continuation_sees_the_prefix_clean_and_scores_the_rest():
    class Continuing(ColourDenoiser):  # per-frame timesteps; the clean prefix is returned as it is given
        def model(self, xt, timestep, context, lengths):
            self.timesteps.append(timestep.clone())
            rgb = torch.tensor([COLOURS[c] for c in list(COLOURS)])[context.view(-1).long()]
            x0_hat = 0.1 * (2 * rgb - 1).view(-1, 3, 1, 1, 1).expand_as(xt)
            sigma = (timestep / 1000)[:, None, :, None, None]
            return torch.where(sigma > 0, (xt - x0_hat) / sigma.clamp(min=1e-6), torch.zeros_like(xt))

    pipe = Continuing()
    pipe.timesteps = []
    sens = caption_sensitivity(pipe, clips=8, sigmas=(0.9, 1.0), prefix=2)
    assert all(r > 1.0 for r in sens["colour"].values()) and all(
        r == 1.0 for a in ("shape", "motion") for r in sens[a].values())
    t = pipe.timesteps[0]
    assert t.shape == (8, 8) and (t[:, :2] == 0).all() and torch.allclose(t[:, 2:], torch.tensor(900.0))
    # the score is over the continued frames only: a prefix the model leaves untouched adds no error
    plain = caption_sensitivity(ColourDenoiser(), clips=8, sigmas=(0.9,))
    assert sens["colour"]["0.9"] != plain["colour"]["0.9"]
    with pytest.raises(ValueError, match=r"prefix: expected an int in \[0, 8\)"):
        caption_sensitivity(pipe, clips=8, prefix=8)

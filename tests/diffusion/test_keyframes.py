"""Keyframe anchoring and window-by-window extension."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from tests.diffusion.nets import PointDenoiser, TinyDenoiser
from veil.diffusion import DDPMObjective, FlowMatching, extend, make_scheduler, sample

SHAPE = (2, 4, 5, 4, 4)


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the inputs of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, timestep, context, context_lengths=None):
        self.inputs.append((x.clone(), timestep.clone()))
        return self.inner(x, timestep, context, context_lengths)


def _setup(seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ctx, lengths = torch.randn(2, 5, 8, generator=g), torch.tensor([5, 3])
    first = torch.randn(2, 4, 4, 4, generator=g) * 2
    last = torch.randn(4, 4, 4, generator=g) * 2  # one latent for the whole batch
    mid = torch.randn(2, 4, 4, 4, generator=g) * 2
    return ctx, lengths, {0: first, -1: last, 2: mid}


@pytest.mark.parametrize("name", ["flow_euler", "unipc"])
def test_keyframes_are_kept_exactly_and_the_rest_is_sampled(name):
    ctx, lengths, frames = _setup()
    model = Recorder(PointDenoiser("flow"))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    sched = make_scheduler(name, FlowMatching(shift=3.0))
    out = sample(model, sched, SHAPE, ctx, lengths, guidance_scale=1.0, steps=10, latents=noise, progress=False)
    with torch.no_grad():
        anchored = sample(model, sched, SHAPE, ctx, lengths, guidance_scale=1.0, steps=10, latents=noise,
                          keyframes=frames, progress=False)
    assert torch.equal(anchored[:, :, 0], frames[0])
    assert torch.equal(anchored[:, :, 4], frames[-1].expand(2, -1, -1, -1))
    assert torch.equal(anchored[:, :, 2], frames[2])
    # the exact point denoiser treats frames independently: the others still land on the data point
    for f in (1, 3):
        torch.testing.assert_close(anchored[:, :, f], out[:, :, f], atol=5e-3, rtol=5e-3)
        assert (anchored[:, :, f] - frames[0]).abs().max() > 0.1
    # the model saw the anchors noised to each step's sigma with the sample's own initial noise
    sigmas = sched.sigmas
    for i, (x, _t) in enumerate(model.inputs[10:]):
        s = sigmas[i]
        torch.testing.assert_close(x[:, :, 0], (1 - s) * frames[0] + s * noise[:, :, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x[:, :, 2], (1 - s) * frames[2] + s * noise[:, :, 2], atol=1e-5, rtol=1e-5)


def test_keyframes_with_ddim_use_its_alphas():
    ctx, lengths, frames = _setup(1)
    obj = DDPMObjective(prediction_type="epsilon")
    model = Recorder(PointDenoiser("epsilon", alphas_cumprod=obj.scheduler.alphas_cumprod))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    sched = make_scheduler("ddim", obj)
    with torch.no_grad():
        out = sample(model, sched, SHAPE, ctx, lengths, guidance_scale=1.0, steps=10, latents=noise,
                     keyframes={1: frames[0]}, progress=False)
        want = model.inner.x0(ctx, lengths, out)
    assert torch.equal(out[:, :, 1], frames[0])
    torch.testing.assert_close(out[:, :, [0, 2, 3, 4]], want[:, :, [0, 2, 3, 4]], atol=1e-3, rtol=1e-3)
    abar = obj.scheduler.alphas_cumprod
    for x, t in model.inputs:
        a = abar[int(t[0])]
        torch.testing.assert_close(x[:, :, 1], a.sqrt() * frames[0] + (1 - a).sqrt() * noise[:, :, 1])
    assert isinstance(sched, DDIMScheduler)


def test_anchors_steer_the_other_frames_of_a_real_network():
    ctx, lengths, frames = _setup(2)
    model = TinyDenoiser()  # conv3d mixes neighbouring frames: an anchor changes its neighbours
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    kw = dict(guidance_scale=1.0, steps=6, latents=noise, progress=False)
    with torch.no_grad():
        free = sample(model, FlowMatchEulerDiscreteScheduler(), SHAPE, ctx, lengths, **kw)
        anchored = sample(model, FlowMatchEulerDiscreteScheduler(), SHAPE, ctx, lengths, keyframes={0: frames[0]}, **kw)
    assert torch.equal(anchored[:, :, 0], frames[0])
    assert (anchored[:, :, 1] - free[:, :, 1]).abs().max() > 1e-3  # the neighbour moved
    assert torch.isfinite(anchored).all()


def test_clean_anchors_are_given_clean_at_timestep_0():
    ctx, lengths, frames = _setup(3)

    class PerFrame(torch.nn.Module):  # a denoiser that takes per-frame timesteps [B, T]
        def __init__(self):
            super().__init__()
            self.inner = TinyDenoiser()

        def forward(self, x, t, c, n=None):
            assert t.shape == (x.shape[0], x.shape[2])
            return self.inner(x, t.mean(1), c, n)

    rec = Recorder(PerFrame())
    kw = dict(guidance_scale=2.0, steps=3, progress=False, generator=torch.Generator().manual_seed(0))
    anchors = {0: frames[0], 2: frames[2]}
    with torch.no_grad():
        out = sample(rec, FlowMatchEulerDiscreteScheduler(), SHAPE, ctx, lengths, keyframes=anchors,
                     clean_anchors=True, **kw)
    assert torch.equal(out[:, :, 0], frames[0]) and torch.equal(out[:, :, 2], frames[2])
    assert len(rec.inputs) == 3
    for x, t in rec.inputs:  # rows: conditional and unconditional
        assert t.shape == (4, 5) and (t[:, [0, 2]] == 0).all() and (t[:, [1, 3, 4]] > 0).all()
        assert torch.equal(x[:2, :, 0], frames[0]) and torch.equal(x[:2, :, 2], frames[2])


@pytest.mark.parametrize("frames_wanted", [9, 8, 4])
def test_extend_stitches_windows_exactly(frames_wanted):
    ctx, lengths, _ = _setup(3)
    model = TinyDenoiser()
    video = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out, windows = extend(model, FlowMatchEulerDiscreteScheduler(shift=2.0), video, ctx, frames_wanted,
                              window=4, overlap_k=2, context_lengths=lengths, guidance_scale=2.0, steps=3,
                              generator=torch.Generator().manual_seed(0), progress=False, return_windows=True)
    assert out.shape == (2, 4, frames_wanted, 4, 4)
    assert torch.equal(out[:, :, :4], video)
    assert len(windows) == {9: 3, 8: 2, 4: 0}[frames_wanted]
    end = 4
    for win in windows:
        assert win.shape == (2, 4, 4, 4, 4)
        assert torch.equal(win[:, :, :2], out[:, :, end - 2:end])  # anchored on the last 2 frames so far
        take = min(2, frames_wanted - end)
        assert torch.equal(out[:, :, end:end + take], win[:, :, 2:2 + take])
        assert (win[:, :, 2:] - win[:, :, :2]).abs().max() > 1e-3  # new frames were sampled
        end += take
    assert end == frames_wanted


def test_extend_errors():
    ctx, lengths, _ = _setup()
    video = torch.zeros(2, 4, 3, 4, 4)
    model = TinyDenoiser()
    sched = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="overlap_k"):
        extend(model, sched, video, ctx, 8, window=4, overlap_k=4)
    with pytest.raises(ValueError, match="frames"):
        extend(model, sched, video, ctx, 2, window=4, overlap_k=2)
    with pytest.raises(ValueError, match="video_latents"):
        extend(model, sched, video[:, :, :1], ctx, 8, window=4, overlap_k=2)
    with pytest.raises(ValueError, match="keyframes"):
        sample(model, sched, SHAPE, ctx, lengths, keyframes={5: torch.zeros(4, 4, 4)}, steps=1, progress=False)
    with pytest.raises(ValueError, match="keyframes"):
        sample(model, sched, SHAPE, ctx, lengths, keyframes={0: torch.zeros(4, 4, 4), -5: torch.zeros(4, 4, 4)},
               steps=1, progress=False)
    with pytest.raises(ValueError, match=r"keyframes\[1\]"):
        sample(model, sched, SHAPE, ctx, lengths, keyframes={1: torch.zeros(3, 4, 4)}, steps=1, progress=False)

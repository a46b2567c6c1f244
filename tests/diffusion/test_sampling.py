"""Sampling over diffusers' schedulers: exact denoisers land on closed forms; guidance in one batch."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from tests.diffusion.nets import PointDenoiser, TinyDenoiser
from veil.diffusion import DDPMObjective, FlowMatching, expert_index, make_scheduler, sample

SHAPE = (2, 4, 3, 4, 4)


def _prompts(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(2, 6, 8, generator=g)
    lengths = torch.tensor([6, 2])
    neg = torch.randn(1, 3, 8, generator=g)
    # garbage in the padding: a model or a batching that attends it gets another answer
    ctx[1, 2:] = 100.0
    return ctx, lengths, neg


@pytest.mark.parametrize("objective,name,tol", [
    (FlowMatching(shift=3.0), "flow_euler", 1e-4),
    (FlowMatching(shift=3.0), "unipc", 5e-3),  # UniPC rounds flow timesteps to ints
    (DDPMObjective(prediction_type="epsilon"), "ddim", 1e-3),
    (DDPMObjective(prediction_type="v_prediction"), "ddim", 1e-3),
    (DDPMObjective(prediction_type="epsilon"), "ddpm", 1e-3),
    (DDPMObjective(prediction_type="v_prediction"), "unipc", 1e-3),
])
def test_exact_denoiser_lands_on_its_point(objective, name, tol):
    torch.manual_seed(0)
    kind = "flow" if isinstance(objective, FlowMatching) else objective.prediction_type
    model = PointDenoiser(kind, alphas_cumprod=getattr(objective, "scheduler", None) and
                          objective.scheduler.alphas_cumprod)
    ctx, lengths, _ = _prompts()
    steps = 20 if name != "ddpm" else 50
    out = sample(model, make_scheduler(name, objective), SHAPE, ctx, lengths, guidance_scale=1.0, steps=steps,
                 generator=torch.Generator().manual_seed(1), progress=False)
    want = model.x0(ctx, lengths, torch.empty(SHAPE)).detach()
    assert out.dtype == torch.float32 and out.shape == SHAPE
    torch.testing.assert_close(out, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("g", [1.0, 4.5])
def test_guidance_lands_on_the_extrapolated_point(g):
    # velocity is affine in x0, so Euler with uncond + g (cond - uncond) lands on x0(neg) + g (x0(cond) - x0(neg))
    torch.manual_seed(0)
    model = PointDenoiser("flow")
    ctx, lengths, neg = _prompts()
    out = sample(model, FlowMatchEulerDiscreteScheduler(shift=2.0), SHAPE, ctx, lengths, neg,
                 torch.tensor([2]), guidance_scale=g, steps=8, generator=torch.Generator().manual_seed(1),
                 progress=False)
    like = torch.empty(SHAPE)
    x_c = model.x0(ctx, lengths, like).detach()
    x_u = model.x0(neg.expand(2, -1, -1), torch.tensor([2, 2]), like).detach()  # the negative's own length
    torch.testing.assert_close(out, x_u + g * (x_c - x_u), atol=1e-4, rtol=1e-4)
    null = sample(model, FlowMatchEulerDiscreteScheduler(shift=2.0), SHAPE, ctx, lengths, guidance_scale=g, steps=8,
                  generator=torch.Generator().manual_seed(1), progress=False)
    x_null = model.proj.bias.detach()[None, :, None, None, None]  # the null prompt: no tokens, mean 0
    torch.testing.assert_close(null, x_null + g * (x_c - x_null), atol=1e-4, rtol=1e-4)


def _manual_guided_euler(model, ctx, lengths, neg, neg_len, scale_at, steps, noise):
    # the same integration with separate, unpadded conditional and unconditional calls
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        tt = t.expand(x.shape[0])
        cond = torch.cat([model(x[b:b + 1], tt[:1], ctx[b:b + 1, :lengths[b]]) for b in range(x.shape[0])])
        uncond = model(x, tt, neg[:, :neg_len].expand(x.shape[0], -1, -1))
        v = uncond + scale_at(float(t)) * (cond - uncond)
        x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v
    return x


def test_guidance_is_one_batch_with_unequal_lengths_and_equals_separate_calls():
    torch.manual_seed(0)
    model = TinyDenoiser()
    ctx, lengths, neg = _prompts()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg, torch.tensor([2]),
                     guidance_scale=3.0, steps=5, latents=noise, progress=False)
        assert model.calls == [(4, 6)] * 5  # one call per step, 2B rows, padded to max(6, 3)
        want = _manual_guided_euler(model, ctx, lengths, neg, 2, lambda t: 3.0, 5, noise)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_guidance_interval_guides_only_its_noise_levels_and_skips_the_unconditional_rows_elsewhere():
    torch.manual_seed(0)
    model = TinyDenoiser()
    ctx, lengths, neg = _prompts()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(5)
    inside = [0.5 <= float(t) / 1000 <= 1.0 for t in sched.timesteps]
    assert any(inside) and not all(inside)
    with torch.no_grad():
        out = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg, torch.tensor([2]),
                     guidance_scale=3.0, steps=5, latents=noise, progress=False, guidance_interval=(0.5, 1.0))
        assert model.calls == [(4, 6) if i else (2, 6) for i in inside]  # B rows where unguided
        want = _manual_guided_euler(model, ctx, lengths, neg, 2, lambda t: 3.0 if t / 1000 >= 0.5 else 1.0, 5, noise)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        every = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg,
                       torch.tensor([2]), guidance_scale=3.0, steps=5, latents=noise, progress=False,
                       guidance_interval=(0.0, 1.0))
        plain = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg,
                       torch.tensor([2]), guidance_scale=3.0, steps=5, latents=noise, progress=False)
    torch.testing.assert_close(every, plain, atol=0, rtol=0)
    for bad in ((0.5, 0.2), (-0.1, 1.0), (0.5, 1.5), (0.5,), "high"):
        with pytest.raises(ValueError, match="guidance_interval"):
            sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, guidance_scale=3.0,
                   steps=2, progress=False, guidance_interval=bad)


class TwoExperts(torch.nn.Module):
    """Wan 2.2-style TimestepExperts: the high-noise expert for t >= boundary * 1000."""

    def __init__(self, boundary: float = 0.875, use_method: bool = True):
        super().__init__()
        self.high_noise_model, self.low_noise_model = TinyDenoiser(), TinyDenoiser()
        self.boundary = boundary
        self.use_method = use_method
        self.seen: list[tuple[float, int]] = []

    def expert_for(self, timestep: float):
        return self.high_noise_model if timestep >= self.boundary * 1000 else self.low_noise_model

    def forward(self, x, timestep, context, context_lengths=None):
        expert = self.expert_for(float(timestep[0]))
        self.seen.append((float(timestep[0]), 0 if expert is self.high_noise_model else 1))
        return expert(x, timestep, context, context_lengths)


def test_per_expert_guidance_scales():
    torch.manual_seed(0)
    model = TwoExperts()
    ctx, lengths, neg = _prompts()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg, torch.tensor([2]),
                     guidance_scale=(6.0, 2.0), steps=6, latents=noise, progress=False)
        experts = [e for _, e in model.seen]
        assert 0 in experts and 1 in experts  # both stages ran
        want = _manual_guided_euler(model, ctx, lengths, neg, 2, lambda t: 6.0 if t >= 875 else 2.0, 6, noise)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        swapped = sample(model, FlowMatchEulerDiscreteScheduler(shift=3.0), SHAPE, ctx, lengths, neg,
                         torch.tensor([2]), guidance_scale=(2.0, 6.0), steps=6, latents=noise, progress=False)
        assert (swapped - out).abs().max() > 1e-3


def test_expert_index_conventions():
    m = TwoExperts()
    assert expert_index(m, 875.0) == 0 and expert_index(m, 874.9) == 1
    plain = torch.nn.Module()
    plain.boundary = 0.9
    assert expert_index(plain, 900.0) == 0 and expert_index(plain, 899.0) == 1
    assert expert_index(TinyDenoiser(), 900.0) is None

    class Named(torch.nn.Module):
        def expert_for(self, t):
            return "high" if t > 500 else "low"

    assert expert_index(Named(), 600.0) == 0 and expert_index(Named(), 100.0) == 1

    class Bad(torch.nn.Module):
        def expert_for(self, t):
            return 7

    with pytest.raises(ValueError, match="expert_for"):
        expert_index(Bad(), 1.0)


def test_sampling_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = TinyDenoiser(dropout=0.5)
    ctx, lengths, _ = _prompts()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    kw = dict(guidance_scale=1.0, steps=3, latents=noise, progress=False)
    a = sample(model, FlowMatchEulerDiscreteScheduler(), SHAPE, ctx, lengths, **kw)
    b = sample(model, FlowMatchEulerDiscreteScheduler(), SHAPE, ctx, lengths, **kw)
    assert torch.equal(a, b) and model.training  # no dropout inside, train mode again after


def test_errors_name_the_argument():
    model = TinyDenoiser()
    ctx, lengths, neg = _prompts()
    sched = FlowMatchEulerDiscreteScheduler()
    kw = dict(steps=2, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(model, sched, SHAPE, ctx, lengths, guidance_scale=(3.0, 5.0), **kw)  # one expert
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(model, sched, SHAPE, ctx, lengths, guidance_scale="high", **kw)
    with pytest.raises(ValueError, match="context_lengths"):
        sample(model, sched, SHAPE, ctx, torch.tensor([7, 1]), **kw)
    with pytest.raises(ValueError, match="context_lengths"):
        sample(model, sched, SHAPE, ctx, torch.tensor([6.0, 1.0]), **kw)
    with pytest.raises(ValueError, match="negative_context"):
        sample(model, sched, SHAPE, ctx, lengths, torch.zeros(1, 3, 5), **kw)
    with pytest.raises(ValueError, match="negative_lengths"):
        sample(model, sched, SHAPE, ctx, lengths, neg, torch.tensor([4]), **kw)
    with pytest.raises(ValueError, match="shape"):
        sample(model, sched, (3, 4, 3, 4, 4), ctx, lengths, **kw)
    with pytest.raises(ValueError, match="steps"):
        sample(model, sched, SHAPE, ctx, lengths, steps=0, progress=False)
    with pytest.raises(ValueError, match="name"):
        make_scheduler("ddim", FlowMatching())

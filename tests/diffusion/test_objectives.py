"""Objectives: the shift against diffusers, noising and targets against hand-computed schedules, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from tests.diffusion.nets import PointDenoiser, TinyDenoiser
from veil.diffusion import DDPMObjective, FlowMatching, ddpm_loss, flow_matching_loss, shift_sigma


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 0.5])
def test_shift_matches_diffusers_flow_match_euler(shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    torch.testing.assert_close(shift_sigma(unshifted, shift), sched.sigmas, rtol=1e-6, atol=1e-7)
    sched.set_timesteps(7)
    # diffusers spaces the inference sigmas between its (already shifted) sigma_max and sigma_min, then shifts
    inference = torch.linspace(1.0, float(shift_sigma(torch.tensor(0.001), shift)), 7)
    torch.testing.assert_close(shift_sigma(inference, shift), sched.sigmas[:-1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sched.timesteps, sched.sigmas[:-1] * 1000)


def test_shift_literal_values():
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert shift_sigma(0.25, 5.0) == pytest.approx(1.25 / 2.0)
    assert shift_sigma(0.0, 5.0) == 0.0 and shift_sigma(1.0, 5.0) == 1.0
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(0.5, 0.0)


def test_flow_matching_example_literal():
    x0 = torch.full((2, 1, 1, 1, 2), 1.0)
    noise = torch.full((2, 1, 1, 1, 2), 3.0)
    ex = FlowMatching().example(x0, sigma=torch.tensor([0.25, 1.0]), noise=noise)
    assert ex.x_t[0].flatten().tolist() == [1.5, 1.5]  # 0.75 * 1 + 0.25 * 3
    assert ex.x_t[1].flatten().tolist() == [3.0, 3.0]
    assert ex.target.flatten().tolist() == [2.0] * 4  # noise - x0
    assert ex.timestep.tolist() == [250.0, 1000.0]


def test_flow_matching_continuation_gives_clean_prefixes_at_timestep_0():
    x0 = torch.randn(64, 2, 8, 2, 2)
    noise = torch.randn_like(x0)
    ex = FlowMatching(context_frames=0.5, frame_patch=2).example(x0, generator=torch.Generator().manual_seed(0),
                                                                   noise=noise)
    assert ex.timestep.shape == (64, 8) and ex.weight.shape == (64, 1, 8, 1, 1)
    k = (ex.timestep == 0).sum(1)  # clean frames per sample
    for b in range(64):
        assert (ex.timestep[b, : k[b]] == 0).all() and (ex.timestep[b, k[b]:] > 0).all()
        assert torch.equal(ex.x_t[b, :, : k[b]], x0[b, :, : k[b]])
        assert (ex.weight[b, 0, : k[b]] == 0).all() and (ex.weight[b, 0, k[b]:] == 1).all()
    assert set(k.tolist()) == {0, 2, 4}  # whole patches, up to half the clip
    assert 0.3 < (k > 0).float().mean() < 0.7
    # sigma and the noise are drawn as without continuation
    plain = FlowMatching().example(x0, generator=torch.Generator().manual_seed(0), noise=noise)
    assert torch.equal(ex.timestep.amax(1), plain.timestep)
    # the loss skips the clean prefix: a model wrong there only has zero loss
    fm = FlowMatching(context_frames=1.0, frame_patch=2)
    ex = fm.example(x0, generator=torch.Generator().manual_seed(1))

    def model(x_t, t, c, n=None):
        return torch.where((t == 0)[:, None, :, None, None], torch.full_like(x_t, 9.0), ex.target)

    assert float(fm.loss(model, x0, torch.zeros(64, 1, 4), generator=torch.Generator().manual_seed(1))) == 0.0
    with pytest.raises(ValueError, match="at least 2 temporal patches"):
        FlowMatching(context_frames=0.5, frame_patch=8).example(x0)
    with pytest.raises(ValueError, match="context_frames"):
        FlowMatching(context_frames=1.5)


def test_flow_matching_one_patch_prefixes_and_near_pure_noise_continuations():
    x0 = torch.randn(400, 1, 16, 2, 2)
    noise = torch.randn_like(x0)

    def draw(**kw):
        fm = FlowMatching(shift=5.0, sampling="logit_normal", context_frames=0.5, frame_patch=2, **kw)
        return fm.example(x0, generator=torch.Generator().manual_seed(0), noise=noise)

    base = draw()
    k0 = (base.timestep == 0).sum(1)
    one = draw(context_one_patch=1.0)  # every continuation clip keeps exactly its first patch clean
    k1 = (one.timestep == 0).sum(1)
    assert torch.equal(k1 > 0, k0 > 0) and set(k1.tolist()) == {0, 2}
    half = (draw(context_one_patch=0.5).timestep == 0).sum(1)
    cont = half[half > 0]
    assert 0.55 < float((cont == 2).float().mean()) < 0.75  # a half, plus a quarter of the uniform other half
    assert set(cont.tolist()) == {2, 4, 6, 8}
    high = draw(context_high_noise=1.0)  # continuation clips near pure noise, the others untouched
    cont_rows, plain_rows = k0 > 0, k0 == 0
    sigma = high.timestep.amax(1) / 1000
    assert torch.equal((high.timestep == 0).sum(1), k0)  # the prefix draws are those of the run without it
    assert ((sigma[cont_rows] >= 0.95) & (sigma[cont_rows] <= 1.0)).all()
    assert float(sigma[cont_rows].mean()) > 0.98  # densest at 1: mean 1 - 0.05 / 3
    assert torch.allclose(high.timestep[plain_rows].double(), base.timestep[plain_rows].double())
    for b in torch.nonzero(cont_rows).flatten()[:5].tolist():  # x_t noised at that level after the clean prefix
        k, s = int(k0[b]), float(sigma[b])
        assert torch.allclose(high.x_t[b, :, k:], (1 - s) * x0[b, :, k:] + s * noise[b, :, k:], atol=1e-5)
        assert torch.equal(high.x_t[b, :, :k], x0[b, :, :k])
    # what the default sampling gives instead: almost nothing that close to pure noise
    assert float((base.timestep.amax(1)[cont_rows] >= 990).float().mean()) < 0.02
    for name in ("context_one_patch", "context_high_noise"):
        with pytest.raises(ValueError, match=name):
            FlowMatching(**{name: 2.0})


def test_flow_matching_sigma_sqr_weighting_is_the_x0_error_of_an_x_predictor():
    from veil.pipelines.t2v import XPrediction

    class Fixed(torch.nn.Module):  # predicts a fixed clean sample whatever the input
        def __init__(self, x0_hat):
            super().__init__()
            self.x0_hat = x0_hat

        def forward(self, x, timestep, context, context_lengths=None):
            return self.x0_hat.expand_as(x)

    x0 = torch.zeros(2, 1, 1, 1, 2)
    x0_hat = torch.full((1, 1, 1, 1, 2), 0.5)
    net = XPrediction(Fixed(x0_hat), min_sigma=0.05)
    sigma, noise = torch.tensor([0.25, 0.8]), torch.randn(2, 1, 1, 1, 2)
    weighted = FlowMatching(weighting="sigma_sqr")
    ex = weighted.example(x0, sigma=sigma, noise=noise)
    torch.testing.assert_close(ex.weight, sigma**2)
    # weighted velocity error = the x0 error (0.5^2 = 0.25 per value), whatever sigma
    gen = torch.Generator().manual_seed(0)
    assert weighted.loss(net, x0, torch.zeros(2, 1, 4), generator=gen).item() == pytest.approx(0.25, rel=1e-5)
    # unweighted: the x0 error over sigma^2, which grows without bound as sigma -> 0
    ex = FlowMatching().example(x0, sigma=sigma, noise=noise)
    assert ex.weight is None
    err = ((net(ex.x_t, ex.timestep, None) - ex.target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(err, 0.25 / sigma**2)
    with pytest.raises(ValueError, match="weighting"):
        FlowMatching(weighting="snr")


def test_flow_matching_sigma_draws_are_shifted_and_seeded():
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = FlowMatching(shift=3.0).sample_sigma(4096, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, (3 * u / (1 + 2 * u)).float())
    ln = FlowMatching(sampling="logit_normal", logit_mean=0.0, logit_std=1.0).sample_sigma(
        20000, generator=torch.Generator().manual_seed(1))
    # sigmoid(N(0, 1)): median 0.5, P(sigma < sigmoid(1)) = Phi(1) = 0.8413
    assert abs(ln.median().item() - 0.5) < 0.02
    assert abs((ln < torch.sigmoid(torch.tensor(1.0))).double().mean().item() - 0.8413) < 0.01


def test_flow_matching_unshifted_share_skips_the_shift_and_adds_no_draw_when_zero():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(8192, generator=g, dtype=torch.float64)
    pick = torch.rand(8192, generator=g, dtype=torch.float64) < 0.3
    got = FlowMatching(shift=5.0, unshifted=0.3).sample_sigma(8192, generator=torch.Generator().manual_seed(0))
    # the picked draws keep their unshifted value, the others are shifted: computed here by hand
    torch.testing.assert_close(got, torch.where(pick, u, 5 * u / (1 + 4 * u)).float())
    assert 0.27 < pick.double().mean().item() < 0.33
    # with shift 5 almost nothing is drawn below the last level of a 20-step UniPC schedule (0.212); the share
    # raises that more than tenfold
    low = FlowMatching(shift=5.0, sampling="logit_normal", unshifted=0.25).sample_sigma(
        100_000, generator=torch.Generator().manual_seed(1))
    base = FlowMatching(shift=5.0, sampling="logit_normal").sample_sigma(
        100_000, generator=torch.Generator().manual_seed(1))
    assert (base < 0.212).double().mean().item() < 0.003 and (low < 0.212).double().mean().item() > 0.02
    # 0: the same draws, and so the same generator state afterwards, as a run without the field
    g0, g1 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(FlowMatching(shift=5.0, unshifted=0.0).sample_sigma(64, generator=g0),
                       FlowMatching(shift=5.0).sample_sigma(64, generator=g1))
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="unshifted"):
            FlowMatching(unshifted=bad)


def _ks(a: torch.Tensor, b: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance of two samples on a grid of [lo, hi]."""
    xs = torch.linspace(lo, hi, 257, dtype=torch.float64)
    def cdf(v):
        return torch.searchsorted(v.double().sort().values, xs, right=True).double() / v.numel()
    return (cdf(a) - cdf(b)).abs().max().item()


@pytest.mark.parametrize("kw", [dict(shift=5.0, sampling="logit_normal"),
                                dict(shift=5.0, sampling="logit_normal", unshifted=0.3),
                                dict(shift=3.0, sampling="uniform", unshifted=0.5)])
@pytest.mark.parametrize("lo, hi", [(0.0, 0.875), (0.875, 1.0), (0.2, 0.6)])
def test_flow_matching_sigma_range_draws_the_truncated_distribution(kw, lo, hi):
    # the oracle: rejection sampling, the untruncated draws that land in the range
    full = FlowMatching(**kw).sample_sigma(200_000, generator=torch.Generator().manual_seed(1))
    kept = full[(full >= lo) & (full <= hi)]
    got = FlowMatching(**kw, sigma_min=lo, sigma_max=hi).sample_sigma(50_000,
                                                                       generator=torch.Generator().manual_seed(2))
    assert got.min().item() >= lo and got.max().item() <= hi
    # two samples of >= 20k draws from one distribution: KS distance ~0.01; the mixture without its share
    # reweighted by each kind's mass in the range is 0.045-0.1 away
    assert _ks(kept, got, lo, hi) < 0.02


def test_flow_matching_sigma_range_literal_and_errors():
    u = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # uniform with shift 3: the inverse of the shift maps 0.6 to 0.6 / (3 - 2 * 0.6) = 1/3
    got = FlowMatching(shift=3.0, sigma_max=0.6).sample_sigma(64, generator=torch.Generator().manual_seed(0))
    w = u / 3
    torch.testing.assert_close(got, (3 * w / (1 + 2 * w)).float())
    # the whole range draws exactly what a run without the fields draws
    assert torch.equal(FlowMatching(shift=5.0, sampling="logit_normal", sigma_min=0.0, sigma_max=1.0).sample_sigma(
        99, generator=torch.Generator().manual_seed(3)), FlowMatching(shift=5.0, sampling="logit_normal").sample_sigma(
        99, generator=torch.Generator().manual_seed(3)))
    # continuation examples: the noisy frames in the range, the clean prefix at 0
    ex = FlowMatching(shift=5.0, sigma_max=0.5, context_frames=1.0, frame_patch=2).example(
        torch.zeros(64, 1, 4, 1, 1), generator=torch.Generator().manual_seed(0))
    assert ex.timestep.max().item() <= 500.0 and (ex.timestep[:, :2] == 0).all()
    for bad, match in ((dict(sigma_min=-0.1), "sigma_min"), (dict(sigma_max=1.5), "sigma_max"),
                       (dict(sigma_min=0.5, sigma_max=0.5), "sigma_min < sigma_max"),
                       (dict(sigma_max=True), "sigma_max"),
                       (dict(sigma_max=0.875, context_frames=0.5, context_high_noise=0.5), "context_high_noise")):
        with pytest.raises(ValueError, match=match):
            FlowMatching(**bad)


def _linear_abar() -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_noising_and_targets_match_hand_computed_schedule(prediction_type):
    abar = _linear_abar()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 2, 2, 2, generator=g)
    noise = torch.randn(3, 2, 2, 2, 2, generator=g)
    t = torch.tensor([0, 499, 999])
    ex = DDPMObjective(prediction_type=prediction_type).example(x0, timesteps=t, noise=noise)
    a = torch.from_numpy(abar[t.numpy()]).view(-1, 1, 1, 1, 1)
    want_xt = a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()
    torch.testing.assert_close(ex.x_t.double(), want_xt, rtol=1e-5, atol=1e-5)
    want = noise.double() if prediction_type == "epsilon" else a.sqrt() * noise.double() - (1 - a).sqrt() * x0.double()
    torch.testing.assert_close(ex.target.double(), want, rtol=1e-5, atol=1e-5)
    assert ex.timestep.dtype == torch.float32 and ex.timestep.tolist() == [0.0, 499.0, 999.0]
    # the same schedule as diffusers' sampler-side DDPMScheduler
    torch.testing.assert_close(DDPMScheduler().alphas_cumprod.double(), torch.from_numpy(abar), rtol=1e-5, atol=0)


def test_ddpm_timesteps_cover_the_range():
    t = DDPMObjective().sample_timesteps(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    assert int(t.min()) < 10 and int(t.max()) > 990


@pytest.mark.parametrize("kind", ["flow", "epsilon", "v_prediction"])
def test_exact_denoiser_has_zero_loss_and_others_do_not(kind):
    # data = one point per prompt: the exact prediction makes the loss vanish for its own objective only
    torch.manual_seed(0)
    objective = FlowMatching(shift=2.0) if kind == "flow" else DDPMObjective(prediction_type=kind)
    abar = objective.scheduler.alphas_cumprod if kind != "flow" else None
    model = PointDenoiser(kind, alphas_cumprod=abar)
    ctx = torch.randn(4, 5, 8)
    lengths = torch.tensor([5, 3, 1, 2])
    with torch.no_grad():
        x0 = model.x0(ctx, lengths, torch.empty(4, 4, 2, 3, 3))
        loss = objective.loss(model, x0, ctx, lengths, generator=torch.Generator().manual_seed(0))
        assert loss.item() < 1e-6
        # the wrong lengths make the exact model predict another point
        wrong = objective.loss(model, x0, ctx, None, generator=torch.Generator().manual_seed(0))
        assert wrong.item() > 1e-3
    # the exact model of another objective is wrong for this one
    other_kind = {"flow": "epsilon", "epsilon": "v_prediction", "v_prediction": "flow"}[kind]
    other = PointDenoiser(other_kind, alphas_cumprod=DDPMObjective().scheduler.alphas_cumprod)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert objective.loss(other, x0, ctx, lengths, generator=torch.Generator().manual_seed(0)).item() > 1e-2


def test_loss_is_the_mse_of_the_drawn_example_and_learned_sigma_is_ignored():
    torch.manual_seed(0)
    model = TinyDenoiser(learn_sigma=True)
    x0 = torch.randn(2, 4, 3, 4, 4)
    ctx, lengths = torch.randn(2, 6, 8), torch.tensor([6, 0])
    obj = FlowMatching(shift=3.0)
    loss = obj.loss(model, x0, ctx, lengths, generator=torch.Generator().manual_seed(7))
    ex = obj.example(x0, generator=torch.Generator().manual_seed(7))
    pred = model(ex.x_t, ex.timestep, ctx, lengths)
    assert pred.shape[1] == 8
    torch.testing.assert_close(loss, ((pred[:, :4] - ex.target) ** 2).mean())
    torch.testing.assert_close(flow_matching_loss(model, x0, ctx, lengths, shift=3.0,
                                                  generator=torch.Generator().manual_seed(7)), loss)
    d = ddpm_loss(model, x0, ctx, lengths, prediction_type="v_prediction", generator=torch.Generator().manual_seed(7))
    ex = DDPMObjective(prediction_type="v_prediction").example(x0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(d, ((model(ex.x_t, ex.timestep, ctx, lengths)[:, :4] - ex.target) ** 2).mean())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="shift"):
        FlowMatching(shift=-1.0)
    with pytest.raises(ValueError, match="sampling"):
        FlowMatching(sampling="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMObjective(prediction_type="sample")
    with pytest.raises(ValueError, match="x0"):
        FlowMatching().example(torch.zeros(2, 4, 4, 4))
    model = TinyDenoiser(channels=4)
    model.out = torch.nn.Conv3d(16, 3, 3, padding=1)  # 3 output channels for 4 input channels
    with pytest.raises(ValueError, match="model output"):
        FlowMatching().loss(model, torch.zeros(1, 4, 1, 2, 2), torch.zeros(1, 1, 8))


def test_flow_matching_absolute_error_below_a_noise_level_literal():
    x0 = torch.zeros(4, 1, 1, 1, 2)
    noise = torch.tensor([1.0, -3.0]).view(1, 1, 1, 1, 2).expand(4, 1, 1, 1, 2)  # target noise - x0 = [1, -3]
    sigma = torch.tensor([0.1, 0.5, 0.84, 0.9])
    fm = FlowMatching(absolute_below=0.85, absolute_scale=0.2)
    ex = fm.example(x0, sigma=sigma, noise=noise)
    assert ex.absolute.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0])
    # a model off the target by [1, -3] (it recovers the noise from x_t = sigma noise): 0.2 * (1 + 3) / 2 = 0.4
    # below 0.85, (1 + 9) / 2 = 5 above; mean over the batch
    def off(x, timestep, context, context_lengths=None):
        return x / (timestep / 1000).view(-1, 1, 1, 1, 1) - torch.tensor([1.0, -3.0]).view(1, 1, 1, 1, 2)

    fixed = FlowMatching(absolute_below=0.85, absolute_scale=0.2)
    fixed.sample_sigma = lambda n, generator=None: sigma  # type: ignore[method-assign]
    got = fixed.loss(off, x0, torch.zeros(4, 1, 4), generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx((3 * 0.4 + 5.0) / 4, rel=1e-5)
    # 1: every example; 0 (the default): none, and the same draws either way
    assert FlowMatching(absolute_below=1.0).example(x0, sigma=torch.tensor([0.2, 0.99, 1.0, 1.0]),
                                                     noise=noise).absolute.tolist() == [1.0] * 4
    plain = FlowMatching(shift=5.0, sampling="logit_normal", context_frames=0.5, frame_patch=1)
    split = FlowMatching(shift=5.0, sampling="logit_normal", context_frames=0.5, frame_patch=1, absolute_below=0.5)
    x = torch.randn(64, 1, 4, 1, 1)
    a = plain.example(x, generator=torch.Generator().manual_seed(1))
    b = split.example(x, generator=torch.Generator().manual_seed(1))
    assert a.absolute is None and torch.equal(a.x_t, b.x_t) and torch.equal(a.timestep, b.timestep)
    # continuation examples go by the level of their noisy frames, and the loss still skips the clean prefix
    assert torch.equal(b.absolute > 0, b.timestep.amax(1) < 500)
    for bad in ({"absolute_below": 1.5}, {"absolute_below": -0.1}, {"absolute_scale": 0.0},
                {"absolute_scale": float("inf")}, {"absolute_scale": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FlowMatching(**bad)


def test_flow_matching_absolute_error_with_a_frame_mask_and_weights():
    # continuation (a frame mask) and sigma^2 weights apply to the absolute error as to the squared one
    fm = FlowMatching(context_frames=1.0, frame_patch=1, weighting="sigma_sqr", absolute_below=1.0)
    x0 = torch.zeros(8, 1, 4, 1, 1)
    ex = fm.example(x0, generator=torch.Generator().manual_seed(0))
    k = (ex.timestep == 0).sum(1)
    s2 = (ex.timestep.amax(1) / 1000) ** 2

    def off(x, timestep, context, context_lengths=None):  # the target (the noise) + 2, and 7 on the clean prefix
        s = (timestep / 1000).view(x.shape[0], 1, -1, 1, 1)
        return torch.where(s > 0, x / s.clamp_min(1e-6) + 2.0, torch.full_like(x, 7.0))

    expected = torch.mean(s2 * 2.0)  # |2| on the noisy frames, weighted by sigma^2; the clean prefix skipped
    got = fm.loss(off, x0, torch.zeros(8, 1, 4), generator=torch.Generator().manual_seed(0))
    assert (k > 0).all() and (k < 4).all()
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-6)

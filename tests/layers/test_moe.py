"""Mixture of experts: dense mixture by hand, per-token reference for top-k, capacity drops on a crafted router,
and the auxiliary losses by hand."""

import math

import pytest
import torch

from veil.layers import MoE


def _expert(moe, e, x):
    h = torch.nn.functional.silu(x @ moe.w_gate[e]) * (x @ moe.w_up[e])
    return h @ moe.w_down[e]


def test_top_k_equals_num_experts_is_the_dense_mixture():
    torch.manual_seed(0)
    moe = MoE(8, 12, num_experts=4, top_k=4)
    x = torch.randn(2, 5, 8)
    out, aux = moe(x)
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)  # (B, L, E)
    dense = sum(probs[..., e:e + 1] * _expert(moe, e, x) for e in range(4))
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    assert int(aux.dropped) == 0 and aux.capacity is None
    assert aux.tokens_per_expert.tolist() == [10, 10, 10, 10]


def test_top2_matches_a_per_token_reference_and_backpropagates():
    torch.manual_seed(0)
    moe = MoE(8, 6, num_experts=5, top_k=2, activation="gelu_tanh", gated=False)
    x = torch.randn(3, 4, 8, requires_grad=True)
    out, aux = moe(x)
    xf = x.detach().reshape(-1, 8)
    probs = torch.softmax(xf @ moe.router.weight.detach().T, dim=-1)
    want = torch.zeros_like(xf)
    for n in range(xf.shape[0]):  # the oracle may loop over tokens
        g, idx = probs[n].topk(2)
        g = g / g.sum()
        for gi, e in zip(g, idx.tolist()):
            h = torch.nn.functional.gelu(xf[n] @ moe.w_up[e].detach(), approximate="tanh")
            want[n] += gi * (h @ moe.w_down[e].detach())
    torch.testing.assert_close(out.detach().reshape(-1, 8), want, rtol=1e-5, atol=1e-5)
    assert int(aux.tokens_per_expert.sum()) == 24
    (out.sum() + aux.load_balancing_loss + aux.z_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0 and moe.w_down.grad.abs().sum() > 0 and x.grad is not None


def _crafted(capacity_factor, top_k=1):
    # router: expert 0 wins for every token (top-1), expert 1 second; tokens are distinguishable
    torch.manual_seed(0)
    moe = MoE(4, 6, num_experts=4, top_k=top_k, capacity_factor=capacity_factor)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 4.0
        moe.router.weight[1, 0] = 2.0
    x = torch.randn(1, 8, 4)
    x[..., 0] = torch.linspace(1.0, 2.0, 8)  # feature 0 > 0 drives the router
    return moe, x


def test_capacity_drops_are_counted_and_later_tokens_dropped():
    moe, x = _crafted(capacity_factor=1.0)  # capacity ceil(1 * 1 * 8 / 4) = 2
    out, aux = moe(x)
    assert aux.capacity == 2
    assert int(aux.dropped) == 6
    assert aux.tokens_per_expert.tolist() == [2, 0, 0, 0]
    kept = _expert(moe, 0, x[0, :2])  # gate 1 after normalisation; the first two tokens win the slots
    torch.testing.assert_close(out[0, :2], kept, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[0, 2:], torch.zeros(6, 4))
    dropless = MoE(4, 6, 4, 1)
    dropless.load_state_dict(moe.state_dict())
    out_free, aux_free = dropless(x)
    assert int(aux_free.dropped) == 0 and aux_free.tokens_per_expert.tolist() == [8, 0, 0, 0]
    torch.testing.assert_close(out_free[0, :2], out[0, :2])


def test_capacity_prefers_first_choices_over_second_choices():
    moe, x = _crafted(capacity_factor=2.0, top_k=2)  # capacity ceil(2 * 2 * 8 / 4) = 8
    _, aux = moe(x)
    assert aux.capacity == 8 and int(aux.dropped) == 0
    moe.capacity_factor = 0.75  # capacity 3: expert 0 keeps 3 first choices, expert 1 keeps 3 second choices
    out, aux = moe(x)
    assert aux.capacity == 3 and int(aux.dropped) == 10
    assert aux.tokens_per_expert.tolist() == [3, 3, 0, 0]
    probs = torch.softmax(x[0] @ moe.router.weight.T, dim=-1)
    g = probs[:, :2] / probs[:, :2].sum(-1, keepdim=True)
    want = g[:3, :1] * _expert(moe, 0, x[0, :3]) + g[:3, 1:] * _expert(moe, 1, x[0, :3])
    torch.testing.assert_close(out[0, :3], want, rtol=1e-5, atol=1e-5)


def test_aux_losses_by_hand():
    moe, x = _crafted(capacity_factor=None)
    _, aux = moe(x)
    logits = x[0] @ moe.router.weight.T
    probs = torch.softmax(logits, -1)
    frac = torch.tensor([1.0, 0.0, 0.0, 0.0])  # every token's single choice is expert 0
    torch.testing.assert_close(aux.load_balancing_loss, 4 * (frac * probs.mean(0)).sum())
    torch.testing.assert_close(aux.z_loss, torch.logsumexp(logits, -1).pow(2).mean())
    # perfectly uniform routing gives a balancing loss of 1
    uniform = MoE(4, 6, 4, 2)
    with torch.no_grad():
        uniform.router.weight.zero_()
    _, aux_u = uniform(torch.randn(6, 4))
    torch.testing.assert_close(aux_u.load_balancing_loss, torch.tensor(1.0))
    torch.testing.assert_close(aux_u.z_loss, torch.tensor(math.log(4) ** 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        MoE(4, 4, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoE(4, 4, 2, 1, capacity_factor=0.0)
    with pytest.raises(ValueError, match="x: expected"):
        MoE(4, 4, 2, 1)(torch.randn(3, 5))

"""``tiles`` against the reference backend: forward and backward, every local mask, compositions, GQA."""

import pytest
import torch

import veil
import veil.masks as M
from veil.attention.backends import common
from veil.attention.backends.tiles import plan_for, tiles_attention

G = (3, 4, 6)  # T, H, W -> 72 tokens
CASES = [
    (M.sliding_window(4), 37, 37),
    (M.sliding_window(4), 5, 37),  # decoding a few tokens against a cache
    (M.sliding_window(4), 37, 20),  # Q > K: the first rows see nothing
    (M.sliding_window(3, causal=False), 30, 30),
    (M.sliding_window(5) & M.key_padding(torch.tensor([0, 17])), 30, 30),
    (M.sliding_window(6) & M.causal() & ~M.document(torch.tensor([0] * 10 + [1] * 20)), 30, 30),
    (M.chunked(6) & M.causal(), 36, 36),
    (M.spatial(G), 72, 72),
    (M.temporal(G), 72, 72),
    (M.frame_causal(G), 72, 72),
    (M.window_3d(G, (3, 3, 3)), 72, 72),
    (M.window_3d(G, (1, 5, 1)), 72, 72),
    (M.tile_window(G, (1, 2, 3), (3, 1, 2)), 72, 72),
    (M.tile_window(G, (1, 2, 2), (2, 2, 3), order="tile"), 72, 72),
    (M.spatial(G) & M.key_padding(torch.tensor([50, 72])), 72, 72),
    (M.window_3d(G, (3, 3, 3), border="shift"), 72, 72),
    (M.window_3d(G, (1, 3, 3), dilation=(1, 2, 2)), 72, 72),
    (M.window_3d(G, (3, 3, 3), dilation=(1, 1, 2), border="shift"), 72, 72),
    (M.radial((6, 3, 4), sink_frames=1), 72, 72),
    (M.radial((6, 3, 4), min_width=4, decay=0.5), 72, 72),
    (M.per_head([M.spatial(G), M.temporal(G), M.temporal(G), M.window_3d(G, (3, 1, 3))]), 72, 72),
    (M.per_head([M.spatial(G), M.frame_causal(G)] * 2) & M.key_padding(torch.tensor([40, 72])), 72, 72),
    ((M.sink(4) | M.sliding_window(8)) & M.causal(), 45, 45),
    ((M.sliding_window(8) | M.sink(3)) & M.causal(), 6, 45),  # decoding against a cache
    ((M.sink(20) | M.sliding_window(6)) & M.causal(), 45, 45),  # more sinks than the window
    (M.sink(3) | M.sliding_window(8), 45, 45),  # no causal conjunct: early queries see later sink keys
    ((M.sink(2) | M.sliding_window(1)) & M.causal(), 37, 37),  # a window of the query alone
    ((M.sink(4) | M.sliding_window(100)) & M.causal(), 45, 45),  # a window longer than the sequence
    ((M.sink(0) | M.sliding_window(8)) & M.causal(), 45, 45),
]


def _grads(backend, mask, q, k, v, g, softcap=None):
    out = veil.attend(q, k, v, mask, backend=backend, softcap=softcap)
    return (out, *torch.autograd.grad(out, (q, k, v), g))


@pytest.mark.parametrize("mask,Q,K", CASES, ids=[repr(c[0])[:50] for c in CASES])
def test_tiles_matches_reference_forward_and_backward(mask, Q, K):
    torch.manual_seed(0)
    q = torch.randn(2, 4, Q, 8, requires_grad=True)
    k = torch.randn(2, 2, K, 8, requires_grad=True)  # GQA: 4 query heads over 2 kv heads
    v = torch.randn(2, 2, K, 8, requires_grad=True)
    g = torch.randn(2, 4, Q, 8)
    for a, b in zip(_grads("reference", mask, q, k, v, g), _grads("tiles", mask, q, k, v, g)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype,extra,fast", [
    (torch.float32, None, True),
    (torch.float64, None, False),  # no fused CPU kernel with a log-sum-exp: the general gathered path
    (torch.float32, M.key_padding(torch.tensor([30, 45])), False),  # another conjunct: the general path
])
def test_sink_and_window_run_as_two_merged_parts_where_the_fused_kernel_serves(monkeypatch, dtype, extra, fast):
    from veil.attention.backends import tiles

    calls = []
    real = tiles._sink_window_fast
    monkeypatch.setattr(tiles, "_sink_window_fast", lambda *a: calls.append(1) or real(*a))
    mask = (M.sink(4) | M.sliding_window(8)) & M.causal()
    mask = mask if extra is None else mask & extra
    torch.manual_seed(0)
    q = torch.randn(2, 4, 45, 8, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 45, 8, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 45, 8, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 4, 45, 8, dtype=dtype)
    for a, b in zip(_grads("reference", mask, q, k, v, g), _grads("tiles", mask, q, k, v, g)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    assert bool(calls) == fast


def test_sliding_window_backward_from_the_saved_lse_matches_the_recomputing_one(monkeypatch):
    from veil.attention import partials
    from veil.attention.backends import tiles

    torch.manual_seed(0)
    q = torch.randn(2, 4, 300, 16, requires_grad=True)
    k = torch.randn(2, 2, 300, 16, requires_grad=True)
    v = torch.randn(2, 2, 300, 16, requires_grad=True)
    g = torch.randn(2, 4, 300, 16)
    used = []
    real = tiles._SlidingWindowFn.apply
    monkeypatch.setattr(tiles._SlidingWindowFn, "apply", lambda *a: used.append(1) or real(*a))
    fast = _grads("tiles", M.sliding_window(64), q, k, v, g)
    assert not used  # float32 on the CPU: the fused kernel's lse is kept for the backward
    monkeypatch.setattr(tiles, "fused_cpu", lambda *a: False)
    recomputed = _grads("tiles", M.sliding_window(64), q, k, v, g)
    assert used  # without it the backward recomputes each group's forward
    for a, b in zip(recomputed, fast):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert partials.fused_cpu(q, v, None)


def test_tiles_softcap_and_small_groups_with_checkpointing():
    torch.manual_seed(1)
    mask = M.sliding_window(5) & M.key_padding(torch.tensor([40, 23]))
    q = torch.randn(2, 2, 40, 8, requires_grad=True)
    k = torch.randn(2, 2, 40, 8, requires_grad=True)
    v = torch.randn(2, 2, 40, 8, requires_grad=True)
    g = torch.randn(2, 2, 40, 8)
    ref = _grads("reference", mask, q, k, v, g, softcap=1.5)
    out = tiles_attention(q, k, v, mask, 8**-0.5, 1.5, group_bytes=1)  # one block per group, checkpointed
    got = (out, *torch.autograd.grad(out, (q, k, v), g))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mask", [M.spatial((4, 4, 4)), M.temporal((4, 4, 4))], ids=repr)
def test_reduced_precision_frame_blocks_match_the_reference(mask, dtype):
    # frames and positions in bf16 / fp16 (blocks of 16 and 4 tokens) take the float32-softmax path on CPU: the
    # reference's numerics, so outputs and gradients agree to the rounding of the reduced-precision results
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16).to(dtype).requires_grad_(True) for _ in range(3))
    g = torch.randn(2, 4, 64, 16).to(dtype)
    for a, b in zip(_grads("reference", mask, q, k, v, g), _grads("tiles", mask, q, k, v, g)):
        assert b.dtype == dtype
        torch.testing.assert_close(b.float(), a.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend,mask", [("sdpa", M.causal()), ("sdpa", M.key_padding(torch.tensor([0, 70]))),
                                          ("tiles", M.sliding_window(16))], ids=["causal", "padded", "window"])
def test_reduced_precision_sdpa_runs_in_float32_where_the_cpu_lacks_the_dtype(monkeypatch, native, dtype,
                                                                               backend, mask):
    # beyond 64 x 64 pairs, bf16 / fp16 on CPU goes to SDPA: in the dtype where oneDNN computes it natively, in
    # float32 (cast back) where it is emulated; either way the reference's result, and an empty row stays 0
    seen = []
    sdpa = common.F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(common, "_CPU_NATIVE", frozenset({dtype}) if native else frozenset())
    monkeypatch.setattr(common.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 96, 16).to(dtype).requires_grad_(True) for _ in range(3))
    g = torch.randn(2, 2, 96, 16).to(dtype)
    ref, got = _grads("reference", mask, q, k, v, g), _grads(backend, mask, q, k, v, g)
    assert seen and set(seen) == {dtype if native else torch.float32}
    for a, b in zip(ref, got):
        assert b.dtype == dtype
        torch.testing.assert_close(b.float(), a.float(), atol=2e-2, rtol=2e-2)
    if isinstance(mask, M.KeyPadding):  # the first sample's keys are all padding
        assert torch.equal(got[0][0], torch.zeros_like(got[0][0]))


def test_empty_rows_are_exactly_zero_with_zero_grad():
    mask = M.sliding_window(3)  # Q > K: the first Q - K queries sit before the first key
    q = torch.randn(1, 2, 12, 4, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True)
    out = veil.attend(q, k, v, mask, backend="tiles")
    out.float().sum().backward()
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))
    assert torch.equal(q.grad[:, :, :4], torch.zeros_like(q.grad[:, :, :4]))
    assert not torch.isnan(out).any() and not torch.isnan(k.grad).any()


def test_plans_see_only_the_window():
    # sliding window 64 at 4096 tokens: the work is a small multiple of the window, not of the length
    plan = plan_for(M.sliding_window(64), 4096, 4096)
    assert plan.pairs() < 4096 * 64 * 2
    plan = plan_for(M.tile_window((4, 8, 8), (2, 4, 4), (1, 1, 1)), 256, 256)
    assert plan.exact and plan.bk == 32 and plan.num_blocks == 8
    assert plan_for(M.causal(), 64, 64) is None


def test_auto_picks_tiles_for_a_narrow_window_and_explains_why():
    q = torch.randn(1, 2, 2048, 16)
    choice = veil.explain(q, q, q, M.sliding_window(64))
    assert choice.backend == "tiles"
    assert "tiles" in str(choice) and "sdpa" in str(choice)
    # and not when the mask has no local structure
    assert veil.explain(q, q, q, M.causal()).backend == "sdpa"


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("batch", [1, 8])
def test_auto_keeps_sdpa_where_gathered_blocks_cost_more_than_they_skip(batch, grad):
    # Measured on 2 cores (head dim 48, 4 heads): a 3x9x9 window covers a third of an 8x4x4 grid and tiles'
    # gathered blocks took 1.2-1.6x the masked sdpa call's time; a 3x5x5 window on 8x16x16 skips 88% of the
    # pairs and tiles took 0.12-0.29x of it.
    small = torch.randn(batch, 4, 128, 48, requires_grad=grad)
    large = torch.randn(batch, 4, 2048, 48, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        assert veil.explain(small, small, small, M.window_3d((8, 4, 4), (3, 9, 9))).backend == "sdpa"
        assert veil.explain(large, large, large, M.window_3d((8, 16, 16), (3, 5, 5))).backend == "tiles"
        # frames and positions fold into the batch without gathers: tiles stays the choice even on the small grid
        assert veil.explain(small, small, small, M.spatial((8, 4, 4))).backend == "tiles"
        assert veil.explain(small, small, small, M.temporal((8, 4, 4))).backend == "tiles"


def test_tiles_refuses_masks_without_local_structure():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="tiles"):
        veil.attend(q, q, q, M.causal(), backend="tiles")


def test_plans_are_shared_by_masks_that_differ_only_in_padding():
    a = plan_for(M.sliding_window(8) & M.key_padding(torch.tensor([30, 12])), 32, 32)
    b = plan_for(M.sliding_window(8) & M.key_padding(torch.tensor([5, 32])), 32, 32)
    assert a is b and not a.exact

"""KV caches: cached step-by-step decoding equals one full forward (reference backend), ring memory stays flat,
left-padded batched decoding equals each sample decoded alone."""

import pytest
import torch

import veil
from veil import masks as M
from veil.layers import Attention, KVCache, RotaryEmbedding

DIM, HEADS, KV_HEADS, HEAD_DIM = 16, 4, 2, 4


def _layer(seed=0, softcap=20.0):
    torch.manual_seed(seed)
    return Attention(DIM, HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, softcap=softcap)


def _decode(attn, x, mask, cache, prefill, rope, key_valid=None, positions=None):
    """Prefill ``prefill`` tokens, then one token per step; returns the outputs concatenated."""
    outs = []
    n = x.shape[1]
    bounds = [0, prefill, *range(prefill + 1, n + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        kv = None if key_valid is None else key_valid[:, a:b]
        pos = None if positions is None else positions[:, a:b]
        outs.append(attn(x[:, a:b], mask, positions=pos, cache=cache, rope=rope, key_valid=kv))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("fixed", [False, True], ids=["grow", "fixed_shapes"])
@pytest.mark.parametrize("prefill", [1, 3, 7])
def test_ring_cache_decoding_past_the_window_equals_full_forward(prefill, fixed):
    attn, rope = _layer(), RotaryEmbedding(HEAD_DIM)
    window, n = 3, 14
    x = torch.randn(2, n, DIM)
    mask = M.causal() & M.sliding_window(window)
    with veil.use_backend("reference"):
        want = attn(x, mask, rope=rope)
        cache = KVCache(2, KV_HEADS, HEAD_DIM, max_len=n, window=window, fixed_shapes=fixed)
        buffers = [(t.data_ptr(), t.shape) for t in (cache.k, cache.v)]
        got = _decode(attn, x, mask, cache, prefill, rope)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert cache.length == n
    # memory O(window): the same buffers, window slots, holding the last `window` tokens
    assert [(t.data_ptr(), t.shape) for t in (cache.k, cache.v)] == buffers
    assert cache.k.shape == (2, KV_HEADS, window, HEAD_DIM)
    assert sorted(cache.slot_positions.tolist()) == list(range(n - window, n))


def test_ring_cache_is_wrong_without_the_window_mask():
    # the ring drops old keys: a global layer must use a static cache (this pins the design, not a bug)
    attn, rope = _layer(), RotaryEmbedding(HEAD_DIM)
    x = torch.randn(1, 8, DIM)
    with veil.use_backend("reference"):
        want = attn(x, M.causal(), rope=rope)
        got = _decode(attn, x, M.causal(), KVCache(1, KV_HEADS, HEAD_DIM, 8, window=3), 1, rope)
    assert (got[:, 4:] - want[:, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("fixed", [False, True], ids=["grow", "fixed_shapes"])
def test_static_cache_equals_full_forward(fixed):
    attn, rope = _layer(1), RotaryEmbedding(HEAD_DIM, base=1e6)
    x = torch.randn(2, 9, DIM)
    with veil.use_backend("reference"):
        want = attn(x, M.causal(), rope=rope)
        cache = KVCache(2, KV_HEADS, HEAD_DIM, max_len=9, fixed_shapes=fixed)
        got = _decode(attn, x, M.causal(), cache, 4, rope)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert cache.length == 9
    # overflow: a clear ValueError; a fixed-shape cache (no host read per update) fails in index_copy_
    error = (RuntimeError, IndexError) if fixed else ValueError
    with pytest.raises(error, match=None if fixed else "max_len=9"):
        attn(x[:, :1], M.causal(), cache=cache, rope=rope)


def test_fixed_shape_views_keep_their_shapes_and_positions():
    cache = KVCache(1, 1, 2, max_len=20, window=3, fixed_shapes=True)
    shapes, positions = set(), []
    for step in range(5):
        k = torch.full((1, 1, 1, 2), float(step))
        view = cache.update(k, k)
        shapes.add((tuple(view.k.shape), tuple(view.positions.shape)))
        positions.append((view.query_positions.tolist(), view.positions.tolist()))
    assert shapes == {((1, 1, 3, 2), (3,))}  # the same at every step: one compiled graph serves them all
    assert positions == [([0], [0, -1, -1]), ([1], [0, 1, -1]), ([2], [0, 1, 2]), ([3], [3, 1, 2]), ([4], [3, 4, 2])]
    # a chunk on a ring, outside torch.compile: a growing cache's chronological view (the kept window, then the
    # chunk), so bottom-right masks are exact and keep their structure; the slots are the fixed-shape ones
    chunk = torch.arange(5.0, 9.0).reshape(1, 1, 4, 1).expand(1, 1, 4, 2)
    view = cache.update(chunk, chunk)
    assert view.positions.tolist() == [2, 3, 4, 5, 6, 7, 8] and view.query_positions is None
    assert view.k[0, 0, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] and not view.has_padding
    assert sorted(cache.slot_positions.tolist()) == [6, 7, 8] and cache.length == 9
    assert cache.k[0, 0, :, 0].tolist() == [6.0, 7.0, 8.0]  # token p in slot p % 3, as the decoding steps expect
    view = cache.update(torch.full((1, 1, 1, 2), 9.0), torch.full((1, 1, 1, 2), 9.0))  # and the next step
    assert view.positions.tolist() == [9, 7, 8] and view.query_positions.tolist() == [9]
    assert view.k[0, 0, :, 0].tolist() == [9.0, 7.0, 8.0]
    # the chunk's padding is tracked from the buffers (fixed-shape steps do not track it)
    pad = torch.tensor([[False, True]])
    assert cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), pad).has_padding
    assert cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).has_padding  # the pad is still kept
    assert not cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2)).has_padding  # now overwritten


@pytest.mark.parametrize("fixed", [False, True], ids=["grow", "fixed_shapes"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("window", [None, 3])
def test_left_padded_batched_decoding_equals_each_sample_alone(window, backend, fixed):
    attn, rope = _layer(2, softcap=None), RotaryEmbedding(HEAD_DIM)  # sdpa has no softcap
    lengths, n, prompt = [7, 4], 7, 5  # sample 1 has 3 pad tokens on the left
    pad = [n - ln for ln in lengths]
    x = torch.randn(2, n, DIM)
    valid = torch.arange(n)[None] >= torch.tensor(pad)[:, None]  # (B, n)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # HF's position ids under left padding
    mask = M.causal() if window is None else M.causal() & M.sliding_window(window)
    with veil.use_backend(backend):
        cache = KVCache(2, KV_HEADS, HEAD_DIM, max_len=n, window=window, fixed_shapes=fixed)
        got = _decode(attn, x, mask, cache, prompt, rope, key_valid=valid, positions=positions)
        for b in range(2):
            alone = attn(x[b:b + 1, pad[b]:], mask, rope=rope)
            torch.testing.assert_close(got[b:b + 1, pad[b]:], alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1, 0], torch.zeros(DIM))  # a pad query with only pad keys: exactly 0 from attend


def test_update_contract_and_errors():
    cache = KVCache(1, 1, 2, max_len=10, window=3)
    for step in range(5):
        k = torch.full((1, 1, 1, 2), float(step))
        view = cache.update(k, k)
    assert view.positions.tolist() == [1, 2, 3, 4]  # chronological: the window, then the new token
    assert view.k[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert not view.has_padding
    with pytest.raises(ValueError, match="valid"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="k, v"):
        cache.update(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2))
    with pytest.raises(ValueError, match="window"):
        KVCache(1, 1, 2, 10, window=0)
    cache.reset()
    assert cache.length == 0 and cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).k.shape[2] == 2


def test_key_valid_without_cache_equals_each_sample_alone():
    attn, rope = _layer(3), RotaryEmbedding(HEAD_DIM)
    x = torch.randn(2, 6, DIM)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    got = attn(x, M.causal(), positions=positions, rope=rope, key_valid=valid)
    torch.testing.assert_close(got[1:, 2:], attn(x[1:, 2:], M.causal(), rope=rope), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:1], attn(x[:1], M.causal(), rope=rope), rtol=1e-5, atol=1e-5)
    # without the key mask the padded keys leak into sample 1
    leaky = attn(x, M.causal(), positions=positions, rope=rope)
    assert (leaky[1:, 2:] - got[1:, 2:]).abs().max() > 1e-3

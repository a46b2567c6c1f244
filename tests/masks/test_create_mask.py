"""FlexAttention's ``create_mask`` as a second oracle for ``Mask.to_bool``, and the ``BlockMask`` lowering.

``create_mask`` evaluates ``mask_mod`` one (b, h, q, kv) point at a time under ``vmap``; ``to_bool``
evaluates the same predicate on broadcast index grids. The two must agree for every mask.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_mask, flex_attention

import veil
import veil.masks as M
from tests.masks.strategies import compose, sequence_mask, video_mask

SETTINGS = settings(max_examples=40, deadline=None)


def flex_dense(mask, b, h, q, k):
    return create_mask(mask.mask_mod(q, k, "cpu"), b, h, q, k, device="cpu")


def assert_agrees(mask, b, h, q, k):
    want = flex_dense(mask, b, h, q, k)
    got = mask.to_bool(b, h, q, k)
    assert got.shape == want.shape == (b, h, q, k)
    assert torch.equal(got, want), f"{mask!r} B={b} Q={q} K={k}"


LEAVES = [
    M.full(),
    M.causal(),
    M.sliding_window(2),
    M.sliding_window(2, causal=False),
    M.key_padding(torch.tensor([3, 0])),
    M.query_padding(torch.tensor([1, 3])),
    M.key_mask(torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])),
    M.prefix_lm(2),
    M.prefix_lm(torch.tensor([0, 4])),
    M.chunked(2),
    M.document(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1, 1, 2])),
    M.document(torch.tensor([[0, 1, 1], [1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 1, 0]])),
    M.packed([2, 1], kv_seqlens=[3, 2]),
    M.sink(2),
    (M.sink(1) | M.sliding_window(2)) & M.causal(),
]


@pytest.mark.parametrize("mask", LEAVES, ids=repr)
def test_every_sequence_constructor_q_ne_k(mask):
    assert_agrees(mask, 2, 2, 3, 5)


@pytest.mark.parametrize(
    "mask",
    [
        M.spatial((2, 2, 3)),
        M.temporal((2, 2, 3)),
        M.frame_causal((2, 2, 3)),
        M.window_3d((2, 2, 3), (3, 1, 3)),
        M.tile_window((2, 2, 3), (1, 2, 1), (1, 1, 2)),
        M.tile_window((2, 2, 3), (1, 2, 1), (1, 1, 2), order="tile"),
        M.window_3d((2, 2, 3), (1, 1, 3), border="shift"),
        M.window_3d((2, 2, 3), (1, 3, 3), dilation=(1, 1, 2), border="shift"),
        M.window_3d((2, 2, 3), (3, 1, 3), dilation=(2, 1, 2)),
        M.radial((2, 2, 3)),
        M.radial((3, 2, 2), min_width=2, sink_frames=1),
    ],
    ids=repr,
)
def test_every_video_constructor(mask):
    assert_agrees(mask, 1, 1, 12, 12)


def test_per_head_mask_depends_on_the_head():
    g = (2, 2, 3)
    mask = M.per_head([M.spatial(g), M.temporal(g), M.causal()])
    assert_agrees(mask, 1, 3, 12, 12)
    dense = mask.to_bool(1, 3, 12, 12)[0]
    for h, m in enumerate(mask.masks):
        assert torch.equal(dense[h], m.to_bool(1, 1, 12, 12)[0, 0])


@SETTINGS
@given(data=st.data(), b=st.integers(1, 3), q=st.integers(1, 6), k=st.integers(1, 6))
def test_random_sequence_compositions(data, b, q, k):
    mask = data.draw(compose(sequence_mask(b, q, k)))
    assert_agrees(mask, b, 2, q, k)


@SETTINGS
@given(data=st.data(), grid=st.sampled_from([(2, 2, 2), (1, 2, 4), (3, 1, 2), (2, 3, 1)]))
def test_random_video_compositions(data, grid):
    n = grid[0] * grid[1] * grid[2]
    mask = data.draw(compose(st.one_of(video_mask(grid), sequence_mask(2, n, n))))
    assert_agrees(mask, 2, 1, n, n)


def test_tile_order_mask_is_the_raster_mask_permuted():
    grid, tile, window = (2, 4, 4), (1, 2, 2), (1, 1, 2)
    perm = M.tile_permutation(grid, tile)
    raster = M.tile_window(grid, tile, window).to_bool(1, 1, 32, 32)[0, 0]
    tiled = M.tile_window(grid, tile, window, order="tile").to_bool(1, 1, 32, 32)[0, 0]
    assert torch.equal(tiled, raster[perm][:, perm])


# ---------------------------------------------------------------------------------------------------- BlockMask


def block_any(allowed: torch.Tensor, bs: int) -> torch.Tensor:
    """[B, H, Q, K] -> [B, H, Q/bs, K/bs]: 1 where the block has an attended pair."""
    b, h, q, k = allowed.shape
    return allowed.reshape(b, h, q // bs, bs, k // bs, bs).any(5).any(3).int()


@pytest.mark.parametrize(
    "mask,b",
    [
        (M.causal(), 1),
        (M.sliding_window(3), 1),
        (M.causal() & M.key_padding(torch.tensor([5, 8])), 2),
        (M.document(torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])) | M.prefix_lm(2), 1),
        ((M.sink(2) | M.sliding_window(2)) & M.causal(), 1),
        (M.radial((4, 1, 2), min_width=1), 1),
        (M.window_3d((2, 2, 2), (1, 1, 1), border="shift", dilation=(1, 2, 1)), 1),
    ],
    ids=repr,
)
def test_block_mask_blocks_match_the_dense_mask(mask, b):
    bm = mask.to_block_mask(b, 1, 8, 8, block_size=2)
    dense = bm.to_dense()
    assert dense.shape == (b if mask.batch_dependent else 1, 1, 4, 4)
    assert torch.equal(dense.expand(b, 1, 4, 4), block_any(flex_dense(mask, b, 1, 8, 8), 2))


def test_block_mask_is_cached():
    from veil.masks.flex import clear_cache

    clear_cache()
    lengths = torch.tensor([5, 8])
    mask = M.causal() & M.key_padding(lengths)
    first = mask.to_block_mask(2, 1, 8, 8, block_size=2)
    assert mask.to_block_mask(2, 1, 8, 8, block_size=2) is first
    # a mask built again from the same tensor hits the same entry (caches key on tensor identity, not values:
    # a lookup never copies a tensor to the host)
    again = M.causal() & M.key_padding(lengths)
    assert again == mask and again.to_block_mask(2, 1, 8, 8, block_size=2) is first
    # another shape, block size or length tensor is another block mask
    assert mask.to_block_mask(2, 1, 8, 8, block_size=4) is not first
    assert (M.causal() & M.key_padding(torch.tensor([5, 8]))).to_block_mask(2, 1, 8, 8, block_size=2) is not first
    # the same tensor changed in place is a new entry, with the new values
    lengths[0] = 2
    changed = mask.to_block_mask(2, 1, 8, 8, block_size=2)
    assert changed is not first
    assert changed.to_dense()[0, 0].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]


def test_block_mask_of_a_batch_independent_mask_broadcasts():
    bm = M.causal().to_block_mask(3, 4, 8, 8, block_size=2)
    assert bm.to_dense().shape == (1, 1, 4, 4)


@pytest.mark.parametrize(
    "mask",
    [
        M.causal() & M.key_padding(torch.tensor([5, 8])),
        M.sliding_window(3) | M.prefix_lm(2),
        M.document(torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1, 1, 1]])) & M.causal(),
    ],
    ids=repr,
)
def test_flex_attention_with_the_block_mask_matches_the_reference(mask):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused; fine at this size
        out = flex_attention(q, k, v, block_mask=mask.to_block_mask(2, 2, 8, 8, block_size=2))
    torch.testing.assert_close(out, veil.attend(q, k, v, mask, backend="reference"))

"""``region`` (a block of the global mask) and ``block_is_empty`` (structure-only emptiness of a block)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import veil.masks as M
from tests.masks.strategies import compose, sequence_mask, video_mask


def test_region_is_the_block_of_the_global_matrix_literal():
    # causal over 6 x 6, rows 2..3, keys 1..4
    got = M.region(M.causal(), q_start=2, kv_start=1, q_len=6, kv_len=6).to_bool(1, 1, 2, 4)[0, 0]
    assert got.int().tolist() == [[1, 1, 0, 0],
                                  [1, 1, 1, 0]]
    # bottom-right alignment stays global: 2 queries over 5 keys, block = keys 3..4
    got = M.region(M.causal(), q_start=0, kv_start=3, q_len=2, kv_len=5).to_bool(1, 1, 2, 2)[0, 0]
    assert got.int().tolist() == [[1, 0],
                                  [1, 1]]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_region_equals_the_slice_of_the_global_mask(data):
    b, q, k = 2, data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    mask = data.draw(compose(sequence_mask(b, q, k), max_leaves=3))
    q0, k0 = data.draw(st.integers(0, q - 1)), data.draw(st.integers(0, k - 1))
    q1, k1 = data.draw(st.integers(q0, q)), data.draw(st.integers(k0, k))
    full = mask.to_bool(b, 3, q, k)
    got = M.region(mask, q_start=q0, kv_start=k0, q_len=q, kv_len=k).to_bool(b, 3, q1 - q0, k1 - k0)
    assert torch.equal(got, full[:, :, q0:q1, k0:k1])


def _check_blocks(mask, q, k, exact: bool):
    full = mask.to_bool(2, 1, q, k)
    for q0 in range(q):
        for q1 in range(q0 + 1, q + 1):
            for k0 in range(0, k, 2):
                for k1 in range(k0 + 1, k + 1, 2):
                    visible = bool(full[:, :, q0:q1, k0:k1].any())
                    empty = M.block_is_empty(mask, (q0, q1), (k0, k1), q, k)
                    assert not (empty and visible), (mask, q0, q1, k0, k1)  # sound, always
                    if exact:
                        assert empty == (not visible), (mask, q0, q1, k0, k1)


@pytest.mark.parametrize("mask, q, k", [
    (M.causal(), 7, 7), (M.causal(), 3, 8), (M.sliding_window(3), 8, 8), (M.sliding_window(2, causal=False), 8, 8),
    (M.chunked(3), 8, 8), (M.prefix_lm(3), 8, 8), (M.causal() & M.sliding_window(4), 8, 8),
    (M.sliding_window(2) | M.chunked(4), 8, 8), (M.sink(2), 8, 8),
    ((M.sink(1) | M.sliding_window(2)) & M.causal(), 8, 8),
])
def test_block_is_empty_is_exact_for_sequence_structures(mask, q, k):
    _check_blocks(mask, q, k, exact=True)


@pytest.mark.parametrize("mask", [M.spatial((3, 2, 2)), M.frame_causal((3, 2, 2)), M.window_3d((4, 2, 2), (3, 3, 1)),
                                  M.window_3d((4, 1, 3), (1, 1, 3))])
def test_block_is_empty_is_exact_along_time_for_frame_blocks(mask):
    # blocks made of whole frames: emptiness is decided by time alone for these masks
    t, h, w = mask.grid
    hw = h * w
    full = mask.to_bool(1, 1, t * hw, t * hw)
    for a in range(t):
        for b_ in range(a + 1, t + 1):
            for c in range(t):
                for d in range(c + 1, t + 1):
                    visible = bool(full[..., a * hw:b_ * hw, c * hw:d * hw].any())
                    empty = M.block_is_empty(mask, (a * hw, b_ * hw), (c * hw, d * hw), t * hw, t * hw)
                    assert empty == (not visible), (a, b_, c, d)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_block_is_empty_is_sound_for_any_composition(data):
    if data.draw(st.booleans()):  # the new video patterns too: dilated / shifted windows, radial, per-head
        grid = data.draw(st.sampled_from([(4, 1, 2), (3, 2, 2), (5, 1, 3)]))
        q = k = grid[0] * grid[1] * grid[2]
        mask = data.draw(st.sampled_from([
            M.window_3d(grid, (3, 1, 1), border="shift"), M.window_3d(grid, (3, 1, 1), dilation=(2, 1, 1)),
            M.window_3d(grid, (3, 1, 3), dilation=(2, 1, 1), border="shift"), M.radial(grid, sink_frames=1),
            M.per_head([M.spatial(grid), M.window_3d(grid, (1, 1, 1), border="shift")])]))
        full = mask.to_bool(1, 2, q, k)
        q0, k0 = data.draw(st.integers(0, q - 1)), data.draw(st.integers(0, k - 1))
        q1, k1 = data.draw(st.integers(q0 + 1, q)), data.draw(st.integers(k0 + 1, k))
        if M.block_is_empty(mask, (q0, q1), (k0, k1), q, k):
            assert not bool(full[:, :, q0:q1, k0:k1].any())
        return
    if data.draw(st.booleans()):
        grid = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
        q = k = grid[0] * grid[1] * grid[2]
        mask = data.draw(compose(video_mask(grid), max_leaves=3))
    else:
        q, k = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
        mask = data.draw(compose(sequence_mask(2, q, k), max_leaves=3))
    full = mask.to_bool(2, 1, q, k)
    q0, k0 = data.draw(st.integers(0, q - 1)), data.draw(st.integers(0, k - 1))
    q1, k1 = data.draw(st.integers(q0 + 1, q)), data.draw(st.integers(k0 + 1, k))
    if M.block_is_empty(mask, (q0, q1), (k0, k1), q, k):
        assert not bool(full[:, :, q0:q1, k0:k1].any())


def test_region_errors_name_the_argument():
    with pytest.raises(ValueError, match="region: rows"):
        M.region(M.causal(), q_start=4, kv_start=0, q_len=5, kv_len=5).to_bool(1, 1, 2, 5)
    with pytest.raises(ValueError, match="q_start"):
        M.region(M.causal(), q_start=-1, kv_start=0, q_len=5, kv_len=5)
    with pytest.raises(TypeError, match="mask: expected a veil Mask"):
        M.Region("causal", 0, 0, 3, 3)
    assert isinstance(M.region(None, q_start=0, kv_start=0, q_len=2, kv_len=2), M.Full)

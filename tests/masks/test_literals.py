"""Each constructor pinned by a literal 0/1 matrix at a small size (True / 1 = may attend).

Every expected matrix is written by hand from the docstrings' definitions, never computed with the code
under test. ``qa = q + (K - Q)`` is the absolute query position (bottom-right alignment).
"""

import pytest
import torch

import veil.masks as M


def mat(m, q, k, b=1, h=1):
    return m.to_bool(b, h, q, k).int()


def T(rows):
    return torch.tensor(rows, dtype=torch.int32)


def check(m, q, k, expected, b=1):
    """``expected``: a [Q, K] matrix shared by the batch, or a list of B of them."""
    got = mat(m, q, k, b=b, h=2)
    want = T(expected)
    if want.dim() == 2:
        want = want.expand(b, 2, q, k)
    else:
        want = want[:, None].expand(b, 2, q, k)
    assert got.shape == (b, 2, q, k)
    assert torch.equal(got, want), f"{m!r} Q={q} K={k}:\n{got}\nexpected\n{want}"


# ---------------------------------------------------------------------------------------------------- sequence


def test_full():
    check(M.full(), 2, 3, [[1, 1, 1], [1, 1, 1]])


def test_causal_square_and_kv_cache():
    check(M.causal(), 3, 3, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    # K > Q: bottom-right aligned (the two new queries are the last two positions)
    check(M.causal(), 2, 4, [[1, 1, 1, 0], [1, 1, 1, 1]])
    # one decoding query sees the whole cache
    check(M.causal(), 1, 3, [[1, 1, 1]])


def test_causal_more_queries_than_keys_leaves_first_rows_empty():
    # Q > K: qa = q - 2, rows 0 and 1 see nothing
    check(M.causal(), 4, 2, [[0, 0], [0, 0], [1, 0], [1, 1]])


def test_sliding_window_counts_window_keys_including_self():
    check(M.sliding_window(2), 4, 4, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    check(M.sliding_window(1), 3, 3, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # a window at least as long as the sequence is causal
    check(M.sliding_window(9), 3, 3, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_sliding_window_kv_cache():
    # qa = 3, 4: keys (qa - 2, qa]
    check(M.sliding_window(2), 2, 5, [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])


def test_sliding_window_symmetric():
    # |k - qa| < 2: three keys centred on the query
    check(M.sliding_window(2, causal=False), 4, 4, [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    # Q != K: qa = 2, 3
    check(M.sliding_window(2, causal=False), 2, 4, [[0, 1, 1, 1], [0, 0, 1, 1]])


def test_key_padding():
    lengths = torch.tensor([2, 0, 3])
    check(M.key_padding(lengths), 2, 3, [[[1, 1, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], b=3)


def test_key_padding_takes_a_list():
    check(M.key_padding([1, 2]), 1, 3, [[[1, 0, 0]], [[1, 1, 0]]], b=2)


def test_query_padding():
    check(M.query_padding(torch.tensor([1, 2])), 3, 2, [[[1, 1], [0, 0], [0, 0]], [[1, 1], [1, 1], [0, 0]]], b=2)


def test_key_mask_left_padding():
    keep = torch.tensor([[False, True, True], [True, False, True]])
    check(M.key_mask(keep), 2, 3, [[[0, 1, 1], [0, 1, 1]], [[1, 0, 1], [1, 0, 1]]], b=2)


def test_packed():
    check(M.packed([2, 1]), 3, 3, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    check(M.packed(torch.tensor([1, 3])), 4, 4, [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]])


def test_packed_with_an_empty_sequence():
    # ids [0, 2, 2]: the empty sequence 1 owns no token
    check(M.packed([1, 0, 2]), 3, 3, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_packed_cross_attention_with_kv_seqlens():
    # query ids [0, 0, 1], key ids [0, 1, 1, 1]
    check(M.packed([2, 1], kv_seqlens=[1, 3]), 3, 4, [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]])


def test_document_shared_by_the_batch():
    ids = torch.tensor([0, 0, 1, 1])
    check(M.document(ids), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], b=2)
    assert not M.document(ids).batch_dependent


def test_document_ids_need_not_be_sorted():
    check(M.document(torch.tensor([0, 1, 0])), 3, 3, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


def test_document_per_sample():
    ids = torch.tensor([[0, 1, 1], [0, 0, 0]])
    check(M.document(ids), 3, 3, [[[1, 0, 0], [0, 1, 1], [0, 1, 1]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]], b=2)
    assert M.document(ids).batch_dependent


def test_document_cross_attention_uses_plain_indices():
    # documents are not position-aligned: query i has id ids[i], key j has id kv_ids[j]
    check(M.document(torch.tensor([0, 1]), torch.tensor([0, 0, 1])), 2, 3, [[1, 1, 0], [0, 0, 1]])


def test_prefix_lm_int():
    check(M.prefix_lm(2), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    check(M.prefix_lm(0), 3, 3, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_prefix_lm_kv_cache():
    # qa = 1, 2, 3; prefix 3 keys
    check(M.prefix_lm(3), 3, 4, [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_prefix_lm_per_sample():
    check(
        M.prefix_lm(torch.tensor([1, 3])), 3, 3,
        [[[1, 0, 0], [1, 1, 0], [1, 1, 1]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]], b=2,
    )


def test_chunked():
    check(M.chunked(2), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    # a short last chunk
    check(M.chunked(2), 5, 5, [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])


def test_chunked_kv_cache():
    # qa = 3 (chunk 1), 4 (chunk 2)
    check(M.chunked(2), 2, 5, [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])


def test_chunked_causal_llama4():
    check(M.chunked(2) & M.causal(), 4, 4, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])


# ---------------------------------------------------------------------------------------------------- video
# grid (T, H, W), raster order: token i at t = i // (H*W), h = (i // W) % H, w = i % W.


def test_spatial():
    # grid (2, 1, 2): frames {0, 1} and {2, 3}
    check(M.spatial((2, 1, 2)), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])


def test_temporal():
    # grid (2, 1, 2): position 0 = tokens {0, 2}, position 1 = tokens {1, 3}
    check(M.temporal((2, 1, 2)), 4, 4, [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    # grid (1, 2, 1): one frame, each token only sees itself
    check(M.temporal((1, 2, 1)), 2, 2, [[1, 0], [0, 1]])


def test_frame_causal():
    check(M.frame_causal((2, 1, 2)), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    check(M.frame_causal((3, 1, 1)), 3, 3, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_window_3d_along_width():
    # grid (1, 1, 5), window (1, 1, 3): |dw| <= 1
    check(
        M.window_3d((1, 1, 5), (1, 1, 3)), 5, 5,
        [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]],
    )


def test_window_3d_along_time():
    # grid (3, 1, 2): token i at t = i // 2, w = i % 2; window (3, 1, 1): |dt| <= 1 and same w
    check(
        M.window_3d((3, 1, 2), (3, 1, 1)), 6, 6,
        [
            [1, 0, 1, 0, 0, 0],
            [0, 1, 0, 1, 0, 0],
            [1, 0, 1, 0, 1, 0],
            [0, 1, 0, 1, 0, 1],
            [0, 0, 1, 0, 1, 0],
            [0, 0, 0, 1, 0, 1],
        ],
    )


def test_window_3d_larger_than_grid_is_full():
    check(M.window_3d((1, 2, 1), (1, 5, 1)), 2, 2, [[1, 1], [1, 1]])


def test_tile_window_raster_order():
    # grid (1, 2, 4), tile (1, 2, 2), window 1 tile: tile = w // 2, so tile 0 = tokens {0, 1, 4, 5}
    a, b = [1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]
    check(M.tile_window((1, 2, 4), (1, 2, 2), (1, 1, 1)), 8, 8, [a, a, b, b, a, a, b, b])


def test_tile_window_tile_order():
    # the same mask over tokens in tile order: each tile is a contiguous block of 4 tokens
    a, b = [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]
    check(M.tile_window((1, 2, 4), (1, 2, 2), (1, 1, 1), order="tile"), 8, 8, [a, a, a, a, b, b, b, b])


def test_tile_window_is_shifted_to_stay_in_the_grid():
    # 3 tiles of 2 tokens along W, window 2 tiles: start = clamp(c - 1, 0, 1) -> tiles {0,1}, {0,1}, {1,2}
    a, b = [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]
    check(M.tile_window((1, 1, 6), (1, 1, 2), (1, 1, 2)), 6, 6, [a, a, a, a, b, b])
    # 4 tiles of 1 token, window 3: start = clamp(c - 1, 0, 1) -> {0,1,2}, {0,1,2}, {1,2,3}, {1,2,3}
    check(
        M.tile_window((1, 1, 4), (1, 1, 1), (1, 1, 3)), 4, 4,
        [[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1]],
    )


def test_tile_window_keeps_prod_window_times_tile_keys_per_query():
    m = M.tile_window((2, 4, 6), (1, 2, 2), (1, 2, 2))
    counts = mat(m, 48, 48)[0, 0].sum(-1)
    assert torch.equal(counts, torch.full((48,), 1 * 2 * 2 * 2 * 2, dtype=counts.dtype))


# ---------------------------------------------------------------------------------------------------- algebra


def test_and():
    check(M.key_padding(torch.tensor([2])) & M.causal(), 3, 3, [[1, 0, 0], [1, 1, 0], [1, 1, 0]])


def test_or():
    check(M.causal() | M.chunked(2), 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_not():
    check(~M.causal(), 3, 3, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    check(~M.key_padding(torch.tensor([1, 3])), 1, 3, [[[0, 1, 1]], [[0, 0, 0]]], b=2)


def test_precedence_and_binds_tighter_than_or():
    # causal | (chunked(2) & ~causal): the same as causal | chunked(2)
    m = M.causal() | M.chunked(2) & ~M.causal()
    check(m, 4, 4, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_full_is_the_identity_of_and():
    c = M.causal()
    assert (M.full() & c) is c and (c & M.full()) is c


@pytest.mark.parametrize("q,k", [(3, 3), (2, 4)])
def test_de_morgan(q, k):
    a, b = M.causal(), M.chunked(2)
    assert torch.equal(mat(~(a | b), q, k), mat(~a & ~b, q, k))


def test_at_positions_evaluates_the_mask_at_the_given_positions():
    # a ring cache of 4 slots holding positions 8, 5, 6, 7 and an empty slot; the query is position 8
    kv = torch.tensor([8, 5, 6, 7, -1])
    check(M.at_positions(M.causal() & M.sliding_window(3), torch.tensor([8]), kv), 1, 5, [[1, 0, 1, 1, 0]])
    check(M.at_positions(M.causal(), torch.tensor([6, 7]), kv), 2, 5, [[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    check(M.at_positions(None, torch.tensor([0]), kv), 1, 5, [[1, 1, 1, 1, 0]])  # only empty slots are hidden
    with pytest.raises(ValueError, match="kv_positions"):
        M.at_positions(M.causal(), torch.tensor([1]), kv).to_bool(1, 1, 1, 4)
    with pytest.raises(TypeError, match="q_positions"):
        M.at_positions(M.causal(), torch.tensor([1.0]), kv)


def test_sink_keeps_the_first_keys():
    check(M.sink(2), 3, 4, [[1, 1, 0, 0]] * 3)
    # StreamingLLM: the sink and a causal window of 2
    check((M.sink(1) | M.sliding_window(2)) & M.causal(), 5, 5,
          [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]])


def test_window_3d_shifted_border_keeps_whole_windows():
    # 1D along w: width 3 moved to stay inside 5 tokens (NATTEN), against clipping
    check(M.window_3d((1, 1, 5), (1, 1, 3), border="shift"), 5, 5,
          [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    check(M.window_3d((1, 1, 5), (1, 1, 3)), 5, 5,
          [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])


def test_window_3d_dilated():
    # dilation 2, width 3: every other token, 2 steps each side (clipped), or 3 members of the query's group (shift)
    check(M.window_3d((1, 1, 7), (1, 1, 3), dilation=(1, 1, 2)), 7, 7,
          [[1, 0, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1, 0],
           [0, 0, 1, 0, 1, 0, 1], [0, 0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 1, 0, 1]])
    check(M.window_3d((1, 1, 7), (1, 1, 3), dilation=(1, 1, 2), border="shift"), 7, 7,
          [[1, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1, 0],
           [0, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0, 1]])


def test_radial_band_halves_as_the_distance_doubles():
    # 5 frames of 4 tokens: S = 8; distances 0-1 whole frames, 2-3 a band of 2, 4 a band of 1
    g = (5, 1, 4)
    rows = M.radial(g).to_bool(1, 1, 20, 20)[0, 0].int()
    assert rows[0].tolist() == [1] * 8 + [1, 1, 1, 0] + [1, 1, 1, 0] + [1, 1, 0, 0]
    assert rows[3].tolist() == [1] * 8 + [0, 1, 1, 1] + [0, 1, 1, 1] + [0, 0, 1, 1]
    assert rows[16].tolist() == [1, 1, 0, 0] + [1, 1, 1, 0] + [1, 1, 1, 0] + [1] * 8  # symmetric in time
    # min_width 4: the band cannot shrink below 4, so far frames thin out (distance 3 dropped, 2 and 4 kept)
    thin = M.radial(g, min_width=4).to_bool(1, 1, 20, 20)[0, 0].int()
    assert thin[0].tolist() == [1] * 12 + [0] * 4 + [1] * 4
    # a sink frame is seen by every query
    assert M.radial(g, sink_frames=1).to_bool(1, 1, 20, 20)[0, 0, 19, :4].tolist() == [True] * 4


def test_per_head_gives_each_head_its_mask():
    got = M.per_head([M.causal(), M.sliding_window(2)]).to_bool(1, 2, 3, 3)[0].int()
    assert got.tolist() == [[[1, 0, 0], [1, 1, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 0], [0, 1, 1]]]
    with pytest.raises(ValueError, match="2 masks"):
        M.per_head([M.causal(), M.causal()]).to_bool(1, 3, 3, 3)
    with pytest.raises(TypeError, match="masks\\[1\\]"):
        M.per_head([M.causal(), "causal"])

"""Lowerings and tools of the mask language: additive biases, density, sub-blocks, parse/repr, tile order."""

import pytest
import torch

import veil.masks as M

F32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, written out

# ---------------------------------------------------------------------------------------------------- to_bias

CAUSAL_3 = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bias_min_fill(dtype):
    bias = M.causal().to_bias(2, 3, 3, 3, dtype=dtype)
    assert bias.shape == (2, 3, 3, 3) and bias.dtype == dtype
    fill = torch.finfo(dtype).min
    want = torch.where(CAUSAL_3, torch.tensor(0.0, dtype=dtype), torch.tensor(fill, dtype=dtype))
    assert torch.equal(bias, want.expand(2, 3, 3, 3))


def test_gemma_fill_is_gemmas_float32_value():
    assert M.GEMMA_FILL == -2.3819763e38
    # Gemma's -2.3819763e38 and -0.7 x float32 max are the same float32
    gemma32 = torch.tensor(-2.3819763e38, dtype=torch.float32)
    assert gemma32.item() == torch.tensor(-0.7 * F32_MAX, dtype=torch.float32).item()
    bias = M.causal().to_bias(1, 1, 3, 3, dtype=torch.float32, fill="gemma")
    assert torch.equal(bias[0, 0], torch.where(CAUSAL_3, torch.tensor(0.0), gemma32))
    # the headroom: a large negative score added to the fill stays finite
    assert torch.isfinite(bias + torch.tensor(-1e38)).all()


def test_gemma_fill_in_bfloat16():
    bias = M.causal().to_bias(1, 1, 3, 3, dtype=torch.bfloat16, fill="gemma")
    assert bias[0, 0, 0, 1].item() == torch.tensor(-2.3819763e38, dtype=torch.bfloat16).item()
    assert torch.isfinite(bias).all()


def test_gemma_fill_does_not_fit_float16():
    with pytest.raises(ValueError, match="gemma"):
        M.causal().to_bias(1, 1, 3, 3, dtype=torch.float16, fill="gemma")


def test_minus_inf_fill():
    bias = M.causal().to_bias(1, 1, 3, 3, fill="-inf")
    assert torch.equal(bias[0, 0] == float("-inf"), ~CAUSAL_3)
    assert torch.equal(bias[0, 0] == 0, CAUSAL_3)


def test_number_fill():
    bias = M.causal().to_bias(1, 1, 3, 3, fill=-1e4)
    assert set(bias.unique().tolist()) == {0.0, -1e4}


@pytest.mark.parametrize("fill,err", [(1.0, ValueError), (0.0, ValueError), ("max", ValueError), (True, ValueError)])
def test_bad_fill(fill, err):
    with pytest.raises(err, match="fill"):
        M.causal().to_bias(1, 1, 2, 2, fill=fill)


def test_bias_needs_a_float_dtype():
    with pytest.raises(TypeError, match="dtype"):
        M.causal().to_bias(1, 1, 2, 2, dtype=torch.int32)


@pytest.mark.parametrize("fill", ["min", "gemma"])
def test_composed_bias_never_sums_two_fills(fill):
    # a pair masked by all three parts would get 3 x fill (= -inf) if each part added its own bias
    mask = M.causal() & M.sliding_window(2) & M.key_padding(torch.tensor([2, 3]))
    bias = mask.to_bias(2, 1, 3, 3, dtype=torch.float32, fill=fill)
    value = torch.finfo(torch.float32).min if fill == "min" else torch.tensor(-2.3819763e38).item()
    want0 = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)  # True = masked, sample 0
    want1 = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    assert torch.equal(bias[0, 0] == value, want0)
    assert torch.equal(bias[1, 0] == value, want1)
    assert set(bias.unique().tolist()) == {0.0, value}


# ---------------------------------------------------------------------------------------------------- to_bool


def test_to_bool_is_a_broadcast_view_for_shared_masks():
    allowed = M.causal().to_bool(4, 8, 3, 3)
    assert allowed.shape == (4, 8, 3, 3) and allowed.stride()[:2] == (0, 0)
    per_sample = M.key_padding(torch.tensor([1, 2])).to_bool(2, 8, 3, 3)
    assert per_sample.stride()[1] == 0 and per_sample.stride()[0] != 0


def test_to_bool_sub_block_keeps_the_full_lengths():
    mask = M.sliding_window(3) & M.key_padding(torch.tensor([5, 7]))
    whole = mask.to_bool(2, 1, 6, 8)
    part = mask.to_bool(2, 1, 6, 8, q_range=(2, 5), kv_range=(3, 8))
    assert part.shape == (2, 1, 3, 5)
    assert torch.equal(part, whole[:, :, 2:5, 3:8])


# ---------------------------------------------------------------------------------------------------- density


def test_density_hand_counts():
    assert M.causal().density(q_len=4) == 10 / 16
    assert M.causal().density(q_len=2, kv_len=4) == 7 / 8
    assert M.sliding_window(2).density(q_len=4) == 7 / 16
    assert M.full().density(q_len=3, kv_len=5) == 1.0
    # samples with 1 and 3 of 4 keys, 2 queries each: 8 of 16 pairs
    assert M.key_padding(torch.tensor([1, 3])).density(batch=2, q_len=2, kv_len=4) == 0.5
    assert (M.causal() & ~M.causal()).density(q_len=5) == 0.0


def test_density_over_several_row_blocks():
    # 3000 x 3000 is evaluated in blocks of rows: the count must still be n (n + 1) / 2
    n = 3000
    assert M.causal().density(q_len=n) == (n * (n + 1) // 2) / (n * n)


# ---------------------------------------------------------------------------------------------------- parse / repr

NO_TENSORS = [
    M.full(),
    M.causal(),
    M.sliding_window(64),
    M.sliding_window(3, causal=False),
    M.chunked(4),
    M.prefix_lm(2),
    M.spatial((2, 3, 4)),
    M.temporal((2, 3, 4)),
    M.frame_causal((2, 3, 4)),
    M.window_3d((3, 4, 4), (1, 3, 3)),
    M.tile_window((2, 4, 4), (1, 2, 2), (1, 2, 1)),
    M.tile_window((2, 4, 4), (1, 2, 2), (1, 2, 1), order="tile"),
    M.window_3d((3, 4, 4), (1, 3, 3), dilation=(1, 2, 1), border="shift"),
    M.radial((4, 2, 2), decay=0.5, min_width=2, sink_frames=1),
    (M.sink(4) | M.sliding_window(8)) & M.causal(),
    M.causal() & M.sliding_window(64),
    (M.causal() | M.chunked(2)) & ~M.prefix_lm(1),
    ~(M.causal() & M.chunked(2)),
    M.causal() & (M.chunked(2) & M.sliding_window(3)),
    M.causal() | (M.chunked(2) | M.sliding_window(3)),
    (M.causal() & M.chunked(2)) | (M.sliding_window(2) & M.prefix_lm(1)),
    ~~M.causal(),
    ~M.causal() | M.chunked(3),
]

WITH_TENSORS = [
    M.key_padding(torch.tensor([2, 3])),
    M.query_padding(torch.tensor([0, 4])),
    M.packed([2, 1]),
    M.packed([2, 1], kv_seqlens=[1, 3]),
    M.prefix_lm(torch.tensor([1, 2])),
    M.causal() & M.key_padding(torch.tensor([2, 3])),
]


@pytest.mark.parametrize("mask", NO_TENSORS + WITH_TENSORS, ids=repr)
def test_parse_repr_round_trip(mask):
    assert M.parse(repr(mask)) == mask


def test_parse_builds_the_mask():
    assert M.parse("causal & sliding_window(64)") == M.causal() & M.sliding_window(64)
    assert M.parse("causal | ~chunked(size=2)") == M.causal() | ~M.chunked(2)
    # & binds tighter than |
    assert M.parse("causal | chunked(2) & prefix_lm(1)") == M.causal() | (M.chunked(2) & M.prefix_lm(1))
    assert M.parse("  sliding_window(4, causal=False)  ") == M.sliding_window(4, causal=False)


def test_parse_video_masks_with_a_default_grid():
    g = (2, 4, 4)
    assert M.parse("spatial & window_3d((1, 3, 3))", grid=g) == M.spatial(g) & M.window_3d(g, (1, 3, 3))
    assert M.parse("frame_causal()", grid=g) == M.frame_causal(g)
    assert M.parse("temporal((3, 1, 1))", grid=g) == M.temporal((3, 1, 1))  # an explicit grid wins
    want = M.tile_window(g, (1, 2, 2), (1, 1, 1))
    assert M.parse("tile_window((1, 2, 2), (1, 1, 1))", grid=g) == want
    assert M.parse("tile_window(tile=(1, 2, 2), window=(1, 1, 1))", grid=g) == want
    assert M.parse("tile_window((2, 4, 4), tile=(1, 2, 2), window=(1, 1, 1))", grid=g) == want


@pytest.mark.parametrize(
    "text",
    [
        "causal &",
        "nope",
        "nope(3)",
        "sliding_window(x)",
        "causal + 1",
        "sliding_window(0)",
        "causal(3)",
        "tile_window((2, 4, 4), (1, 3, 3), (1, 1, 1))",
        "key_mask(<bool [2, 4]>)",
        "3",
        "",
    ],
)
def test_parse_errors_show_the_expression(text):
    with pytest.raises(ValueError) as info:
        M.parse(text)
    assert repr(text) in str(info.value)


def test_parse_needs_a_string():
    with pytest.raises(TypeError, match="text"):
        M.parse(M.causal())


def test_repr_is_readable():
    assert repr(M.causal() & M.sliding_window(64)) == "causal() & sliding_window(64)"
    assert repr((M.causal() | M.chunked(2)) & M.prefix_lm(3)) == "(causal() | chunked(2)) & prefix_lm(3)"
    assert repr(~(M.causal() & M.chunked(2))) == "~(causal() & chunked(2))"
    assert repr(~M.causal()) == "~causal()"
    assert repr(M.key_padding(torch.tensor([2, 3]))) == "key_padding([2, 3])"
    assert repr(M.key_mask(torch.ones(2, 4, dtype=torch.bool))) == "key_mask(<bool [2, 4]>)"
    assert repr(M.sliding_window(4, causal=False)) == "sliding_window(4, causal=False)"
    assert repr(M.packed([2, 1], kv_seqlens=[1, 2])) == "packed([2, 1], [1, 2])"
    assert repr(M.window_3d((2, 3, 3), (1, 3, 3))) == "window_3d((2, 3, 3), (1, 3, 3))"


# ---------------------------------------------------------------------------------------------------- structure


def test_equality_and_hash_are_by_value():
    assert M.sliding_window(3) == M.sliding_window(3) != M.sliding_window(4)
    assert M.sliding_window(3) != M.sliding_window(3, causal=False)
    assert M.key_padding(torch.tensor([1, 2])) == M.key_padding([1, 2]) != M.key_padding([1, 3])
    assert len({M.causal(), M.causal(), M.causal() & M.chunked(2), M.causal() & M.chunked(2)}) == 2
    assert M.causal() != M.frame_causal((1, 1, 2))


def test_structure():
    mask = M.causal() & (M.sliding_window(3) | M.key_padding(torch.tensor([1, 2])))
    assert mask.kind == "and" and mask.batch_dependent and not mask.head_dependent
    assert [m.kind for m in mask.leaves()] == ["causal", "sliding_window", "key_padding"]
    assert not (M.causal() & M.chunked(2)).batch_dependent
    assert (~M.document(torch.tensor([[0, 1]]))).batch_dependent


def test_conjuncts_and_conjoin():
    a, b, c = M.causal(), M.sliding_window(3), M.chunked(2)
    assert M.conjuncts(a & (b & c)) == [a, b, c]
    assert M.conjuncts((a & b) & c) == [a, b, c]
    assert M.conjuncts(a | b) == [a | b]
    assert M.conjoin([]) == M.full()
    assert M.conjoin([a, b, c]) == (a & b) & c


# ---------------------------------------------------------------------------------------------------- tile order


def test_tile_permutation_by_hand():
    perm = M.tile_permutation((1, 4, 4), (1, 2, 2))
    # tiles in raster order of tiles, tokens in raster order inside each tile
    assert perm.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    # along time too: grid (2, 1, 2), tile (2, 1, 1): tile 0 = tokens {0, 2}, tile 1 = {1, 3}
    assert M.tile_permutation((2, 1, 2), (2, 1, 1)).tolist() == [0, 2, 1, 3]


def test_to_tile_order_moves_tokens_and_from_tile_order_undoes_it():
    grid, tile = (2, 4, 6), (1, 2, 3)
    x = torch.randn(2, 3, 48, 5)
    y = M.to_tile_order(x, grid, tile)
    perm = M.tile_permutation(grid, tile)
    assert torch.equal(y, x[:, :, perm])
    assert torch.equal(M.from_tile_order(y, grid, tile), x)
    # tokens along dim 1 ([B, L, C] layout)
    z = torch.randn(2, 48, 4)
    assert torch.equal(M.from_tile_order(M.to_tile_order(z, grid, tile, dim=1), grid, tile, dim=1), z)
    assert torch.equal(M.to_tile_order(z, grid, tile, dim=1), z[:, perm])


def test_tile_order_helpers_check_the_length():
    with pytest.raises(ValueError, match="x"):
        M.to_tile_order(torch.zeros(1, 15, 2), (1, 4, 4), (1, 2, 2))
    with pytest.raises(ValueError, match="x"):
        M.from_tile_order(torch.zeros(1, 15, 2), (1, 4, 4), (1, 2, 2))


def test_masks_hold_their_tensors_and_caches_see_in_place_changes():
    import veil

    lengths = torch.tensor([2, 3])
    keep = torch.tensor([[True, False, True]])
    m, km = M.key_padding(lengths), M.key_mask(keep)
    key, hashed = m.cache_key(), hash(m)
    q, k, v = torch.randn(2, 1, 2, 4), torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    veil.attend(q, k, v, m, backend="varlen")  # plans (and caches) under lengths [2, 3]
    lengths[0] = 0
    keep[0, 0] = False
    assert m.to_bool(2, 1, 1, 3)[:, 0, 0].tolist() == [[False] * 3, [True] * 3]
    assert km.to_bool(1, 1, 1, 3)[0, 0, 0].tolist() == [False, False, True]
    assert m.cache_key() != key and hash(m) == hashed  # the cache key follows the in-place version
    out = veil.attend(q, k, v, m, backend="varlen")
    torch.testing.assert_close(out, veil.attend(q, k, v, M.key_padding([0, 3]), backend="reference"))
    assert out[0].abs().max() == 0

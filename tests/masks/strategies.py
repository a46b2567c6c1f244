"""Hypothesis strategies: random masks and random compositions of them for a given attention shape."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import veil.masks as M


def _lengths(draw, b: int, n: int) -> torch.Tensor:
    return torch.tensor(draw(st.lists(st.integers(0, n), min_size=b, max_size=b)), dtype=torch.long)


def _ids(draw, shape: tuple[int, ...], docs: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return torch.tensor(draw(st.lists(st.integers(0, docs - 1), min_size=n, max_size=n))).view(shape)


def _partition(draw, total: int, parts: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=parts - 1, max_size=parts - 1)))
    edges = [0, *cuts, total]
    return [edges[i + 1] - edges[i] for i in range(parts)]


SEQUENCE_KINDS = (
    "full", "causal", "sliding_window", "sliding_window_sym", "key_padding", "query_padding", "key_mask",
    "prefix_lm", "prefix_lm_tensor", "chunked", "document", "document_batch", "packed",
)


@st.composite
def sequence_mask(draw, b: int, q: int, k: int, kinds: tuple[str, ...] = SEQUENCE_KINDS) -> M.Mask:
    """One leaf mask for an attention call of batch ``b``, ``q`` queries and ``k`` keys."""
    kind = draw(st.sampled_from(kinds))
    if kind == "full":
        return M.full()
    if kind == "causal":
        return M.causal()
    if kind == "sliding_window":
        return M.sliding_window(draw(st.integers(1, k + 1)))
    if kind == "sliding_window_sym":
        return M.sliding_window(draw(st.integers(1, k + 1)), causal=False)
    if kind == "key_padding":
        return M.key_padding(_lengths(draw, b, k))
    if kind == "query_padding":
        return M.query_padding(_lengths(draw, b, q))
    if kind == "key_mask":
        bits = draw(st.lists(st.booleans(), min_size=b * k, max_size=b * k))
        return M.key_mask(torch.tensor(bits, dtype=torch.bool).view(b, k))
    if kind == "prefix_lm":
        return M.prefix_lm(draw(st.integers(0, k)))
    if kind == "prefix_lm_tensor":
        return M.prefix_lm(_lengths(draw, b, k))
    if kind == "chunked":
        return M.chunked(draw(st.integers(1, k + 1)))
    if kind == "document":
        docs = draw(st.integers(1, 3))
        return M.document(_ids(draw, (q,), docs), _ids(draw, (k,), docs))
    if kind == "document_batch":
        docs = draw(st.integers(1, 3))
        return M.document(_ids(draw, (b, q), docs), _ids(draw, (b, k), docs))
    assert kind == "packed"
    parts = draw(st.integers(1, 3))
    return M.packed(_partition(draw, q, parts), _partition(draw, k, parts))


@st.composite
def video_mask(draw, grid: tuple[int, int, int]) -> M.Mask:
    """One leaf mask over ``grid`` (``Q == K == T*H*W``)."""
    kind = draw(st.sampled_from(("spatial", "temporal", "frame_causal", "window_3d", "tile_window")))
    if kind == "spatial":
        return M.spatial(grid)
    if kind == "temporal":
        return M.temporal(grid)
    if kind == "frame_causal":
        return M.frame_causal(grid)
    if kind == "window_3d":
        return M.window_3d(grid, tuple(draw(st.sampled_from((1, 3, 5))) for _ in grid))
    tile = tuple(draw(st.sampled_from([d for d in range(1, g + 1) if g % d == 0])) for g in grid)
    window = tuple(draw(st.integers(1, g // t)) for g, t in zip(grid, tile))
    return M.tile_window(grid, tile, window, order=draw(st.sampled_from(("raster", "tile"))))


def compose(leaves: st.SearchStrategy[M.Mask], max_leaves: int = 4) -> st.SearchStrategy[M.Mask]:
    """Random trees of ``&``, ``|`` and ``~`` over ``leaves``."""
    return st.recursive(
        leaves,
        lambda kids: st.one_of(
            st.tuples(kids, kids).map(lambda ab: ab[0] & ab[1]),
            st.tuples(kids, kids).map(lambda ab: ab[0] | ab[1]),
            kids.map(lambda a: ~a),
        ),
        max_leaves=max_leaves,
    )


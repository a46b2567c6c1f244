"""``veil.masks``: one exact, composable language of attention masks.

True = the query may attend to the key. See :mod:`veil.masks.core` for the position convention.
"""

from veil.masks.blocks import AtPositions, Region, at_positions, block_is_empty, region
from veil.masks.core import (
    GEMMA_FILL,
    And,
    Context,
    Full,
    Mask,
    Not,
    Or,
    PerHead,
    TensorRef,
    conjoin,
    conjuncts,
    fill_value,
    per_head,
    value_range,
)
from veil.masks.parse import parse
from veil.masks.sequence import (
    Causal,
    Chunked,
    Document,
    KeyMask,
    KeyPadding,
    Packed,
    PrefixLM,
    QueryPadding,
    Sink,
    SlidingWindow,
    causal,
    chunked,
    document,
    full,
    key_mask,
    key_padding,
    packed,
    prefix_lm,
    query_padding,
    seqlens_to_ids,
    sink,
    sliding_window,
)
from veil.masks.video import (
    FrameCausal,
    Radial,
    Spatial,
    Temporal,
    TileWindow,
    Window3D,
    frame_causal,
    from_tile_order,
    radial,
    spatial,
    temporal,
    tile_permutation,
    tile_window,
    to_tile_order,
    window_3d,
)

__all__ = [
    "GEMMA_FILL", "And", "AtPositions", "at_positions", "block_is_empty", "Causal", "Chunked", "Context", "Document",
    "FrameCausal", "Full", "KeyMask",
    "KeyPadding", "Mask", "Not", "Or", "Packed", "PerHead", "PrefixLM", "QueryPadding", "Radial", "Region", "Sink",
    "SlidingWindow", "Spatial",
    "Temporal", "TensorRef", "TileWindow", "Window3D", "causal", "chunked", "conjoin", "conjuncts", "document",
    "fill_value", "frame_causal", "from_tile_order", "full", "key_mask", "key_padding", "packed", "parse", "per_head",
    "prefix_lm", "query_padding", "radial", "region", "seqlens_to_ids", "sink", "sliding_window", "spatial", "temporal",
    "tile_permutation", "tile_window", "to_tile_order", "value_range", "window_3d",
]

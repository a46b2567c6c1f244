"""Lowering to FlexAttention's ``BlockMask``, cached per mask, shape, device and block size."""

from __future__ import annotations

from collections import OrderedDict

import torch

from veil.masks.core import Mask

_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_SIZE = 64


def block_mask_for(
    mask: Mask,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    device: torch.device | str = "cpu",
    block_size: int = 128,
):
    """``torch.nn.attention.flex_attention.create_block_mask`` for ``mask``; repeated calls hit a cache.

    Masks that depend on neither the batch nor the head get a block mask with ``B = H = 1``, which
    FlexAttention broadcasts.
    """
    device = torch.device(device)
    mask.validate(batch, heads, q_len, kv_len, device)
    nb = batch if mask.batch_dependent else None
    nh = heads if mask.head_dependent else None
    key = (mask.cache_key(), nb, nh, q_len, kv_len, str(device), block_size)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    bm = create_block_mask_for(mask, batch, heads, q_len, kv_len, device=device, block_size=block_size)
    _CACHE[key] = bm
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return bm


def create_block_mask_for(mask: Mask, batch: int, heads: int, q_len: int, kv_len: int, *,
                          device: torch.device | str = "cpu", block_size: int = 128):
    """``create_block_mask`` for ``mask`` without the cache and without validation (traceable by torch.compile)."""
    from torch.nn.attention.flex_attention import create_block_mask

    nb = batch if mask.batch_dependent else None
    nh = heads if mask.head_dependent else None
    return create_block_mask(mask.mask_mod(q_len, kv_len, device), nb, nh, q_len, kv_len, device=str(device),
                             BLOCK_SIZE=block_size)


def clear_cache() -> None:
    _CACHE.clear()

"""KVCache views after the decode-path changes: the unwrapped ring returns the buffers in place, positions are
computed, and a returned ``valid`` never changes under a mask built from it (masks are hashed by value)."""

import torch

import veil.masks as M
from veil.layers import KVCache


def _kv(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((1, 1, n, 2), value)


def test_returned_valid_is_not_changed_by_later_updates():
    cache = KVCache(1, 1, 2, max_len=10, window=4)
    view = cache.update(_kv(0.0, 2), _kv(0.0, 2), torch.tensor([[False, True]]))  # unwrapped: the in-place path
    mask = M.key_mask(view.valid)
    key = hash(mask)
    for step in range(4):  # wraps the ring over slots 0 and 1
        cache.update(_kv(1.0 + step), _kv(1.0 + step), torch.tensor([[True]]))
    assert view.valid.tolist() == [[False, True]] and hash(mask) == key
    cache.reset()
    assert view.valid.tolist() == [[False, True]]


def test_unwrapped_then_wrapped_views_are_chronological():
    cache = KVCache(1, 1, 2, max_len=20, window=3)
    got = []
    for step in range(6):
        view = cache.update(_kv(float(step)), _kv(float(step)))
        got.append((view.positions.tolist(), view.k[0, 0, :, 0].tolist()))
    # the window (up to 3 older tokens) then the new one, oldest first; k holds each token's position
    want = [list(range(max(0, step - 3), step + 1)) for step in range(6)]
    assert got == [(w, [float(p) for p in w]) for w in want]
    assert cache.slot_positions.tolist() == [3, 4, 5]
    # a prefill chunk longer than the window on a wrapped ring: window old tokens, then all the new ones
    view = cache.update(_kv(6.0, 5), _kv(6.0, 5))
    assert view.positions.tolist() == list(range(3, 11)) and cache.slot_positions.tolist() == [9, 10, 8]
    static = KVCache(1, 1, 2, max_len=4)
    assert static.slot_positions.tolist() == [-1] * 4
    static.update(_kv(0.0, 3), _kv(0.0, 3))
    assert static.slot_positions.tolist() == [0, 1, 2, -1]

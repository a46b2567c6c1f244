"""auto caches its choice per call signature; registering a backend invalidates the cache."""

import dataclasses

import torch

import veil
import veil.masks as M
from veil.attention import get_backend, register_backend
from veil.attention.registry import _REGISTRY


def test_new_cheaper_backend_is_picked_after_a_cached_choice():
    q = torch.randn(1, 2, 16, 8)
    mask = M.causal() & M.key_padding(torch.tensor([9]))
    first = veil.explain(q, q, q, mask).backend
    veil.attend(q, q, q, mask)  # caches the choice
    calls = []

    def counting(*args):
        calls.append(1)
        return get_backend("reference").fn(*args)

    cheap = dataclasses.replace(get_backend("reference"), name="test_cheapest", fn=counting, cost=lambda call: 0.0)
    register_backend(cheap)
    try:
        out = veil.attend(q, q, q, mask)
        assert calls == [1] and first != "test_cheapest"
        torch.testing.assert_close(out, veil.attend(q, q, q, mask, backend="reference"))
    finally:
        del _REGISTRY["test_cheapest"]
        register_backend(get_backend("reference"))  # bump the version again: the cache forgets the test backend
    assert veil.explain(q, q, q, mask).backend == first
    veil.attend(q, q, q, mask)
    assert calls == [1]


def test_sdpa_runs_a_decode_step_without_a_mask_when_every_key_is_visible():
    from veil.attention.backends.sdpa import plan

    assert plan(M.causal() & M.sliding_window(8), 1, 8) == "none"
    assert plan(M.causal() & M.sliding_window(8), 1, 9) == "bool"  # the oldest key is out of the window
    assert plan(M.causal() & M.key_padding(torch.tensor([3])), 1, 8) == "bool"
    q, k = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 8, 4)
    torch.testing.assert_close(veil.attend(q, k, k, M.causal() & M.sliding_window(8), backend="sdpa"),
                               veil.attend(q, k, k, M.causal() & M.sliding_window(8), backend="reference"))

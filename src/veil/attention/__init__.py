"""``veil.attention``: ``attend(q, k, v, mask)`` and its backends (registry, reference, sdpa, flex, tiles, varlen)."""

from veil.attention.api import Choice, attend, explain, select, validate
from veil.attention.partials import merge_partials, partial_attention, partial_grads
from veil.attention.registry import Backend, Call, get_backend, list_backends, register_backend, use_backend

__all__ = ["Backend", "Call", "Choice", "attend", "explain", "get_backend", "list_backends", "merge_partials",
           "partial_attention", "partial_grads", "register_backend", "select", "use_backend", "validate"]

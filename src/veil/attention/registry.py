"""The backend registry: plain functions with declared capabilities, chosen per call.

A backend is ``fn(q, k, v, mask, scale, softcap) -> out`` (and optionally ``lse_fn``, the same returning
``(out, lse)``) with q ``[B, Hq, Q, D]``, k ``[B, Hkv, K, D]``,
v ``[B, Hkv, K, Dv]`` (inputs already validated by :func:`veil.attend`), ``mask`` a
:class:`veil.masks.Mask` or None, ``scale`` a float and ``softcap`` a float or None. Every backend must
return exactly 0 (and pass zero gradient) for a query row that sees no key.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from veil.masks import Mask

BackendFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Call:
    """What a backend is asked to do: shapes, dtype, device, grad mode, mask, softcap."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    needs_grad: bool
    mask: Mask | None
    softcap: float | None

    @classmethod
    def of(cls, q, k, v, mask, softcap) -> Call:
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return cls(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], q.dtype, q.device,
                   needs_grad, mask, softcap)

    def key(self) -> tuple:
        """A hashable key of the call with the mask by structure and tensor identity (no tensor is read)."""
        return (self.batch, self.q_heads, self.kv_heads, self.q_len, self.kv_len, self.head_dim, self.dtype,
                self.device, self.needs_grad, None if self.mask is None else self.mask.cache_key(), self.softcap)


@dataclass(frozen=True)
class Backend:
    """A registered attention backend.

    Attributes:
        name: registry key.
        fn: the kernel.
        devices: device types it runs on (``"cpu"``, ``"cuda"``).
        dtypes: dtypes it accepts.
        grad_devices: device types on which it has a backward.
        supports: ``(call) -> None | str``: None when the call is supported, else the reason why not.
        cost: ``(call) -> float``: estimated work (arbitrary units, comparable across backends) for ``auto``.
        auto: False when ``auto`` never picks it (it runs only when named).
        doc: one line for ``explain`` and the docs.
        lse_fn: ``fn(q, k, v, mask, scale, softcap) -> (out, lse)`` when the backend computes the log-sum-exp
            itself (with gradients); otherwise ``attend(..., return_lse=True)`` adds it with veil's row-blocked
            kernel (:func:`veil.attention.partials.logsumexp_scores`).
        eager_only: None when the backend traces under ``torch.compile(..., fullgraph=True)``; otherwise why it
            does not (``auto`` then skips it inside a compiled region, and naming it there is an error).
    """

    name: str
    fn: BackendFn
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    grad_devices: frozenset[str]
    supports: Callable[[Call], str | None]
    cost: Callable[[Call], float]
    auto: bool = True
    doc: str = field(default="")
    lse_fn: BackendFn | None = None
    eager_only: str | None = None

    def why_not(self, call: Call) -> str | None:
        if self.eager_only is not None and torch.compiler.is_compiling():
            return f"eager only under torch.compile ({self.eager_only})"
        if call.device.type not in self.devices:
            return f"does not run on {call.device.type}"
        if call.dtype not in self.dtypes:
            return f"does not take {call.dtype}"
        if call.needs_grad and call.device.type not in self.grad_devices:
            return f"has no backward on {call.device.type}"
        return self.supports(call)


_REGISTRY: dict[str, Backend] = {}
_VERSION = 0
# Per thread, like a ContextVar, but torch.compile reads it with a guard (a ContextVar is a graph break): a
# compiled function called under another use_backend(...) recompiles instead of running the old choice.
_ACTIVE = threading.local()


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry."""
    global _VERSION
    _REGISTRY[backend.name] = backend
    _VERSION += 1  # choices cached by `auto` were made without it
    return backend


def registry_version() -> int:
    """Changes whenever a backend is registered or replaced."""
    return _VERSION


def get_backend(name: str) -> Backend:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {name!r}; registered: {', '.join(sorted(_REGISTRY))} or 'auto'")
    return _REGISTRY[name]


def list_backends() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within this context, ``attend(..., backend="auto")`` uses ``name`` (an explicit argument still wins)."""
    if name != "auto":
        get_backend(name)
    before = active_backend()
    _ACTIVE.name = name
    try:
        yield
    finally:
        _ACTIVE.name = before


def active_backend() -> str | None:
    return getattr(_ACTIVE, "name", None)


def _ensure_loaded() -> None:
    # The built-in backends register themselves on import.
    from veil.attention import backends  # noqa: F401

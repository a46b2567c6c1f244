"""``flex``: FlexAttention (``torch.nn.attention.flex_attention``) with the mask's cached ``BlockMask``.

The mask is lowered once per shape to a ``BlockMask`` (:meth:`veil.masks.Mask.to_block_mask`, cached), so
fully masked blocks are skipped; the softcap is a ``score_mod``; GQA uses ``enable_gqa``. The call runs
through ``torch.compile(flex_attention)`` (compiled once per process and reused); :func:`uncompiled`
switches to FlexAttention's eager path, which materialises the scores (for tests of small shapes).

Rows that see no key: on CUDA FlexAttention reports them with a log-sum-exp of ``-inf``; their output is
multiplied by 0 there, so it is exactly 0 and passes zero gradient whatever the kernel does. On CPU (forward
only; compiled CPU flex cannot return the log-sum-exp) the kernel itself writes 0 there, which the tests pin.

Capabilities (torch 2.13): forward on CPU and CUDA, backward only on CUDA (CPU flex raises
``NotImplementedError`` in backward). ``auto`` picks it only on CUDA (its CPU cost is infinite): compiled
CPU kernels take seconds to build per shape and are not faster than SDPA there; ``backend="flex"`` still
runs on CPU.

Legend: B batch, Hq query heads, Hkv key/value heads, Q query length, K key length, D head dim.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from veil.attention.registry import Backend, Call, register_backend
from veil.masks import Mask

Tensor = torch.Tensor

_EAGER = threading.local()  # per thread; torch.compile guards on it (see veil.attention.registry)
_COMPILED: list = []  # the compiled flex_attention, built on first use


@contextlib.contextmanager
def uncompiled() -> Iterator[None]:
    """Within this context the ``flex`` backend calls FlexAttention eagerly (no ``torch.compile``)."""
    before = getattr(_EAGER, "on", False)
    _EAGER.on = True
    try:
        yield
    finally:
        _EAGER.on = before


def _kernel():
    from torch.nn.attention.flex_attention import flex_attention

    if getattr(_EAGER, "on", False) or torch.compiler.is_compiling():
        return flex_attention  # inside a compiled region the enclosing graph compiles it
    if not _COMPILED:
        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


def _softcap_mod(cap: float):
    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return cap * torch.tanh(score / cap)

    return score_mod


def flex_backend(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, softcap: float | None) -> Tensor:
    """FlexAttention of q ``[B, Hq, Q, D]`` over k, v ``[B, Hkv, K, D]`` under ``mask``; ``[B, Hq, Q, Dv]``."""
    from torch.nn.attention.flex_attention import AuxRequest

    b, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    block_mask = None
    if mask is not None:
        if torch.compiler.is_compiling():  # built inside the graph: a cache would key on traced tensors
            from veil.masks.flex import create_block_mask_for

            block_mask = create_block_mask_for(mask, b, hq, q_len, kv_len, device=q.device)
        else:
            block_mask = mask.to_block_mask(b, hq, q_len, kv_len, device=q.device)
    # CPU flex (torch 2.13) has no backward, and compiled it cannot return the log-sum-exp; its forward
    # already writes 0 to rows with no key (pinned by tests/attention/test_flex.py).
    want_lse = mask is not None and q.device.type != "cpu"
    if q.device.type == "cpu" and torch.compiler.is_compiling():
        # inductor's CPU flex template (torch 2.13) reads its inputs' buffers as 4-d; a head-split view of a
        # projection is a 3-d buffer there, and lowering fails unless the inputs are materialised
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    res = _kernel()(
        q, k, v,
        score_mod=None if softcap is None else _softcap_mod(float(softcap)),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=hq != k.shape[1],
        return_aux=AuxRequest(lse=True) if want_lse else None,
    )
    if not want_lse:
        return res
    out, aux = res
    seen = torch.isfinite(aux.lse).unsqueeze(-1)  # (B, Hq, Q, 1): False where the row has no key
    return out * seen.to(out.dtype)


def _supports(call: Call) -> str | None:
    if call.q_len == 0 or call.kv_len == 0:
        return "FlexAttention needs Q > 0 and K > 0"
    if (call.device.type == "cpu" and call.mask is not None and call.mask.batch_dependent
            and torch.compiler.is_compiling()):
        # torch 2.13: inductor's CPU flex template emits C++ that does not compile for a mask_mod that indexes a
        # per-sample tensor by the batch index (e.g. ``k < lengths[b]``), when the tensor is a graph input
        return "inside a compiled graph on CPU, masks that depend on the sample fail inductor's flex template"
    return None


def _cost(call: Call) -> float:
    if call.device.type != "cuda":
        return float("inf")  # CPU flex compiles per shape for seconds and is no faster than SDPA: on request only
    dense = call.batch * call.q_heads * call.q_len * call.kv_len * (call.head_dim + 8)
    if call.mask is None:
        return 1.05 * dense  # a maskless flex is a slightly slower flash kernel
    if torch.compiler.is_compiling():
        # the BlockMask is built inside the graph, after the choice: assume the typical half of the blocks kept
        return dense * (1.1 * 0.5 + 0.05)
    # Fully masked blocks are skipped, partial ones computed whole: pay for the blocks the BlockMask keeps
    # (it is cached, so the call that follows reuses it).
    bm = call.mask.to_block_mask(call.batch, call.q_heads, call.q_len, call.kv_len, device=call.device)
    return dense * (1.1 * (1.0 - bm.sparsity() / 100.0) + 0.05)


register_backend(Backend(
    name="flex",
    fn=flex_backend,
    devices=frozenset({"cpu", "cuda"}),
    dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
    grad_devices=frozenset({"cuda"}),
    supports=_supports,
    cost=_cost,
    doc="FlexAttention with a cached BlockMask (torch.compile); skips fully masked blocks; CUDA backward only",
))

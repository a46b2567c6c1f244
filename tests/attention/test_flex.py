"""The ``flex`` backend against the reference: CPU forward (eager and one compiled call); CUDA backward."""

from __future__ import annotations

import warnings

import pytest
import torch

import veil
from veil import masks as M
from veil.attention.backends.flex import uncompiled

B, HQ, HKV, D = 3, 4, 2, 16  # D >= 16: the CUDA flex kernels need it
DOCS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 7, 7, 9, 9], [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]])

CASES = {
    # name: (Q, K, mask)
    "none": (6, 9, None),
    "key_padding": (6, 9, M.key_padding([4, 0, 9])),
    "query_padding_window": (9, 9, M.query_padding([9, 2, 0]) & M.sliding_window(3)),
    "kv_cache_causal_padding": (3, 9, M.causal() & M.key_padding([9, 5, 2])),
    "packed_cross": (7, 10, M.packed([2, 0, 4, 1], [3, 2, 0, 5])),
    "document_causal": (10, 10, M.document(DOCS) & M.causal()),
    # the sparse patterns of 2024-25, lowered to a BlockMask through their predicates
    "sink_window": (10, 10, (M.sink(2) | M.sliding_window(3)) & M.causal()),
    "radial": (12, 12, M.radial((6, 1, 2), min_width=1, sink_frames=1)),
    "window_3d_shift_dilated": (12, 12, M.window_3d((2, 2, 3), (1, 1, 3), dilation=(1, 2, 1), border="shift")),
    "per_head": (12, 12, M.per_head([M.spatial((3, 2, 2)), M.temporal((3, 2, 2))] * 2)),
}


def _inputs(q_len, kv_len, dtype=torch.float32, device="cpu", grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, q_len, D, generator=g).to(device, dtype).requires_grad_(grad)
    k = torch.randn(B, HKV, kv_len, D, generator=g).to(device, dtype).requires_grad_(grad)
    v = torch.randn(B, HKV, kv_len, D, generator=g).to(device, dtype).requires_grad_(grad)
    return q, k, v


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_forward_matches_reference(name, softcap):
    q_len, kv_len, mask = CASES[name]
    q, k, v = _inputs(q_len, kv_len)
    q = q * 4  # large scores so that the cap matters
    with uncompiled():
        out = veil.attend(q, k, v, mask, softcap=softcap, backend="flex")
    ref = veil.attend(q, k, v, mask, softcap=softcap, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_cpu_forward_bf16():
    q_len, kv_len, mask = CASES["document_causal"]
    q, k, v = _inputs(q_len, kv_len, torch.bfloat16)
    with uncompiled():
        out = veil.attend(q, k, v, mask, backend="flex")
    torch.testing.assert_close(out, veil.attend(q, k, v, mask, backend="reference"), atol=2e-2, rtol=2e-2)


def test_cpu_compiled_forward_matches_reference():
    # The one compiled CPU call of the suite (inductor builds the kernel: seconds).
    q_len, kv_len, mask = CASES["packed_cross"]
    q, k, v = _inputs(q_len, kv_len)
    out = veil.attend(q, k, v, mask, softcap=3.0, backend="flex")
    ref = veil.attend(q, k, v, mask, softcap=3.0, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[:, :, 2:6].abs().max() == 0  # the queries of the document with no keys


def test_cpu_capabilities_are_honest():
    q, k, v = _inputs(6, 9, grad=True)
    with pytest.raises(ValueError, match="no backward on cpu"):
        veil.attend(q, k, v, M.key_padding([4, 0, 9]), backend="flex")
    choice = veil.explain(q.detach(), k.detach(), v.detach(), M.causal())
    assert choice.backend != "flex" and choice.reasons["flex"] == "cost inf"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has a backward on CUDA only")
@pytest.mark.parametrize("name", ["key_padding", "packed_cross", "document_causal"])
def test_cuda_forward_and_backward_match_reference(name):
    q_len, kv_len, mask = CASES[name]
    mask = _to_cuda(mask)
    q, k, v = _inputs(q_len, kv_len, device="cuda", grad=True)
    outs = []
    for backend in ("flex", "reference"):
        out = veil.attend(q, k, v, mask, softcap=2.0, backend=backend)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        outs.append((out, torch.autograd.grad((out * w).sum(), (q, k, v))))
    (out, grads), (ref, ref_grads) = outs
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _to_cuda(mask):
    """Rebuild a test mask with its tensors on CUDA."""
    out = []
    for part in M.conjuncts(mask):
        if isinstance(part, M.Packed):
            part = M.packed(part.seqlens.cuda(), part.kv_seqlens.cuda())
        elif isinstance(part, M.Document):
            part = M.document(part.q_ids.cuda(), part.kv_ids.cuda())
        elif isinstance(part, M.KeyPadding):
            part = M.key_padding(part.lengths.cuda())
        out.append(part)
    return M.conjoin(out)

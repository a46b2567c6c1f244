"""The ``varlen`` backend against the reference: forward and q/k/v gradients, and the per-sample contract."""

from __future__ import annotations

import pytest
import torch

import veil
from veil import masks as M

B, HQ, HKV, D = 3, 4, 2, 8
DOCS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 7, 7, 9, 9], [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]])

CASES = {
    # name: (Q, K, mask)
    "key_padding": (6, 9, M.key_padding([4, 0, 9])),
    "key_padding_causal": (9, 9, M.key_padding([4, 0, 9]) & M.causal()),
    "kv_cache_causal": (3, 9, M.causal() & M.key_padding([9, 5, 2])),  # bottom-right w.r.t. the padded K
    "q_longer_causal": (9, 6, M.causal() & M.key_padding([6, 3, 0]) & M.query_padding([9, 7, 9])),  # empty rows
    "query_padding_window": (9, 9, M.query_padding([9, 2, 0]) & M.sliding_window(3)),
    "both_paddings_window": (10, 10, M.key_padding([7, 10, 3]) & M.query_padding([5, 10, 3]) & M.sliding_window(4)),
    "packed_causal": (10, 10, M.packed([3, 4, 3]) & M.causal()),
    "packed_cross": (7, 10, M.packed([2, 0, 4, 1], [3, 2, 0, 5])),  # Q != K, a doc with no keys, one with no queries
    "document_prefix_lm": (10, 10, M.document(DOCS) & M.prefix_lm(4) & M.key_padding([10, 7, 9])),
    "document_window": (10, 10, M.document(DOCS[1]) & M.sliding_window(2)),
    "key_mask_residual": (5, 6, M.query_padding([5, 3, 1]) & M.key_mask(torch.tensor([[1, 0, 1, 1, 0, 1]] * 3).bool())),
}


def _inputs(q_len, kv_len, dtype=torch.float32, hq=HQ, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, hq, q_len, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, HKV, kv_len, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, HKV, kv_len, D, generator=g).to(dtype).requires_grad_()
    return q, k, v


def _run(backend, q, k, v, mask, softcap=None):
    out = veil.attend(q, k, v, mask, backend=backend, softcap=softcap)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    return out, grads


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_fp32(name, softcap):
    q_len, kv_len, mask = CASES[name]
    q, k, v = _inputs(q_len, kv_len)
    if softcap is not None:  # large scores so that the cap matters
        q = (q.detach() * 4).requires_grad_()
    out, grads = _run("varlen", q, k, v, mask, softcap)
    ref, ref_grads = _run("reference", q, k, v, mask, softcap)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_half(dtype):
    q_len, kv_len, mask = CASES["both_paddings_window"]
    q, k, v = _inputs(q_len, kv_len, dtype)
    out, grads = _run("varlen", q, k, v, mask)
    ref, ref_grads = _run("reference", q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)


def test_padded_rows_are_zero_with_zero_grad():
    q, k, v = _inputs(6, 9)
    mask = M.key_padding([4, 0, 9]) & M.query_padding([6, 6, 2])
    out, (gq, gk, gv) = _run("varlen", q, k, v, mask)
    assert out[1].abs().max() == 0 and out[2, :, 2:].abs().max() == 0
    assert gq[1].abs().max() == 0 and gq[2, :, 2:].abs().max() == 0
    assert gk[0, :, 4:].abs().max() == 0 and gv[1].abs().max() == 0 and gk[2].abs().max() > 0


def test_nothing_visible_anywhere_gives_zeros_and_zero_grads():
    # every sample fully padded (found by hypothesis: B=1, key_padding([0])); inf inputs must not become NaN
    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        k[0, 0, 0, 0] = float("inf")
    out = veil.attend(q, k, v, M.key_padding([0]), backend="varlen")
    assert out.shape == (1, 2, 4, 8) and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


def test_each_sample_equals_its_unpadded_tokens_alone():
    # The OpenDiT contract: a sample's valid tokens get the result they would get with no padding at all.
    q_lens, k_lens = [5, 2, 7], [6, 9, 1]
    q, k, v = _inputs(7, 9)
    out = veil.attend(q, k, v, M.query_padding(q_lens) & M.key_padding(k_lens), backend="varlen")
    for b, (ql, kl) in enumerate(zip(q_lens, k_lens)):
        alone = veil.attend(q[b:b + 1, :, :ql], k[b:b + 1, :, :kl], v[b:b + 1, :, :kl], backend="reference")
        torch.testing.assert_close(out[b:b + 1, :, :ql], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_each_packed_document_equals_itself_alone(causal):
    seqlens, kv_seqlens = [3, 4, 3], ([3, 4, 3] if causal else [1, 6, 2])
    q, k, v = _inputs(10, sum(kv_seqlens))
    mask = M.packed(seqlens, kv_seqlens) & M.causal() if causal else M.packed(seqlens, kv_seqlens)
    out = veil.attend(q, k, v, mask, backend="varlen")
    q0 = k0 = 0
    for ql, kl in zip(seqlens, kv_seqlens):
        alone = veil.attend(q[:, :, q0:q0 + ql], k[:, :, k0:k0 + kl], v[:, :, k0:k0 + kl],
                            M.causal() if causal else None, backend="reference")
        torch.testing.assert_close(out[:, :, q0:q0 + ql], alone, atol=1e-5, rtol=1e-5)
        q0, k0 = q0 + ql, k0 + kl


def test_explain_picks_varlen_for_a_heavily_padded_batch():
    q = torch.randn(4, 4, 256, 32)
    heavy = M.key_padding([16, 40, 8, 256]) & M.query_padding([16, 40, 8, 256])
    assert veil.explain(q, q, q, heavy).backend == "varlen"
    # without real padding on short sequences varlen's gather / scatter and per-segment calls cost more than the
    # masked sdpa call saves (8 x 128 tokens, 2 cores: 1.98 ms against 1.73)
    short = torch.randn(8, 4, 128, 48)
    assert veil.explain(short, short, short, M.key_padding([128] * 8)).backend != "varlen"


def test_refuses_masks_without_structure():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="varlen"):
        veil.attend(q, q, q, M.causal(), backend="varlen")
    ids = torch.tensor([0, 0, 1, 0])  # document 0 is two runs
    with pytest.raises(ValueError, match="contiguous"):
        veil.attend(q, q, q, M.document(ids), backend="varlen")

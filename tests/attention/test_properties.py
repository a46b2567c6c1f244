"""Every registered backend against ``backend="reference"`` on random masks and shapes; NaN safety; choice.

Legend: B batch, Hq query heads, Hkv key/value heads, Q query length, K key length, D head dim.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import veil
import veil.masks as M
from tests.masks.strategies import compose, sequence_mask
from veil.attention import Backend, Call, get_backend, list_backends
from veil.attention import registry as registry_module
from veil.attention.registry import active_backend


def capable_backends(q, k, v, mask, softcap=None, *, include_reference=False) -> list[str]:
    """Registered backends that can run this call (``flex`` is left out on CPU: its compile is slow)."""
    call = Call.of(q, k, v, mask, softcap)
    names = []
    for name in list_backends():
        if name == "reference" and not include_reference:
            continue
        if name == "flex" and call.device.type == "cpu":
            continue
        if get_backend(name).why_not(call) is None:
            names.append(name)
    return names


def run(q, k, v, mask, backend, *, softcap=None, scale=None, seed=0):
    """Forward and backward through ``attend``; returns (out, dq, dk, dv) with a random output gradient."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = veil.attend(q, k, v, mask, backend=backend, softcap=softcap, scale=scale)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g).to(out.dtype)
    dq, dk, dv = torch.autograd.grad((out * w).float().sum(), (q, k, v))
    return out.detach(), dq, dk, dv


def assert_same(got, want, label: str) -> None:
    """fp32: out, dq, dk, dv equal to the reference's up to rounding."""
    for what, x, y in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=2e-5, msg=lambda m, w=what: f"{label} {w}: {m}")


# ---------------------------------------------------------------------------------------------------- parity


@st.composite
def attention_case(draw):
    b = draw(st.integers(1, 3))
    hq = draw(st.sampled_from([2, 4]))
    hkv = draw(st.sampled_from([h for h in (1, 2, 4) if hq % h == 0]))
    q_len, kv_len = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    d = draw(st.sampled_from([4, 8]))
    mask = draw(st.one_of(st.none(), compose(sequence_mask(b, q_len, kv_len), max_leaves=3)))
    softcap = draw(st.sampled_from([None, None, None, 2.0]))
    scale = draw(st.sampled_from([None, None, 0.7]))
    seed = draw(st.integers(0, 2**31 - 1))
    return b, hq, hkv, q_len, kv_len, d, mask, softcap, scale, seed


@settings(max_examples=40, deadline=None)
@given(case=attention_case())
def test_every_backend_matches_the_reference(case):
    b, hq, hkv, q_len, kv_len, d, mask, softcap, scale, seed = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, q_len, d, generator=g)
    k = torch.randn(b, hkv, kv_len, d, generator=g)
    v = torch.randn(b, hkv, kv_len, d, generator=g)
    want = run(q, k, v, mask, "reference", softcap=softcap, scale=scale, seed=seed)
    needs_grad = q.clone().requires_grad_(True)
    for name in capable_backends(needs_grad, k, v, mask, softcap):
        got = run(q, k, v, mask, name, softcap=softcap, scale=scale, seed=seed)
        assert_same(got, want, f"{name} {mask!r}")


def single_masks(b, q_len, kv_len):
    lengths = torch.arange(b) % (kv_len + 1)
    return [
        None,
        M.full(),
        M.causal(),
        M.sliding_window(2),
        M.sliding_window(2, causal=False),
        M.key_padding(lengths),
        M.query_padding(torch.arange(b) % (q_len + 1)),
        M.prefix_lm(2),
        M.chunked(2),
        M.causal() & M.key_padding(lengths),
        ~M.causal(),
    ]


@pytest.mark.parametrize("q_len,kv_len", [(4, 4), (3, 6), (6, 3), (1, 5)])
def test_every_backend_matches_the_reference_on_each_mask(q_len, kv_len):
    # the special cases a backend may take (no mask, is_causal, one decoding query), for Q == K and Q != K
    g = torch.Generator().manual_seed(q_len * 10 + kv_len)
    q = torch.randn(2, 4, q_len, 8, generator=g)
    k, v = torch.randn(2, 2, kv_len, 8, generator=g), torch.randn(2, 2, kv_len, 8, generator=g)
    for mask in single_masks(2, q_len, kv_len):
        want = run(q, k, v, mask, "reference")
        for name in capable_backends(q.clone().requires_grad_(True), k, v, mask):
            got = run(q, k, v, mask, name)
            assert_same(got, want, f"{name} {mask!r}")


def test_reference_is_plain_softmax_attention():
    # the oracle itself against a hand-written formula, GQA and a key padding
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 3, 8, generator=g)
    k, v = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 6, generator=g)
    lengths = torch.tensor([2, 5])
    out = veil.attend(q, k, v, M.key_padding(lengths), backend="reference")
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # (B, Hq, K, D)
    for bi in range(2):
        n = int(lengths[bi])
        p = torch.softmax(q[bi] @ kk[bi, :, :n].transpose(-1, -2) / 8**0.5, dim=-1)
        torch.testing.assert_close(out[bi], p @ vv[bi, :, :n])


# ---------------------------------------------------------------------------------------------------- NaN safety
# Each case: mask, (B, Q, K), and by hand the [B, Q] rows that see no key and the [B, K] keys no query sees.

EMPTY_CASES = {
    "query_padding": (
        M.query_padding(torch.tensor([2, 0])), (2, 4, 5),
        [[0, 0, 1, 1], [1, 1, 1, 1]], [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
    ),
    "key_padding": (
        M.key_padding(torch.tensor([0, 3])), (2, 4, 5),
        [[1, 1, 1, 1], [0, 0, 0, 0]], [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]],
    ),
    "causal_q_gt_k": (M.causal(), (1, 5, 3), [[1, 1, 0, 0, 0]], [[0, 0, 0]]),
    "nothing": (M.causal() & ~M.causal(), (2, 3, 3), [[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]]),
    "key_mask": (
        M.key_mask(torch.tensor([[False, False, False], [True, False, True]])) & M.causal(), (2, 3, 3),
        [[1, 1, 1], [0, 0, 0]], [[1, 1, 1], [0, 1, 0]],
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_rows_that_see_no_key_are_exactly_zero_with_zero_grad(case, dtype):
    mask, (b, q_len, kv_len), empty_rows, unseen_keys = EMPTY_CASES[case]
    empty_rows = torch.tensor(empty_rows, dtype=torch.bool)[:, None, :, None]  # (B, 1, Q, 1)
    unseen_keys = torch.tensor(unseen_keys, dtype=torch.bool)[:, None, :, None]  # (B, 1, K, 1)
    g = torch.Generator().manual_seed(1)
    # large values: a backend that let a masked score through would show it
    q = (4 * torch.randn(b, 4, q_len, 8, generator=g)).to(dtype)
    k = (4 * torch.randn(b, 2, kv_len, 8, generator=g)).to(dtype)
    v = torch.randn(b, 2, kv_len, 8, generator=g).to(dtype)
    names = capable_backends(q.clone().requires_grad_(True), k, v, mask, include_reference=True)
    assert "reference" in names
    for name in names:
        out, dq, dk, dv = run(q, k, v, mask, name)
        for what, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
            assert not t.isnan().any() and not t.isinf().any(), f"{name} {what} not finite ({dtype})"
        assert out.dtype == dtype
        assert (out.masked_select(empty_rows.expand_as(out)) == 0).all(), f"{name}: output of empty rows"
        assert (dq.masked_select(empty_rows.expand_as(dq)) == 0).all(), f"{name}: dq of empty rows"
        assert (dk.masked_select(unseen_keys.expand_as(dk)) == 0).all(), f"{name}: dk of unseen keys"
        assert (dv.masked_select(unseen_keys.expand_as(dv)) == 0).all(), f"{name}: dv of unseen keys"
        # and the rows that do see keys are not zero (the test would pass for a backend returning zeros)
        assert (out.masked_select(~empty_rows.expand_as(out)) != 0).any() or bool(empty_rows.all())


# ---------------------------------------------------------------------------------------------------- choosing


@pytest.fixture
def spy(monkeypatch):
    """A backend ``spy`` (only on request) that counts its calls and computes like the reference."""
    calls = []
    ref = get_backend("reference")

    def fn(q, k, v, mask, scale, softcap):
        calls.append(q.shape)
        return ref.fn(q, k, v, mask, scale, softcap)

    be = Backend(name="spy", fn=fn, devices=frozenset({"cpu"}), dtypes=ref.dtypes, grad_devices=frozenset({"cpu"}),
                 supports=lambda call: None, cost=lambda call: 0.0, auto=False)
    monkeypatch.setitem(registry_module._REGISTRY, "spy", be)
    return calls


def small():
    g = torch.Generator().manual_seed(2)
    return tuple(torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))


def test_use_backend_sets_auto_and_restores_the_previous_choice(spy):
    q, k, v = small()
    assert active_backend() is None
    veil.attend(q, k, v)
    assert len(spy) == 0  # only on request: auto never picks it
    with veil.use_backend("spy"):
        veil.attend(q, k, v)
        assert len(spy) == 1
        with veil.use_backend("reference"):
            veil.attend(q, k, v)
            assert len(spy) == 1 and veil.explain(q, k, v).backend == "reference"
        assert active_backend() == "spy"
        veil.attend(q, k, v, M.causal())
        assert len(spy) == 2
        # an explicit argument wins over the context
        veil.attend(q, k, v, backend="reference")
        assert len(spy) == 2
        assert veil.explain(q, k, v, backend="sdpa").backend == "sdpa"
    assert active_backend() is None
    veil.attend(q, k, v)
    assert len(spy) == 2


def test_use_backend_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with veil.use_backend("reference"):
            raise RuntimeError("boom")
    assert active_backend() is None


def _costs(choice) -> dict[str, float]:
    return {n: float(r.split()[1]) for n, r in choice.reasons.items() if r.startswith("cost ")}


def test_explain_names_every_backend_and_picks_the_cheapest(spy):
    q, k, v = small()
    choice = veil.explain(q, k, v, M.causal())
    assert set(choice.reasons) == set(list_backends()) and "spy" in choice.reasons
    assert choice.reasons["spy"] == "no: only on request"
    costs = _costs(choice)
    assert "reference" in costs and "sdpa" in costs
    assert costs[choice.backend] == min(costs.values())
    text = str(choice).splitlines()
    assert text[0] == f"chosen: {choice.backend}"
    assert len(text) == 1 + len(choice.reasons)
    assert any(line.split()[0] == "spy" and "only on request" in line for line in text[1:])


def test_explain_says_why_a_backend_was_skipped():
    q, k, v = small()
    choice = veil.explain(q, k, v, softcap=20.0)
    assert choice.reasons["sdpa"].startswith("no:") and "softcap" in choice.reasons["sdpa"]
    assert choice.backend != "sdpa"
    assert veil.explain(q, k, v, softcap=20.0, backend="reference").backend == "reference"
    # what explain picks is what attend runs
    torch.testing.assert_close(veil.attend(q, k, v, softcap=20.0),
                               veil.attend(q, k, v, softcap=20.0, backend=choice.backend))


def test_explain_validates_its_inputs():
    q, k, v = small()
    with pytest.raises(TypeError, match="mask"):
        veil.explain(q, k, v, torch.ones(3, 3, dtype=torch.bool))

"""Bad input raises ValueError / TypeError naming the argument, at mask construction, lowering and attend()."""

import re

import pytest
import torch

import veil
import veil.masks as M


def raises(err, name, fn):
    """``fn()`` raises ``err`` whose message starts by naming the argument ``name``."""
    with pytest.raises(err) as info:
        fn()
    assert str(info.value).startswith(name), f"message does not name {name!r}: {info.value}"
    return str(info.value)


# ---------------------------------------------------------------------------------------------------- constructors


def test_window():
    assert "0" in raises(ValueError, "window", lambda: M.sliding_window(0))
    raises(ValueError, "window", lambda: M.sliding_window(-3))
    assert "float" in raises(TypeError, "window", lambda: M.sliding_window(2.0))
    raises(TypeError, "window", lambda: M.sliding_window(True))
    raises(TypeError, "window", lambda: M.sliding_window("64"))


def test_other_ints():
    raises(ValueError, "size", lambda: M.chunked(0))
    raises(TypeError, "size", lambda: M.chunked(2.5))
    raises(ValueError, "prefix_len", lambda: M.prefix_lm(-1))
    raises(TypeError, "prefix_len", lambda: M.prefix_lm(1.5))


@pytest.mark.parametrize("ctor", [M.key_padding, M.query_padding])
def test_lengths_at_construction(ctor):
    assert "float32" in raises(TypeError, "lengths", lambda: ctor(torch.tensor([1.0, 2.0])))
    raises(TypeError, "lengths", lambda: ctor([1.5]))  # never silently truncated to 1
    raises(TypeError, "lengths", lambda: ctor(torch.tensor([True])))
    raises(TypeError, "lengths", lambda: ctor(3))
    assert "[2, 1]" in raises(ValueError, "lengths", lambda: ctor(torch.tensor([[1], [2]])))
    assert "-1" in raises(ValueError, "lengths", lambda: ctor(torch.tensor([2, -1])))


def test_lengths_at_lowering():
    kp, qp = M.key_padding(torch.tensor([1, 4])), M.query_padding(torch.tensor([1, 4]))
    assert "[3]" in raises(ValueError, "lengths", lambda: kp.to_bool(3, 1, 4, 4))  # B mismatch
    assert "4" in raises(ValueError, "lengths", lambda: kp.to_bool(2, 1, 4, 3))  # lengths > K
    raises(ValueError, "lengths", lambda: qp.to_bool(2, 1, 3, 4))  # lengths > Q
    raises(ValueError, "prefix_len", lambda: M.prefix_lm(torch.tensor([1, 2])).to_bool(3, 1, 4, 4))


def test_key_mask():
    raises(TypeError, "keep", lambda: M.key_mask(torch.ones(2, 3)))
    raises(TypeError, "keep", lambda: M.key_mask([[True, False]]))
    raises(ValueError, "keep", lambda: M.key_mask(torch.ones(3, dtype=torch.bool)))
    keep = M.key_mask(torch.ones(2, 3, dtype=torch.bool))
    assert "[2, 4]" in raises(ValueError, "keep", lambda: keep.to_bool(2, 1, 3, 4))
    raises(ValueError, "keep", lambda: keep.to_bool(1, 1, 3, 3))


def test_document_and_packed():
    raises(TypeError, "ids", lambda: M.document(torch.tensor([0.0, 1.0])))
    raises(TypeError, "kv_ids", lambda: M.document(torch.tensor([0, 1]), torch.tensor([True, False])))
    raises(ValueError, "ids", lambda: M.document(torch.zeros(1, 1, 2, dtype=torch.long)))
    raises(ValueError, "ids", lambda: M.document(torch.tensor([0, 0, 1])).to_bool(1, 1, 4, 4))
    raises(ValueError, "kv_ids", lambda: M.document(torch.tensor([0, 1]), torch.tensor([0, 1])).to_bool(1, 1, 2, 3))
    raises(ValueError, "ids", lambda: M.document(torch.tensor([[0, 1]])).to_bool(2, 1, 2, 2))
    raises(ValueError, "seqlens", lambda: M.packed([2, 1]).to_bool(1, 1, 4, 4))
    raises(ValueError, "kv_seqlens", lambda: M.packed([2, 1], [1, 1]).to_bool(1, 1, 3, 3))
    raises(ValueError, "kv_seqlens", lambda: M.packed([2, 1], [1, 1, 1]))
    raises(ValueError, "seqlens", lambda: M.packed([2, -1]))


def test_grids():
    assert "Q=7" in raises(ValueError, "grid", lambda: M.spatial((2, 2, 2)).to_bool(1, 1, 7, 7))
    raises(ValueError, "grid", lambda: M.temporal((2, 2, 2)).to_bool(1, 1, 8, 7))
    raises(ValueError, "grid", lambda: M.window_3d((2, 2, 2), (1, 1, 1)).to_bool(1, 1, 4, 4))
    raises(ValueError, "grid", lambda: M.tile_window((1, 2, 2), (1, 1, 1), (1, 1, 1)).to_bool(1, 1, 5, 5))
    raises(TypeError, "grid", lambda: M.spatial((1, 4)))
    raises(TypeError, "grid", lambda: M.spatial((1.0, 2, 4)))
    raises(ValueError, "grid", lambda: M.frame_causal((1, 0, 4)))
    raises(TypeError, "grid", lambda: M.frame_causal(8))


def test_tiles_and_windows():
    assert "(1, 3, 3)" in raises(ValueError, "tile", lambda: M.tile_window((1, 4, 4), (1, 3, 3), (1, 1, 1)))
    raises(ValueError, "tile", lambda: M.tile_permutation((1, 4, 4), (1, 3, 2)))
    raises(ValueError, "window", lambda: M.tile_window((1, 4, 4), (1, 2, 2), (1, 3, 1)))
    raises(ValueError, "order", lambda: M.tile_window((1, 4, 4), (1, 2, 2), (1, 1, 1), order="zigzag"))
    assert "(1, 2, 3)" in raises(ValueError, "window", lambda: M.window_3d((1, 4, 4), (1, 2, 3)))
    raises(ValueError, "window", lambda: M.window_3d((1, 4, 4), (1, 0, 3)))
    raises(TypeError, "window", lambda: M.window_3d((1, 4, 4), 3))


def test_composing_with_a_non_mask():
    with pytest.raises(TypeError, match="Mask"):
        M.causal() & torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(TypeError, match="Mask"):
        M.causal() | 1


# ---------------------------------------------------------------------------------------------------- devices
# A mask's tensors must live on the attention's device. No GPU here: "meta" stands for another device.


def test_mask_tensor_on_another_device_at_lowering():
    raises(ValueError, "lengths", lambda: M.key_padding(torch.tensor([1, 2])).to_bool(2, 1, 3, 3, device="meta"))
    keep = M.key_mask(torch.ones(2, 3, dtype=torch.bool, device="meta"))
    assert "meta" in raises(ValueError, "keep", lambda: keep.to_bool(2, 1, 3, 3, device="cpu"))


@pytest.mark.parametrize(
    "mask,name",
    [
        (M.key_padding(torch.tensor([1, 2])), "lengths"),
        (M.causal() & M.query_padding(torch.tensor([1, 2])), "lengths"),
        (M.key_mask(torch.ones(2, 3, dtype=torch.bool)), "keep"),
        (M.document(torch.tensor([0, 0, 1])), "ids"),
        (M.prefix_lm(torch.tensor([0, 1])), "prefix_len"),
    ],
    ids=repr,
)
def test_mask_tensor_on_another_device_at_attend(mask, name):
    q = torch.zeros(2, 2, 3, 4, device="meta")
    assert "meta" in raises(ValueError, name, lambda: veil.attend(q, q, q, mask))


def test_no_backend_for_the_device_is_a_value_error():
    q = torch.zeros(1, 1, 2, 4, device="meta")
    with pytest.raises(ValueError, match="backend"):
        veil.attend(q, q, q)


# ---------------------------------------------------------------------------------------------------- attend()

B, HQ, HKV, Q, K, D = 2, 4, 2, 3, 5, 8


def qkv(**shapes):
    q = torch.zeros(shapes.get("q", (B, HQ, Q, D)))
    k = torch.zeros(shapes.get("k", (B, HKV, K, D)))
    v = torch.zeros(shapes.get("v", (B, HKV, K, D)))
    return q, k, v


def test_attend_heads_not_divisible():
    q, k, v = qkv(k=(B, 3, K, D), v=(B, 3, K, D))
    assert "4" in raises(ValueError, "k", lambda: veil.attend(q, k, v))


def test_attend_mismatched_shapes():
    q, k, v = qkv(k=(1, HKV, K, D), v=(1, HKV, K, D))
    raises(ValueError, "k, v", lambda: veil.attend(q, k, v))  # batch
    q, k, v = qkv(k=(B, HKV, K, 4))
    assert "head dim 8" in raises(ValueError, "k", lambda: veil.attend(q, k, v))
    q, k, v = qkv(v=(B, HKV, K + 1, D))
    raises(ValueError, "v", lambda: veil.attend(q, k, v))  # K
    q, k, v = qkv(v=(B, 1, K, D))
    raises(ValueError, "v", lambda: veil.attend(q, k, v))  # Hkv
    q, k, v = qkv(q=(HQ, Q, D))
    raises(ValueError, "q", lambda: veil.attend(q, k, v))  # rank


def test_attend_non_tensor_inputs():
    q, k, v = qkv()
    assert "ndarray" in raises(TypeError, "q", lambda: veil.attend(q.numpy(), k, v))
    raises(TypeError, "k", lambda: veil.attend(q, k.tolist(), v))
    raises(TypeError, "v", lambda: veil.attend(q, k, None))


def test_attend_dtypes():
    q, k, v = qkv()
    raises(TypeError, "q", lambda: veil.attend(q.long(), k.long(), v.long()))
    assert "float16" in raises(TypeError, "k, v", lambda: veil.attend(q, k.half(), v))
    raises(TypeError, "k, v", lambda: veil.attend(q, k, v.to(torch.bfloat16)))


def test_attend_raw_tensor_as_mask():
    q, k, v = qkv()
    msg = raises(TypeError, "mask", lambda: veil.attend(q, k, v, torch.ones(Q, K, dtype=torch.bool)))
    assert "key_mask" in msg  # says how to build one


def test_attend_mask_that_does_not_fit():
    q, k, v = qkv()
    raises(ValueError, "lengths", lambda: veil.attend(q, k, v, M.key_padding(torch.tensor([1, 2, 3]))))
    raises(ValueError, "lengths", lambda: veil.attend(q, k, v, M.key_padding(torch.tensor([1, K + 1]))))
    raises(ValueError, "grid", lambda: veil.attend(q, k, v, M.spatial((1, 1, 3))))


def test_attend_scale_and_softcap():
    q, k, v = qkv()
    raises(ValueError, "scale", lambda: veil.attend(q, k, v, scale=0))
    raises(ValueError, "scale", lambda: veil.attend(q, k, v, scale=-1.0))
    raises(ValueError, "softcap", lambda: veil.attend(q, k, v, softcap=-5.0))
    raises(ValueError, "softcap", lambda: veil.attend(q, k, v, softcap="50"))


def test_attend_unknown_backend():
    q, k, v = qkv()
    msg = raises(ValueError, "backend", lambda: veil.attend(q, k, v, backend="nope"))
    assert "'nope'" in msg and "reference" in msg  # lists the registered ones
    raises(TypeError, "backend", lambda: veil.attend(q, k, v, backend=3))
    with pytest.raises(ValueError, match=re.escape("'nope'")):
        with veil.use_backend("nope"):
            pass


def test_attend_backend_that_cannot_run_the_call():
    q, k, v = qkv()
    msg = raises(ValueError, "backend", lambda: veil.attend(q, k, v, softcap=30.0, backend="sdpa"))
    assert "'sdpa'" in msg and "softcap" in msg

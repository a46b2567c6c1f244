"""Each constructor pinned by a literal 0/1 matrix at a small size."""

import torch

import veil.masks as M


def mat(m, q, k, b=1, h=1):
    return m.to_bool(b, h, q, k).int()


def T(rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_causal_square_and_kv_cache():
    assert torch.equal(mat(M.causal(), 3, 3)[0, 0], T([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))
    # K > Q: bottom-right aligned (the two new queries are the last two positions)
    assert torch.equal(mat(M.causal(), 2, 4)[0, 0], T([[1, 1, 1, 0], [1, 1, 1, 1]]))


def test_sliding_window_counts_window_keys_including_self():
    assert torch.equal(
        mat(M.sliding_window(2), 4, 4)[0, 0], T([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    )

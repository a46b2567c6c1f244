"""``tiles`` on several CPU threads: the sliding-window forward spread over single-threaded workers is exact."""

import pytest
import torch

import veil
import veil.masks as M
from veil.attention.backends import workers


@pytest.fixture
def two_threads(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(workers, "MIN_WORK", 0.0)  # hand out every call, however small
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("window, causal, q_len, kv_len, heads, kv_heads", [
    (16, True, 203, 203, 4, 4),  # the last block padded; the first blocks' keys gathered (edge blocks)
    (16, False, 150, 150, 4, 2),  # both sides of the window, grouped-query heads
    (8, True, 37, 300, 2, 2),  # fewer queries than keys: queries align to the end of the keys
])
def test_sliding_window_forward_on_workers_equals_reference(two_threads, window, causal, q_len, kv_len, heads,
                                                              kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, q_len, 16, generator=g)
    k, v = (torch.randn(2, kv_heads, kv_len, 16, generator=g) for _ in range(2))
    mask = M.sliding_window(window, causal=causal)
    want = veil.attend(q, k, v, mask, backend="reference")
    with torch.no_grad():
        got = veil.attend(q, k, v, mask, backend="tiles")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the output is an inference tensor: the workers write it in inference mode too
        torch.testing.assert_close(veil.attend(q, k, v, mask, backend="tiles"), want, rtol=1e-5, atol=1e-5)
    # with gradients the forward runs on the workers and the backward in the caller's thread
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = veil.attend(qg, kg, vg, mask, backend="tiles")
    out.square().sum().backward()
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    veil.attend(qr, kr, vr, mask, backend="reference").square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in ((qg, qr), (kg, kr), (vg, vr)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    assert torch.get_num_threads() == 2  # the workers' one-thread setting is theirs alone
    if workers._openmp() is not None and workers._mkl() is not None:
        assert workers._POOL is not None and workers._POOL[0] == 2  # the workers ran the blocks


def test_jobs_run_in_order_in_the_caller_without_workers():
    seen = []
    workers.run_jobs([lambda i=i: seen.append(i) for i in range(4)], 1)
    assert seen == [0, 1, 2, 3]
    assert workers.parallel_workers(torch.device("meta"), 1e12) == 1


def test_a_failing_job_raises_in_the_caller(two_threads):
    if workers._openmp() is None or workers._mkl() is None:
        pytest.skip("no OpenMP runtime and MKL to give the workers one thread each")

    def boom():
        raise RuntimeError("job failed")
    with pytest.raises(RuntimeError, match="job failed"):
        workers.run_jobs([lambda: None, boom], 2)


@pytest.mark.parametrize("mask_fn", [
    lambda: M.window_3d((3, 6, 6), (3, 3, 3)),
    lambda: M.tile_window((4, 6, 6), (1, 2, 2), (3, 1, 3)),
    lambda: M.window_3d((3, 6, 6), (3, 3, 3), border="shift") & M.key_padding(torch.tensor([108, 70])),
])
def test_gathered_blocks_forward_on_workers_equals_reference(two_threads, monkeypatch, mask_fn):
    from veil.attention.backends import tiles

    handed = []

    def spy(jobs, n):
        handed.append((len(jobs), n))
        return workers.run_jobs(jobs, n)

    monkeypatch.setattr(tiles, "run_jobs", spy)
    mask = mask_fn()
    n = 108 if "window_3d" in repr(mask) else 144
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for _ in range(3))
    want = veil.attend(q, k, v, mask, backend="reference")
    with torch.no_grad():
        # a small group budget: several groups of blocks, shared out over the two workers
        got = tiles.tiles_attention(q, k, v, mask, 16 ** -0.5, None, group_bytes=4096)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(veil.attend(q, k, v, mask, backend="tiles"), want, rtol=1e-5, atol=1e-5)
    assert handed and all(n_ == 2 for _, n_ in handed) and handed[0][0] > 1
    handed.clear()
    qg = q.clone().requires_grad_()
    out = veil.attend(qg, k, v, mask, backend="tiles")  # with gradients the groups stay in the caller's thread
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert all(n_ == 1 for _, n_ in handed)

"""Sequence-parallel attention under 2 and 4 gloo processes equals one process, forward and backward.

Each worker builds the same full inputs on every rank, runs the oracle (the reference backend over the whole
sequence, one process's result) and the sequence-parallel call on its shard, and returns the largest
differences of the output and of the gradients of its rows. Every case runs twice in the same processes: a
backward whose collectives pair up wrongly across ranks tends to differ from call to call.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import veil
import veil.distributed as vd
import veil.masks as M

TOL = 1e-5


def _self_masks() -> list[tuple[str, int, M.Mask | None]]:
    """(name, sequence length, global mask) for self-attention; lengths that do not divide by 2 or 4."""
    g15 = (5, 1, 3)  # 15 tokens
    return [
        ("full", 23, None),
        ("causal", 23, M.causal()),
        ("sliding_window", 23, M.sliding_window(5)),
        ("sliding_window_sym", 23, M.sliding_window(3, causal=False)),
        ("padded_causal", 23, M.key_padding(torch.tensor([23, 9])) & M.causal()),
        ("query_padding", 23, M.query_padding(torch.tensor([4, 23]))),
        ("packed_causal", 23, M.packed([9, 1, 13]) & M.causal()),
        ("document", 23, M.document(torch.tensor([0] * 6 + [1] * 10 + [2] * 7))),
        ("spatial", 15, M.spatial(g15)),
        ("temporal", 15, M.temporal(g15)),
        ("frame_causal", 15, M.frame_causal(g15)),
        ("window_3d", 15, M.window_3d(g15, (3, 1, 3))),
        ("tile_window", 16, M.tile_window((4, 2, 2), (1, 2, 1), (3, 1, 1))),
    ]


def _inputs(b, hq, hkv, n, m, d=8, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in ((b, hq, n, d), (b, hkv, m, d), (b, hkv, m, dv), (b, hq, n, dv))]


def _compare(q, k, v, w, mask, kv_sharded=True, **mode) -> tuple[float, float, float, float]:
    """Largest |difference| of this rank's output rows and of its q, k, v gradient rows against one process."""
    qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
    ref = veil.attend(qf, kf, vf, mask, backend="reference")
    (ref * w).sum().backward()
    layout = mode.get("layout", "contiguous")

    def shard(t):
        return vd.shard(t, 2, layout=layout)

    qs = shard(q).clone().requires_grad_()
    ks, vs = ((shard(t) if kv_sharded else t).clone().requires_grad_() for t in (k, v))
    out = vd.attend(qs, ks, vs, mask, kv_sharded=kv_sharded, **mode)
    (out * shard(w)).sum().backward()
    # this rank's rows of the one-process gradients; replicated k, v: the gradient summed over the ranks
    dk, dv = ks.grad, vs.grad
    if kv_sharded:
        want_dk, want_dv = shard(kf.grad), shard(vf.grad)
    else:
        both = torch.cat([dk.flatten(), dv.flatten()])
        dist.all_reduce(both)
        dk, dv = both[:dk.numel()].view_as(dk), both[dk.numel():].view_as(dv)
        want_dk, want_dv = kf.grad, vf.grad
    out = out.detach()
    return (float((out - shard(ref.detach())).abs().max()) if out.numel() else 0.0,
            float((qs.grad - shard(qf.grad)).abs().max()) if qs.numel() else 0.0,
            float((dk - want_dk).abs().max()) if dk.numel() else 0.0,
            float((dv - want_dv).abs().max()) if dv.numel() else 0.0)


def _modes(size: int) -> list[dict]:
    modes = [dict(ulysses=size), dict(ring=size), dict(ring=size, layout="zigzag")]
    if size == 4:
        modes += [dict(ulysses=2, ring=2), dict(ulysses=2, ring=2, layout="zigzag")]
    return modes


def worker_masks(heads: list[tuple[int, int, int]]) -> dict[str, tuple[float, ...]]:
    """``heads``: (query heads, key/value heads, value head dim); a value head dim of 8 (= the query's) takes the
    fused CPU kernel in ring steps, 6 the row-blocked math."""
    size = dist.get_world_size()
    worst: dict[str, tuple[float, ...]] = {}
    for _repeat in range(2):
        for hq, hkv, dv in heads:
            for mode in _modes(size):
                for name, n, mask in _self_masks():
                    q, k, v, w = _inputs(2, hq, hkv, n, n, dv=dv)
                    key = f"{name} {mode} heads={hq}/{hkv} dv={dv}"
                    diffs = _compare(q, k, v, w, mask, **mode)
                    worst[key] = tuple(max(a, b) for a, b in zip(diffs, worst.get(key, diffs)))
        # the global lengths given and the agreement check skipped: the same results, no host sync
        for name, n, mask in _self_masks()[:4]:
            q, k, v, w = _inputs(2, 4, 2, n, n)
            worst[f"{name} lengths given, check=False"] = _compare(q, k, v, w, mask, lengths=(n, n), check=False,
                                                                    ring=size)
        if size == 4:  # hybrid through a 2D DeviceMesh ("ring", "ulysses"): shard i = ring rank * 2 + ulysses rank
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("ring", "ulysses"))
            for name, n, mask in _self_masks():
                q, k, v, w = _inputs(2, 4, 2, n, n)
                worst[f"{name} mesh"] = _compare(q, k, v, w, mask, group=mesh)
        # cross-attention: video queries sharded, padded text replicated on every rank
        lengths = torch.tensor([7, 2])
        for mask in (M.key_padding(lengths), M.key_padding(lengths) & M.query_padding(torch.tensor([23, 10]))):
            for layout in vd.LAYOUTS:
                q, k, v, w = _inputs(2, 4, 2, 23, 9, seed=3)
                worst[f"cross {mask!r} {layout}"] = _compare(q, k, v, w, mask, kv_sharded=False, layout=layout)
    return worst


def _assert_exact(results: list[dict[str, tuple[float, ...]]]):
    assert len(results) >= 2
    for rank, res in enumerate(results):
        assert res, "no case ran"
        for key, diffs in res.items():
            assert max(diffs) <= TOL, f"rank {rank}: {key}: out/dq/dk/dv differ by {diffs}"


def test_two_processes_equal_one_for_every_mask_ulysses_and_ring():
    results = vd.spawn(worker_masks, 2, [(4, 2, 6), (2, 1, 8)], timeout=300)
    _assert_exact(results)
    assert len(results[0]) == 2 * 3 * len(_self_masks()) + 4 + 4


def test_four_processes_equal_one_for_every_mask_ulysses_ring_and_hybrid():
    # (4, 1): Ulysses 4 with one key/value head, replicated to every rank; (4, 2): two ranks share each
    results = vd.spawn(worker_masks, 4, [(4, 2, 8), (4, 1, 6)], timeout=420)
    _assert_exact(results)
    assert len(results[0]) == 2 * 5 * len(_self_masks()) + 4 + 4 + len(_self_masks())


def worker_errors() -> list[str]:
    rank = dist.get_rank()
    q, k, v, _ = _inputs(1, 4, 2, 10, 10)
    qs, ks, vs = (vd.shard(t, 2) for t in (q, k, v))
    calls = {
        "heads": lambda: vd.attend(qs[:, :3], ks[:, :1], vs[:, :1], ulysses=2),
        "mask disagrees": lambda: vd.attend(qs, ks, vs, M.causal() if rank == 0 else M.sliding_window(3)),
        "mask tensors disagree": lambda: vd.attend(qs, ks, vs, M.key_padding(torch.tensor([3 + rank]))),
        "head dim disagrees": lambda: vd.attend(qs[..., : 8 - rank], ks[..., : 8 - rank], vs),
        "not the layout": lambda: vd.attend(q[:, :, : 4 + 2 * rank], k[:, :, : 4 + 2 * rank],
                                            v[:, :, : 4 + 2 * rank]),
        "mask does not fit": lambda: vd.attend(qs, ks, vs, M.key_padding(torch.tensor([11]))),
        "one rank's bad input": lambda: vd.attend(qs if rank == 0 else qs.long(), ks, vs),
        "degrees": lambda: vd.attend(qs, ks, vs, ulysses=2, ring=2),
        "lengths": lambda: vd.attend(qs, ks, vs, lengths=(12, 10)),
        "lengths, unchecked": lambda: vd.attend(qs, ks, vs, lengths=(12, 12), check=False),
    }
    messages = []
    for name, call in calls.items():
        try:
            call()
            messages.append(f"{name}: no error")
        except (ValueError, TypeError) as e:
            messages.append(f"{name}: {type(e).__name__}: {e}")
    # the group is still in step after all of these: a normal call works
    out = vd.attend(qs, ks, vs, M.causal())
    ref = veil.attend(q, k, v, M.causal())
    messages.append(f"after: {float((out - vd.shard(ref, 2)).abs().max()):.2e}")
    return messages


def test_bad_input_raises_the_same_clear_error_on_every_rank_and_nothing_hangs():
    results = vd.spawn(worker_errors, 2, timeout=120)
    expected = {
        "heads": "3 query heads do not divide by the Ulysses degree 2",
        "mask disagrees": "ranks disagree on the mask",
        "mask tensors disagree": "ranks disagree on the mask",
        "head dim disagrees": "ranks disagree on head dim: [8, 7]",
        "not the layout": "the ranks hold [4, 6] rows",
        "mask does not fit": "lengths must be <= the key length 10",
        "one rank's bad input": "rank 1 of the group: TypeError: q: expected a floating-point tensor",
        "degrees": "expected ulysses * ring == the group size 2",
        "lengths": "lengths: the shards add up to (10, 10), got (12, 10)",
        "lengths, unchecked": "holds 5 queries and 5 keys; global lengths (12, 12) over 2 ranks give it 6 and 6",
    }
    for rank, messages in enumerate(results):
        got = dict(m.split(": ", 1) for m in messages)
        for name, text in expected.items():
            assert text in got[name], f"rank {rank}, {name}: {got[name]}"
        assert float(got["after"]) <= TOL


def test_attend_without_a_process_group_says_how_to_launch(monkeypatch):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="torchrun"):
        vd.attend(q, q, q)
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"):
        vd.init()


def test_shard_sizes_and_ring_skips():
    assert vd.shard_sizes(23, 4) == [6, 6, 6, 5]
    assert vd.shard_sizes(5, 4) == [2, 2, 1, 0]
    assert vd.shard_sizes(8, 4) == [2, 2, 2, 2]
    # causal over 4 shards: the 6 blocks above the diagonal are empty
    assert vd.ring_skips(M.causal(), 64, 64, 4) == 6 / 16
    # a window shorter than a shard: only the diagonal and the one below it are visited
    assert vd.ring_skips(M.sliding_window(8), 64, 64, 4) == 9 / 16
    assert vd.ring_skips(None, 64, 64, 4) == 0.0
    assert vd.ring_blocks(M.causal(), 64, 64, 4) == [1, 2, 3, 4]
    assert vd.ring_blocks(M.sliding_window(8), 64, 64, 4) == [1, 2, 2, 2]
    assert vd.ring_blocks(M.frame_causal((4, 2, 2)), 16, 16, 2) == [1, 2]
    # zig-zag: rank i holds chunks i and 7 - i of 8; under causal every rank computes the same number of blocks
    assert vd.shard_ranges(64, 4, "zigzag") == [[(0, 8), (56, 64)], [(8, 16), (48, 56)], [(16, 24), (40, 48)],
                                                [(24, 32), (32, 40)]]
    assert vd.ring_blocks(M.causal(), 64, 64, 4, "zigzag") == [9, 9, 9, 9]
    assert vd.shard_sizes(23, 4, "zigzag") == [5, 6, 6, 6] and vd.shard_ranges(5, 4, "zigzag")[3] == [(3, 4), (4, 5)]


def test_bench_counts_the_bytes_of_the_formulas_on_two_processes():
    from veil.bench import distributed as bench

    cfg = bench.quick(processes=(2,), masks=("causal", "window_3d"), tokens=512, repeats=1, model_layers=1)
    rows, model_rows = bench.run(cfg)
    assert [(r.mode, r.mask) for r in rows] == [(m, mask) for mask in ("causal", "window_3d")
                                                for m in ("ulysses", "ring", "ring zigzag")]
    for r in rows:
        assert r.sent_fwd == r.formula_fwd > 0 and r.sent_fwd_bwd == r.formula_fwd_bwd, r
        assert r.max_diff <= TOL
    assert rows[1].skip == 0.25 and rows[1].imbalance == 4 / 3  # causal over 2 shards: rank 1 does 2 blocks of 3
    assert rows[2].skip == 6 / 16 and rows[2].imbalance == 1.0  # zig-zag: 4 chunks, 10 of 16 pairs, 5 per rank
    assert model_rows[0].max_diff <= 1e-5 and model_rows[0].sent > 0

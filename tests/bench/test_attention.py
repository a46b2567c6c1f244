"""The attention benchmark's pieces: the naive peer row, the bench masks, rows for backends that cannot run."""

import dataclasses

import pytest
import torch

import veil.masks as M
from veil.attention import attend, get_backend, registry
from veil.bench import attention, report


def test_naive_matches_the_reference_on_a_window():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    m = M.causal() & M.sliding_window(3)
    torch.testing.assert_close(attention.naive_attention(q, k, v, m, 8**-0.5), attend(q, k, v, m, backend="reference"))


def test_bare_names_have_their_benchmark_meaning():
    assert attention.build_mask("key_padding", 10, 2, None).density(2, 1, 10) == 0.5
    tw = attention.build_mask("tile_window", 16 * 32 * 32, 1, (16, 32, 32))
    assert (tw.tile, tw.window) == ((4, 8, 8), (3, 3, 3))
    ph = attention.build_mask("per_head", 8, 1, (2, 2, 2), heads=4)
    assert [m.kind for m in ph.masks] == ["spatial", "spatial", "temporal", "temporal"]
    cfg = attention.Config(lengths=(8, 16), grids=((1, 2, 2), (2, 2, 2)),
                           masks=("causal", "spatial", "window_3d((1, 3, 3))"))
    got = [(c.expr, c.tokens, c.length) for c in attention.cases(cfg)]
    assert got == [("causal", "8", 8), ("causal", "16", 16), ("spatial", "1x2x2", 4), ("spatial", "2x2x2", 8),
                   ("window_3d((1, 3, 3))", "1x2x2", 4), ("window_3d((1, 3, 3))", "2x2x2", 8)]
    with pytest.raises(ValueError, match="unknown mask 'bogus'"):
        attention.Config(masks=("bogus",))


def test_rows_ratios_and_a_backend_that_cannot_run(monkeypatch):
    only64 = dataclasses.replace(get_backend("sdpa"), name="only64", dtypes=frozenset({torch.float64}))
    monkeypatch.setitem(registry._REGISTRY, "only64", only64)
    cfg = attention.Config(lengths=(32,), masks=("causal",), backends=("sdpa", "only64", "naive"), heads=1,
                           head_dim=8, repeats=1, warmup=0)
    rows = attention.run(cfg)
    assert [r.backend for r in rows] == ["sdpa, no mask", "sdpa", "only64", "naive"]
    dense, sdpa, only64_row, naive = rows
    assert sdpa.density == pytest.approx(32 * 33 / 2 / 32**2)
    assert sdpa.ideal == pytest.approx(1 / sdpa.density)
    assert sdpa.pct_ideal == pytest.approx(100 * sdpa.speedup * sdpa.density)
    assert sdpa.diff < 1e-5 and naive.diff < 1e-5 and sdpa.oracle == "reference"
    assert only64_row.ms is None and only64_row.note == "cannot run: does not take torch.float32"
    assert "cannot run" in report.format_row(only64_row)


def test_materialising_rows_are_skipped_past_the_budget():
    cfg = attention.Config(lengths=(64,), masks=("causal",), backends=("reference", "naive"), heads=1, head_dim=8,
                           repeats=1, max_scores_gib=1e-6)
    rows = attention.run(cfg)
    assert [r.ms is None for r in rows] == [False, True, True]
    assert rows[1].note.startswith("skipped: would materialise")


def test_update_doc_replaces_its_own_section(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n")
    for text in ("first", "second"):
        report.update_doc(path, "attention", f"<!-- veil bench attention -->\n{text}\n<!-- /veil bench attention -->")
    quick = "<!-- veil bench attention-quick -->\nq\n<!-- /veil bench attention-quick -->"
    report.update_doc(path, "attention-quick", quick)
    out = path.read_text()
    assert "intro" in out and "second" in out and "first" not in out
    assert out.count("<!-- veil bench attention -->") == 1 and out.count("<!-- veil bench attention-quick -->") == 1

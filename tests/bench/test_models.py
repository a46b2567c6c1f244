"""The models benchmark's pieces: veil equals diffusers before timing, a differing pair is refused, the sparse rows'
arithmetic, interleaving, and a tiny ``veil bench models --quick`` run through the CLI."""

import pytest
import torch

import veil.masks as M
from veil.bench import models, report
from veil.cli.main import main

TINY = models.Size(name="T", dim=32, head_dim=16, layers=1, latent=(2, 4, 4), text_len=5)


def _cfg(**kw) -> models.Config:
    base = dict(wan_sizes=(TINY,), latte_sizes=(TINY,), sparse_size=TINY, repeats=1, warmup=0, memory=False)
    return models.Config(**{**base, **kw})


@pytest.mark.parametrize("family", models.FAMILIES)
def test_parity_rows_time_models_that_agree(family):
    pair = models.build_pair(family, TINY)
    assert type(pair.theirs).__module__.startswith("diffusers")
    rows = list(models.parity_rows(pair, _cfg(memory=True)))
    assert [r.mode for r in rows] == ["forward", "forward+backward"]
    for r in rows:
        assert r.diff <= 1e-5 and r.note == ""
        assert r.veil_ms > 0 and r.diffusers_ms > 0 and r.speedup > 0 and r.veil_mib > 0 and r.diffusers_mib > 0
    # the check compared something that depends on the weights: the models' outputs are not zero
    with torch.no_grad():
        assert pair.call_ours(pair.x).abs().max() > 1e-3


def test_a_pair_that_differs_is_not_timed():
    pair = models.build_pair("wan", TINY)
    with torch.no_grad():
        pair.ours.blocks[0].ffn.fc2.bias.add_(1e-3)
    rows = list(models.parity_rows(pair, _cfg(modes=("forward",))))
    assert len(rows) == 1 and rows[0].diff > 1e-4
    assert rows[0].veil_ms is None and rows[0].speedup is None
    assert rows[0].note.startswith("not timed: outputs differ by")


def test_sparse_rows_density_and_ideals():
    size = models.Size(name="T", dim=32, head_dim=16, layers=1, latent=(4, 8, 8), text_len=5)
    cfg = _cfg(families=(), sparse_size=size, sparse_window=(1, 3, 3))
    rows = list(models.sparse_rows(cfg))
    assert [r.pattern.split()[0] for r in rows] == ["tile_window", "window_3d"]
    grid = (4, 4, 4)
    expected = [M.tile_window(grid, (1, 1, 1), (3, 3, 3)), M.window_3d(grid, (1, 3, 3))]
    for row, mask in zip(rows, expected):
        assert row.tokens == "4x4x4 = 64"
        assert row.density == pytest.approx(mask.to_bool(1, 1, 64, 64).float().mean().item())
        assert row.ideal == pytest.approx(1 / row.density)
        assert row.pct_ideal == pytest.approx(100 * row.attn_speedup * row.density)
        s = row.attn_share
        assert 0 < s <= 1 and row.model_ideal == pytest.approx(1 / (1 - s + s * row.density))
        assert row.diff < 1e-5
    assert "| tile_window tile (1, 1, 1) window (3, 3, 3) | 4x4x4 = 64 |" in report.format_sparse(rows[0])


def test_interleaved_alternates_the_order():
    calls = []
    times = models.interleaved([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times] == [3, 3]
    assert models.paired_speedup([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="families: expected some of wan, latte, got 'dit'"):
        models.Config(families=("dit",))
    with pytest.raises(ValueError, match="dim: expected a multiple of head_dim=16"):
        models.Size(name="x", dim=40, head_dim=16, layers=1, latent=(1, 4, 4))
    with pytest.raises(ValueError, match="sparse_window"):
        models.Config(sparse_window=(2, 3, 3))


def test_cli_quick_tiny_writes_its_section(capsys, tmp_path):
    doc = tmp_path / "bench.md"
    argv = ["bench", "models", "--quick", "--families", "latte", "--modes", "forward", "--patterns",
            "--repeats", "1", "--no-memory", "--output", str(doc)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("| latte |") == 2
    text = doc.read_text()
    assert text.count("<!-- veil bench models-quick -->") == 1
    assert "Command: `veil bench models --quick --families latte" in text
    assert "| pattern |" not in text  # no sparse patterns asked for


def test_threads_are_set_for_the_run_and_restored(monkeypatch):
    seen = []
    monkeypatch.setattr(models, "_run", lambda cfg, a, b: seen.append(torch.get_num_threads()) or ([], []))
    before = torch.get_num_threads()
    assert models.run(_cfg(threads=1)) == ([], [])
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads: expected None or a positive int, got 0"):
        models.Config(threads=0)

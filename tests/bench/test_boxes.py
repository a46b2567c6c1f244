"""veil bench boxes: the box geometry and density of each row, and the section it writes (no timing asserted)."""

from __future__ import annotations

import pytest

from veil.bench import boxes
from veil.cli.main import main


def test_rows_geometry_and_ideal():
    rows = boxes.run(boxes.Config(grid=(4, 8, 8), window=(3, 3, 3), boxes=((2, 4), (3, 3), (8, 8)), repeats=1))
    assert [r.box for r in rows] == [(2, 4), (8, 8)]  # 3x3 does not divide the 8x8 frame
    r = rows[0]
    assert (r.queries, r.keys) == (8, 3 * 4 * 6)
    # clipped window: mean visible keys per query = (mean t extent) (mean h extent) (mean w extent)
    mean_t, mean_hw = (4 * 3 - 2) / 4, (8 * 3 - 2) / 8
    assert r.ideal == pytest.approx(4 * 8 * 8 / (mean_t * mean_hw**2))
    assert r.pair_efficiency == pytest.approx(mean_t * mean_hw**2 / 72)
    assert r.share == pytest.approx(r.full_ms / r.ms / r.ideal)


def test_cli_writes_its_section(tmp_path, capsys):
    doc = tmp_path / "bench.md"
    assert main(["bench", "boxes", "--grid", "2x8x8", "--window", "1x3x3", "--repeats", "1", "--output", str(doc)]) == 0
    text = doc.read_text()
    assert text.count("<!-- veil bench boxes -->") == 1 and "| 1x4x8 | 32 | 60 |" in text
    assert "Command: `veil bench boxes --grid 2x8x8" in text
    assert "replaced the section 'boxes'" in capsys.readouterr().out

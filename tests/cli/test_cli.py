"""``veil`` in-process: literal pictures, clear errors, a tiny benchmark table, the demo."""

import pytest
from PIL import Image

from veil.bench.report import COLUMNS
from veil.cli.main import main


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr().out
    return rc, out


def test_masks_show_prints_the_picture_and_density(capsys):
    rc, out = run(capsys, "masks", "show", "causal & sliding_window(2)", "--q-len", "4")
    assert rc == 0
    assert out.splitlines()[1:] == ["#...", "##..", ".##.", "..##", "density 0.4375"]


def test_masks_show_video_mask_takes_the_grid_and_writes_a_png(capsys, tmp_path):
    png = tmp_path / "m.png"
    rc, out = run(capsys, "masks", "show", "spatial", "--grid", "2,1,2", "-o", str(png))
    assert out.splitlines()[1:5] == ["##..", "##..", "..##", "..##"]
    assert Image.open(png).size == (4, 4)


def test_bad_expression_exits_with_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["masks", "show", "causal & bogus(3)", "--q-len", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "veil masks show: error: mask expression 'causal & bogus(3)': unknown mask 'bogus'" in err
    with pytest.raises(SystemExit):
        main(["masks", "show", "causal"])
    assert "--q-len: required unless --grid is given" in capsys.readouterr().err


def test_bench_quick_tiny_writes_its_table_and_replaces_it(capsys, tmp_path):
    doc = tmp_path / "bench.md"
    argv = ["bench", "attention", "--quick", "--lengths", "64", "--masks", "causal", "--repeats", "1", "--heads", "1",
            "--backends", "sdpa", "naive", "--output", str(doc)]
    for _ in range(2):
        rc, out = run(capsys, *argv)
        assert rc == 0
    text = doc.read_text()
    assert text.count("<!-- veil bench attention-quick -->") == 1
    assert "| " + " | ".join(COLUMNS) + " |" in text
    assert "Command: `veil bench attention --quick --lengths 64" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| causal | 64 |")]
    assert [ln.split(" | ")[2] for ln in lines] == ["sdpa, no mask", "sdpa (auto)", "naive"]
    assert all(ln.split(" | ")[6] == "1.97" for ln in lines[1:])  # ideal = 1 / (64 * 65 / 2 / 64**2)


def test_demo_tiny_prints_pictures_writes_pngs_and_not_the_docs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out = run(capsys, "demo", "--masks", "--tiny", "--out", "pics")
    assert rc == 0
    assert "#########...\n##########..\n###########.\n############" in out  # causal, Q=4 after 8 cached
    assert "| causal | 64 | sdpa (auto) |" in out
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [
        "causal_kv_cache.png", "sliding_window.png", "tile_window.png"]
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("argv", [[], ["masks", "show"], ["bench", "attention"], ["demo"], ["train"], ["generate"],
                                  ["eval"]])
def test_help_texts(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: veil" in capsys.readouterr().out

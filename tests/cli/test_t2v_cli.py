"""``veil train / generate / eval / demo`` for text to video: a micro run that checkpoints and resumes, GIFs."""

from __future__ import annotations

import imageio.v3 as iio
import pytest

from veil.cli.main import main
from veil.pipelines import TextToVideo, default_checkpoint
from veil.training.t2v import load_config


def test_load_config_applies_toml_then_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('steps = 7\nlr = 2e-4\nexclude = ["red circle"]\n')
    cfg = load_config("micro-t2v", toml, ["lr=5e-4", "patch=[1, 8, 8]", "timesteps=uniform"])
    assert (cfg.steps, cfg.lr, cfg.exclude, cfg.patch, cfg.timesteps) == (7, 5e-4, ["red circle"], (1, 8, 8),
                                                                          "uniform")
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        load_config("micro-t2v", None, ["bogus=1"])
    with pytest.raises(ValueError, match="steps: expected a int"):
        load_config("micro-t2v", None, ["steps=fast"])
    with pytest.raises(ValueError, match="preset"):
        load_config("nope")


def test_train_micro_checkpoints_resumes_and_generates(capsys, tmp_path):
    out, cache = tmp_path / "run", f"cache_dir={tmp_path / 'cache'}"
    assert main(["train", "--preset", "micro-t2v", "--out", str(out), "--no-progress", cache, "steps=2",
                 "--exclude", "blue triangle"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.safetensors"]
    assert main(["train", "--preset", "micro-t2v", "--out", str(out), "--no-progress", cache, "steps=3",
                 "--exclude", "blue triangle", "--resume", "auto"]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "step 2" in text
    assert (out / "checkpoints" / "step-00000003.safetensors").is_file()
    pipe = TextToVideo.from_checkpoint(out / "model.safetensors")
    run = pipe.extra["run"]
    assert run["command"].startswith("veil train --preset micro-t2v") and run["t2v_config"]["exclude"] == [
        "blue triangle"]
    assert len(run["commit"]) in (40, 7) or run["commit"] == "unknown"
    gif = tmp_path / "a.gif"
    ckpt = str(out / "model.safetensors")
    assert main(["generate", "a red circle moving right", "-o", str(gif), "--checkpoint", ckpt, "--steps", "2",
                 "--seed", "3", "--extend", "10"]) == 0
    frames = iio.imread(gif, index=None)
    assert frames.shape[1:3] == (128, 128) and frames.shape[0] <= 10  # identical frames may merge in a GIF
    assert "10 frames of 32x32" in capsys.readouterr().out


@pytest.mark.skipif(not default_checkpoint().is_file(), reason="the shipped checkpoint is not built yet")
def test_shipped_checkpoint_loads_and_generates(capsys, tmp_path):
    pipe = TextToVideo.from_checkpoint()
    assert pipe.extra["run"]["command"].startswith("veil train --preset tiny-t2v")
    video = pipe(["a red circle moving right"], steps=1)
    assert video.shape == (1, 3, pipe.config.frames, pipe.config.size, pipe.config.size)
    assert main(["demo", "--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prompt-following (analyzer): colour" in out and (tmp_path / "grid.gif").is_file()

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from veil.data.folder import VideoFolder, frame_indices, read_captions, read_clip


def _frames(n: int, h: int, w: int) -> np.ndarray:
    """Frame t is a flat colour whose red channel is 20 * t, so a sampled frame's index can be read back."""
    clip = np.zeros((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        clip[t, ..., 0] = 20 * t
        clip[t, ..., 1] = 100
        clip[t, :, : w // 2, 2] = 200  # left half blue: checks orientation after resizing
    return clip


@pytest.fixture
def folder(tmp_path):
    iio.imwrite(tmp_path / "a.gif", _frames(10, 20, 40), duration=50, loop=0)
    d = tmp_path / "b"
    d.mkdir()
    for t, f in enumerate(_frames(3, 16, 16)):
        Image.fromarray(f).save(d / f"frame{t * 5}.png")  # frame0, frame5, frame10: natural order needed
    (tmp_path / "captions.csv").write_text('path,caption\na.gif,"a red thing, moving"\nb,a square\n')
    return tmp_path


def test_read_clip(folder):
    gif = read_clip(folder / "a.gif")
    assert gif.shape == (10, 20, 40, 3) and gif.dtype == np.uint8
    np.testing.assert_allclose(gif[:, 0, 0, 0], 20 * np.arange(10), atol=3)
    frames = read_clip(folder / "b")
    assert frames.shape == (3, 16, 16, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 20, 40]  # frame0, frame5, frame10 (not frame0, frame10, frame5)


def test_folder_items(folder):
    ds = VideoFolder(folder, size=8, frames=4)
    assert len(ds) == 2
    a = ds[0]
    assert a["video"].shape == (3, 4, 8, 8) and a["video"].dtype == torch.float32
    assert a["caption"] == "a red thing, moving"
    red = (a["video"][0, :, 4, 4] + 1) / 2 * 255  # uniform sampling of 10 frames into 4: 0, 3, 6, 9
    np.testing.assert_allclose(red.numpy(), [0, 60, 120, 180], atol=4)
    # 20x40 scaled to 8x16 then centre-cropped to columns 4..12: left half blue, right half not
    blue = (a["video"][2, 0, 4] + 1) / 2 * 255
    assert blue[0] > 190 and blue[-1] < 10
    b = ds[1]  # 3 frames padded to 4 by repeating the last
    np.testing.assert_allclose(((b["video"][0, :, 0, 0] + 1) / 2 * 255).numpy(), [0, 20, 40, 40], atol=1)
    assert float(a["video"].min()) >= -1 and float(a["video"].max()) <= 1


def test_sampling_modes():
    assert frame_indices(10, 4, "uniform").tolist() == [0, 3, 6, 9]
    assert frame_indices(10, 4, "first").tolist() == [0, 1, 2, 3]
    idx = frame_indices(10, 4, "random", np.random.default_rng(0))
    assert np.all(np.diff(idx) == 1) and 0 <= idx[0] <= 6
    assert frame_indices(2, 4, "uniform").tolist() == [0, 1, 1, 1]


def test_jsonl_and_random_sampling_is_repeatable(folder):
    (folder / "c.jsonl").write_text(json.dumps({"path": "a.gif", "caption": "x"}) + "\n\n"
                                    + json.dumps({"path": str(folder / "b"), "caption": "y"}) + "\n")
    assert read_captions(folder / "c.jsonl") == [("a.gif", "x"), (str(folder / "b"), "y")]
    ds = VideoFolder(folder, folder / "c.jsonl", size=(8, 12), frames=3, sampling="random", seed=1)
    assert ds[0]["video"].shape == (3, 3, 8, 12)
    assert torch.equal(ds[0]["video"], ds[0]["video"])


def test_errors(folder):
    (folder / "bad.csv").write_text("file,text\na.gif,x\n")
    with pytest.raises(ValueError, match="path"):
        VideoFolder(folder, folder / "bad.csv")
    (folder / "missing.csv").write_text("path,caption\nnope.mp4,x\n")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        VideoFolder(folder, folder / "missing.csv")
    (folder / "bad.jsonl").write_text('{"path": "a.gif"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_captions(folder / "bad.jsonl")
    with pytest.raises(ValueError, match="sampling"):
        VideoFolder(folder, sampling="middle")
    with pytest.raises(ValueError, match="size"):
        VideoFolder(folder, size=(8,))


def test_mp4_through_imageio_ffmpeg(tmp_path):
    clip = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    clip[..., 0] = (40 * np.arange(6))[:, None, None]
    iio.imwrite(tmp_path / "x.mp4", clip, fps=10)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "x.mp4", "caption": "ramp"}) + "\n")
    item = VideoFolder(tmp_path, size=16, frames=3, sampling="first")[0]
    red = ((item["video"][0, :, 8, 8] + 1) / 2 * 255).numpy()
    np.testing.assert_allclose(red, [0, 40, 80], atol=8)  # lossy codec

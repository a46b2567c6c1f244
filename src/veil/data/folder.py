"""A folder of real clips with captions: mp4 / gif / webm files or folders of frames, listed in a CSV or JSONL.

Legend: C channels (3, RGB), T frames, H W pixels. Items are float32 ``[C, T, H, W]`` in ``[-1, 1]``, like the
captioned video world, so either can feed training.

The captions file has one entry per clip with ``path`` (relative to the folder, or absolute) and ``caption``:
a CSV with those column names, or JSONL with those keys. Without one, each video file in the folder takes its
caption from a ``.txt`` file of the same name beside it (``clip.mp4`` and ``clip.txt``). Video files are decoded
with imageio (mp4 / webm through imageio-ffmpeg); a directory is read as its image files (png, jpg, jpeg, bmp,
webp) in natural order ("frame2.png" before "frame10.png") with Pillow. :func:`decode_folder` decodes a whole
folder once for training, skipping (with the reason) clips that cannot be read, are too short or lack a caption.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


def _natural_key(path: Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8 (alpha dropped)."""
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


def read_clip(path: str | Path) -> np.ndarray:
    """Every frame of a clip as uint8 [T, H, W, 3].

    Args:
        path: a video file (decoded with imageio) or a directory of image files (read with Pillow, in natural
            order).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a directory without image files, an unsupported suffix, or frames of different sizes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no clip at {path}")
    if path.is_dir():
        from PIL import Image

        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise ValueError(f"path: the directory {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(np.asarray(im.convert("RGB")))
    else:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"path: expected a directory of frames or a video ({', '.join(VIDEO_SUFFIXES)}), "
                             f"got {path.name}")
        import imageio.v3 as iio

        frames = [_to_rgb(np.asarray(f)) for f in iio.imiter(path)]
        if not frames:
            raise ValueError(f"path: {path} decoded to no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"path: frames of {path} differ in size: {sorted(shapes)}")
    return np.stack(frames)  # (T, H, W, 3)


def read_captions(file: str | Path) -> list[tuple[str, str]]:
    """(path, caption) pairs from a CSV (columns ``path``, ``caption``) or JSONL (keys ``path``, ``caption``).

    Raises:
        FileNotFoundError: ``file`` does not exist.
        ValueError: an unknown suffix, a missing column / key, or a line that is not a JSON object.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"captions: no file at {file}")
    rows: list[tuple[str, str]] = []
    if file.suffix.lower() == ".csv":
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"path", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"captions: {file.name} lacks column(s) {sorted(missing)}; got {reader.fieldnames}")
            rows = [(r["path"], r["caption"]) for r in reader]
    elif file.suffix.lower() in (".jsonl", ".ndjson"):
        with file.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"captions: {file.name} line {n} is not JSON: {e}") from None
                if not isinstance(obj, dict) or "path" not in obj or "caption" not in obj:
                    raise ValueError(f"captions: {file.name} line {n}: expected an object with 'path' and 'caption', "
                                     f"got {line.strip()[:80]!r}")
                rows.append((str(obj["path"]), str(obj["caption"])))
    else:
        raise ValueError(f"captions: expected a .csv or .jsonl file, got {file.name}")
    return rows


def sidecar_captions(root: str | Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """(path, caption) of each video file in ``root`` with a non-empty ``.txt`` of the same name beside it, and the
    video files without one."""
    root = Path(root)
    rows, missing = [], []
    for clip in sorted((p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES), key=_natural_key):
        txt = clip.with_suffix(".txt")
        text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        if text:
            rows.append((clip.name, text))
        else:
            missing.append(clip)
    return rows, missing


def frame_indices(n: int, frames: int, sampling: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Which of ``n`` frames to take for a clip of ``frames`` (clips shorter than ``frames`` repeat their last).

    ``"uniform"`` spreads the frames over the whole clip, ``"first"`` takes the first ones, ``"random"`` a
    contiguous window at a random start drawn from ``rng``.
    """
    if n >= frames:
        if sampling == "uniform":
            return np.linspace(0, n - 1, frames).round().astype(np.int64)
        start = 0 if sampling == "first" else int(rng.integers(0, n - frames + 1))
        return np.arange(start, start + frames)
    return np.minimum(np.arange(frames), n - 1)


def resize_crop(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale a float [T, C, H, W] clip so that it covers ``size`` (h, w), then crop the centre.

    Downscaling uses antialiased bilinear interpolation.
    """
    T, C, H, W = clip.shape
    h, w = size
    scale = max(h / H, w / W)
    nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
    if (nh, nw) != (H, W):
        clip = F.interpolate(clip, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - h) // 2, (nw - w) // 2
    return clip[:, :, top:top + h, left:left + w]


class VideoFolder(Dataset):
    """Captioned clips from a folder: items like the video world's, ``{"video", "caption", "path"}``.

    Args:
        root: the folder; relative paths in the captions file are relative to it.
        captions: the captions file (CSV or JSONL); by default ``root/captions.csv`` or ``root/captions.jsonl``.
        size: output H = W (an int) or (H, W); each clip is scaled to cover it and centre-cropped.
        frames: T, the number of frames of every item; shorter clips repeat their last frame.
        sampling: "uniform" (spread over the clip), "first", or "random" (a contiguous window, the start drawn
            from a generator seeded by (seed, index), so an item is the same at every call).
        seed: seed for "random".

    Items: ``video`` float32 [3, T, H, W] in [-1, 1]; ``caption`` str; ``path`` str (the resolved clip path).

    Raises:
        FileNotFoundError: no captions file, or clips named in it that do not exist (all listed).
        ValueError / TypeError: a bad size, frames or sampling.
    """

    def __init__(self, root: str | Path, captions: str | Path | None = None, *, size: int | tuple[int, int] = 32,
                 frames: int = 16, sampling: Literal["uniform", "first", "random"] = "uniform", seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no folder at {self.root}")
        self.uncaptioned: list[Path] = []  # video files without a caption (sidecar mode), left out
        sidecar = None
        if captions is None:
            found = [self.root / n for n in ("captions.csv", "captions.jsonl") if (self.root / n).is_file()]
            if found:
                captions = found[0]
            else:
                sidecar, self.uncaptioned = sidecar_captions(self.root)
                if not sidecar:
                    raise FileNotFoundError(f"captions: no captions.csv or captions.jsonl in {self.root}, and no video "
                                            f"file there has a .txt caption beside it")
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (not isinstance(size, tuple) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
            raise ValueError(f"size: expected an int or (H, W) of ints >= 1, got {size!r}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames: expected an int >= 1, got {frames!r}")
        if sampling not in ("uniform", "first", "random"):
            raise ValueError(f"sampling: expected 'uniform', 'first' or 'random', got {sampling!r}")
        self.size, self.frames, self.sampling, self.seed = size, frames, sampling, seed
        rows = sidecar if sidecar is not None else read_captions(captions)
        self.items = [(self._resolve(p), c) for p, c in rows]
        missing = [str(p) for p, _ in self.items if not p.exists()]
        if missing:
            raise FileNotFoundError(f"captions: {len(missing)} clip(s) not found: {missing[:5]}")

    def _resolve(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.root / path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.prepare(index, read_clip(self.items[index][0]))

    def prepare(self, index: int, clip: np.ndarray) -> dict:
        """The item ``index`` from its decoded frames ``clip`` (uint8 ``[T0, H0, W0, 3]``)."""
        path, text = self.items[index]
        rng = np.random.default_rng([self.seed, index % len(self)]) if self.sampling == "random" else None
        idx = frame_indices(len(clip), self.frames, self.sampling, rng)
        x = torch.from_numpy(clip[idx]).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H0, W0) in [0, 1]
        x = resize_crop(x, self.size).clamp(0, 1)  # (T, 3, H, W)
        return {"video": (x * 2 - 1).permute(1, 0, 2, 3).contiguous(), "caption": text, "path": str(path)}


def decode_folder(folder: VideoFolder, *, min_frames: int | None = None,
                  log=print) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Decode every clip of ``folder`` once (a cache for training): ``(videos [N, 3, T, H, W], captions, skipped)``.

    A clip that cannot be decoded, has fewer than ``min_frames`` frames (default ``folder.frames``: no clip is
    padded by repeating its last frame) or an empty caption is skipped, with the reason logged; so are the video
    files without a caption. Clips of any size are scaled to cover ``folder.size`` and centre-cropped.

    Raises:
        ValueError: no clip is usable (the reasons of the first few are in the message).
    """
    need = folder.frames if min_frames is None else min_frames
    videos, captions, skipped = [], [], [(str(p), "no caption (.txt beside it, or a captions file)")
                                         for p in folder.uncaptioned]
    for i, (path, text) in enumerate(folder.items):
        try:
            clip = read_clip(path)
        except (OSError, ValueError, RuntimeError) as e:  # unreadable, corrupt, not a video
            skipped.append((str(path), f"unreadable: {e}"))
            continue
        if len(clip) < need:
            skipped.append((str(path), f"too short: {len(clip)} frames, need {need}"))
            continue
        if not text.strip():
            skipped.append((str(path), "empty caption"))
            continue
        videos.append(folder.prepare(i, clip)["video"])
        captions.append(text)
    for path, why in skipped:
        log(f"data: skipped {path}: {why}")
    if not videos:
        detail = "; ".join(f"{Path(p).name}: {w}" for p, w in skipped[:5])
        raise ValueError(f"data: no usable clip in {folder.root} ({detail or 'the captions list no clip'})")
    return torch.stack(videos), captions, skipped

"""Writing videos: one clip as GIF or MP4 (by suffix), a captioned grid of clips as a GIF.

Legend: B batch, C channels (3, RGB), T frames, H W pixels. Videos are floats in ``[-1, 1]``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["save_grid", "save_video", "to_frames"]


def to_frames(video: Tensor, scale: int = 1) -> np.ndarray:
    """uint8 frames [T, H * scale, W * scale, 3] of a video [C, T, H, W] (or [1, C, T, H, W]) in [-1, 1].

    Raises:
        ValueError: another shape or a scale below 1.
    """
    if not isinstance(video, Tensor):
        raise TypeError(f"video: expected a tensor [C, T, H, W], got {type(video).__name__}")
    if video.dim() == 5 and video.shape[0] == 1:
        video = video[0]
    if video.dim() != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"video: expected [C, T, H, W] with C = 1 or 3, got {list(video.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale: expected an int >= 1, got {scale!r}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (C, T, H, W)
    x = x.expand(3, *x.shape[1:]).permute(1, 2, 3, 0)  # (T, H, W, 3)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return np.ascontiguousarray(x.numpy())


def save_video(video: Tensor, path: str | os.PathLike, *, fps: int = 8, scale: int = 4) -> Path:
    """Write one video as a looping GIF (``.gif``) or an H.264 MP4 (``.mp4``), chosen by the suffix.

    Args:
        video: [C, T, H, W] or [1, C, T, H, W] in [-1, 1].
        path: the file; its directory is created.
        fps: frames per second. scale: nearest-neighbour upscaling (tiny frames are hard to see).

    Raises:
        ValueError: an unknown suffix or a bad video.
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"path: expected a .gif or .mp4 file, got {str(path)!r}")
    frames = to_frames(video, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        h, w = frames.shape[1:3]
        pad = ((0, 0), (0, (-h) % 16), (0, (-w) % 16), (0, 0))  # H.264 wants multiples of 16
        import imageio.v2 as iio2  # the imageio-ffmpeg plugin (a dependency)

        iio2.mimwrite(str(path), list(np.pad(frames, pad)), format="FFMPEG", fps=fps, codec="libx264", quality=8,
                      macro_block_size=16)
    return path


def save_grid(videos: Tensor, path: str | os.PathLike, captions: Sequence[str] | None = None, *, columns: int = 4,
              fps: int = 8, scale: int = 4) -> Path:
    """Write B videos as one looping GIF grid, each cell with its caption underneath.

    Args:
        videos: [B, C, T, H, W] in [-1, 1] (all of one T).
        path: the GIF file (directory created).
        captions: B strings or None.
        columns: cells per row. fps, scale: as in :func:`save_video`.

    Raises:
        ValueError: bad shapes, a caption count other than B, or a suffix other than ``.gif``.
    """
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path: expected a .gif file, got {str(path)!r}")
    if not isinstance(videos, Tensor) or videos.dim() != 5:
        raise ValueError(f"videos: expected a tensor [B, C, T, H, W], got {getattr(videos, 'shape', videos)}")
    b = videos.shape[0]
    if captions is not None and len(captions) != b:
        raise ValueError(f"captions: expected {b} (one per video), got {len(captions)}")
    cells = [to_frames(v, scale) for v in videos]  # each (T, h, w, 3)
    t, h, w, _ = cells[0].shape
    text_h = 34 if captions is not None else 0
    cols = max(1, min(columns, b))
    rows = -(-b // cols)
    pad = 4
    grid = np.zeros((t, rows * (h + text_h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + text_h + pad), pad + c * (w + pad)
        grid[:, y:y + h, x:x + w] = cell
        if captions is not None:
            strip = Image.new("RGB", (w, text_h))
            ImageDraw.Draw(strip).multiline_text((1, 1), "\n".join(textwrap.wrap(captions[i], max(8, w // 6))[:3]),
                                                 fill=(230, 230, 230), spacing=0)
            grid[:, y + h:y + h + text_h, x:x + w] = np.asarray(strip)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid, extension=".gif", duration=1000.0 / fps, loop=0)
    return path

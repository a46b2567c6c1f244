"""Pictures of a mask: ASCII for the terminal, PNG for files.

Rows are queries, columns are keys, row 0 / column 0 at the top left. When the matrix is larger than the
picture, it is cut into cells: cell ``(i, j)`` of an ``R x C`` picture covers query rows
``[i*Q//R, (i+1)*Q//R)`` and key columns ``[j*K//C, (j+1)*K//C)``, and shows how many of its pairs are
attended. ASCII: ``#`` every pair attended, ``+`` some, ``.`` none. PNG: black = every pair attended,
white = none, grey in between in proportion (so a 1-pixel-per-pair PNG is pure black and white).

The mask is evaluated in row blocks; no ``Q x K`` tensor is made unless the mask is given as one.

Legend: Q query length, K key length, R rows and C columns of the picture.
"""

from __future__ import annotations

import pathlib

import torch

from veil.masks.core import Mask, Tensor

_BLOCK_ELEMS = 1 << 22  # pairs evaluated at once


def cell_counts(
    mask: Mask | Tensor,
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    rows: int,
    cols: int,
    batch: int = 1,
    sample: int = 0,
    head: int = 0,
) -> tuple[Tensor, Tensor]:
    """Attended pairs per picture cell, and the number of pairs in each cell.

    Args:
        mask: a :class:`Mask` (then ``q_len`` is required, ``kv_len`` defaults to it), or a bool tensor
            ``[Q, K]`` (True = may attend).
        rows, cols: picture size; clipped to ``Q`` and ``K`` (a cell is never smaller than one pair).
        batch: the batch size the mask is evaluated for (padding masks need it).
        sample, head: which ``[Q, K]`` slice to draw.

    Returns:
        ``(attended, pairs)``, both int64 ``[R, C]``.

    Raises:
        ValueError: sizes or indices out of range, or a tensor that is not ``[Q, K]``.
        TypeError: ``mask`` is neither a Mask nor a bool tensor.
    """
    get_rows, q_len, kv_len = _source(mask, q_len, kv_len, batch, sample, head)
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    r, c = min(rows, q_len), min(cols, kv_len)
    row_edges = torch.arange(r + 1) * q_len // r  # query rows [edges[i], edges[i+1]) form cell i
    rows_per = row_edges[1:] - row_edges[:-1]
    row_cell = torch.repeat_interleave(torch.arange(r), rows_per)  # (Q,) cell of each query row
    col_edges = torch.arange(c + 1) * kv_len // c  # key columns [edges[j], edges[j+1]) form cell j
    attended = torch.zeros(r, c, dtype=torch.long)
    step = max(1, _BLOCK_ELEMS // max(1, kv_len))
    for q0 in range(0, q_len, step):
        q1 = min(q_len, q0 + step)
        block = get_rows(q0, q1)  # (q1 - q0, K) bool
        csum = torch.nn.functional.pad(block.long().cumsum(1), (1, 0))  # (n, K + 1)
        per_col_cell = csum[:, col_edges[1:]] - csum[:, col_edges[:-1]]  # (n, C)
        attended.index_add_(0, row_cell[q0:q1], per_col_cell)
    cols_per = col_edges[1:] - col_edges[:-1]
    return attended, rows_per[:, None] * cols_per[None, :]


def to_ascii(
    mask: Mask | Tensor,
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    max_size: int = 64,
    batch: int = 1,
    sample: int = 0,
    head: int = 0,
) -> str:
    """The mask as text: one line per query (or cell of queries), ``#`` attended, ``.`` masked.

    Matrices larger than ``max_size`` along an axis are drawn with ``max_size`` cells on that axis:
    ``#`` = every pair in the cell attended, ``+`` = some, ``.`` = none. Arguments as :func:`cell_counts`.
    """
    attended, pairs = cell_counts(mask, q_len, kv_len, rows=max_size, cols=max_size, batch=batch, sample=sample,
                                  head=head)
    chars = [["#" if a == p else "." if a == 0 else "+" for a, p in zip(ar, pr)]
             for ar, pr in zip(attended.tolist(), pairs.tolist())]
    return "\n".join("".join(row) for row in chars)


def to_png(
    mask: Mask | Tensor,
    path: str | pathlib.Path,
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    max_size: int = 2048,
    batch: int = 1,
    sample: int = 0,
    head: int = 0,
) -> tuple[int, int]:
    """Write the mask as a greyscale PNG: one pixel per pair up to ``max_size`` pixels per axis, else cells.

    Black = attended, white = masked; a downsampled cell is grey in proportion to its attended pairs
    (``255 * (1 - attended / pairs)``, rounded). Arguments as :func:`cell_counts`.

    Returns:
        ``(width, height)`` of the image in pixels.
    """
    from PIL import Image

    attended, pairs = cell_counts(mask, q_len, kv_len, rows=max_size, cols=max_size, batch=batch, sample=sample,
                                  head=head)
    grey = torch.round(255.0 * (1.0 - attended.double() / pairs.double())).to(torch.uint8)  # (R, C)
    image = Image.fromarray(grey.numpy(), mode="L")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return image.size


def _source(mask, q_len, kv_len, batch, sample, head):
    """``(rows(q0, q1) -> bool [n, K], Q, K)`` for a Mask or a ``[Q, K]`` bool tensor."""
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"mask: expected a bool tensor [Q, K], got {mask.dtype} {list(mask.shape)}")
        if mask.shape[0] == 0 or mask.shape[1] == 0:
            raise ValueError(f"mask: expected a non-empty [Q, K], got {list(mask.shape)}")
        t = mask.cpu()
        return (lambda q0, q1: t[q0:q1]), t.shape[0], t.shape[1]
    if not isinstance(mask, Mask):
        raise TypeError(f"mask: expected a veil Mask or a bool tensor [Q, K], got {type(mask).__name__}")
    if q_len is None:
        raise ValueError("q_len: required when drawing a Mask")
    kv_len = q_len if kv_len is None else kv_len
    for name, v in (("q_len", q_len), ("kv_len", kv_len), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if not 0 <= sample < batch:
        raise ValueError(f"sample: expected an index in [0, {batch}), got {sample}")
    if head < 0:
        raise ValueError(f"head: expected an index >= 0, got {head}")

    def rows(q0: int, q1: int) -> Tensor:
        return mask.to_bool(batch, head + 1, q_len, kv_len, device="cpu", q_range=(q0, q1))[sample, head]

    return rows, q_len, kv_len

"""``parse("causal & sliding_window(64)")``: masks from text, for the command line.

Grammar: ``expr := term ('|' term)*``, ``term := factor ('&' factor)*``,
``factor := '~' factor | '(' expr ')' | name '(' args ')' | name``. Arguments are Python literals
(ints, tuples, lists, strings, True/False) given by position or keyword. ``grid`` may be left out of
the video masks when :func:`parse` is given ``grid=...``.
"""

from __future__ import annotations

import ast

import torch

from veil.masks import sequence, video
from veil.masks.core import Mask

_CONSTRUCTORS = {
    "full": sequence.full,
    "causal": sequence.causal,
    "sliding_window": sequence.sliding_window,
    "key_padding": lambda lengths: sequence.key_padding(torch.tensor(lengths)),
    "query_padding": lambda lengths: sequence.query_padding(torch.tensor(lengths)),
    "packed": sequence.packed,
    "prefix_lm": lambda n: sequence.prefix_lm(torch.tensor(n) if isinstance(n, (list, tuple)) else n),
    "chunked": sequence.chunked,
    "sink": sequence.sink,
    "spatial": video.spatial,
    "temporal": video.temporal,
    "frame_causal": video.frame_causal,
    "window_3d": video.window_3d,
    "tile_window": video.tile_window,
    "radial": video.radial,
}
_VIDEO = {"spatial", "temporal", "frame_causal", "window_3d", "tile_window", "radial"}
# the arguments a video constructor needs before its optional ones; ``grid`` is the first of them
_VIDEO_ARGS = {"window_3d": ("grid", "window"), "tile_window": ("grid", "tile", "window")}


def parse(text: str, *, grid: tuple[int, int, int] | None = None) -> Mask:
    """Build a mask from an expression such as ``"causal & sliding_window(64)"``.

    Raises:
        ValueError: unknown name, bad syntax or bad arguments (the message shows the expression).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a mask expression string, got {type(text).__name__}")
    src = text.replace("~", " not ").replace("&", " and ").replace("|", " or ")
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"mask expression {text!r}: syntax error ({e.msg})") from None
    return _eval(tree.body, text, grid)


def _eval(node: ast.AST, text: str, grid) -> Mask:
    if isinstance(node, ast.BoolOp):
        parts = [_eval(v, text, grid) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_eval(node.operand, text, grid)
    if isinstance(node, ast.Name):
        return _call(node.id, [], {}, text, grid)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise ValueError(f"mask expression {text!r}: arguments of {node.func.id} must be literals") from None
        return _call(node.func.id, args, kwargs, text, grid)
    raise ValueError(f"mask expression {text!r}: cannot read {ast.unparse(node)!r}")


def _call(name: str, args: list, kwargs: dict, text: str, grid) -> Mask:
    if name not in _CONSTRUCTORS:
        known = ", ".join(sorted(_CONSTRUCTORS))
        raise ValueError(f"mask expression {text!r}: unknown mask {name!r}; known: {known}")
    if name in _VIDEO and grid is not None and "grid" not in kwargs:
        needed = _VIDEO_ARGS.get(name, ("grid",))
        given = len(args) + sum(1 for key in kwargs if key in needed)
        if given < len(needed):  # the grid was left out
            args = [tuple(grid), *args]
    args = [tuple(a) if isinstance(a, list) and name in _VIDEO else a for a in args]
    kwargs = {k: tuple(v) if isinstance(v, list) and name in _VIDEO else v for k, v in kwargs.items()}
    try:
        return _CONSTRUCTORS[name](*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"mask expression {text!r}: {name}: {e}") from None

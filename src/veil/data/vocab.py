"""Vocabulary of the captioned video world: attributes, their synonyms, caption templates, phrase parsing.

The canonical attribute names are the keys of :data:`COLOURS`, :data:`SHAPES` and :data:`MOTIONS`. Captions are
drawn from :data:`TEMPLATES` with a synonym for each attribute; :func:`parse_phrase` reads a phrase such as
``"blue triangle"`` or ``"green moving up"`` back into canonical attributes. docs/data.md lists the same words.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Object colours, RGB in [0, 1]. Every one has a channel >= 0.85, so none is confusable with a background, whose
# channels stay <= 0.3 (see veil.data.world).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.12),
    "green": (0.12, 0.85, 0.18),
    "blue": (0.18, 0.35, 1.0),
    "yellow": (1.0, 0.88, 0.1),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "white": ("white", "ivory", "snowy"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "pyramid"),
}
# Direction words after a verb: "moving left", "drifts to the left", "slides leftward".
DIRECTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward"),
    "right": ("right", "to the right", "rightward"),
    "up": ("up", "upward", "to the top"),
    "down": ("down", "downward", "to the bottom"),
}
VERBS: tuple[str, ...] = ("moving", "drifts", "slides", "travels", "glides", "moves")
STILL_PHRASES: tuple[str, ...] = ("staying still", "sitting still", "at rest", "not moving", "motionless")

# {c} colour word, {s} shape word, {m} motion phrase ("drifts to the left", "at rest").
TEMPLATES: tuple[str, ...] = (
    "a {c} {s} {m}",
    "the {c} {s} {m}",
    "{c} {s} {m}",
    "a {c} {s} {m} on a dark background",
    "a single {c} {s}, {m}",
)

# Words that carry no attribute in an exclude phrase ("green moving up", "a triangle to the left").
_FILLER = frozenset(
    "a an the and is are that which on in of single dark background to toward towards moving moves going goes "
    "drifting drifts sliding slides travelling traveling travels gliding glides heading heads".split()
)
# Multi-word or attribute words that parse_phrase accepts, mapped to (attribute, canonical value).
_LEXICON: dict[str, tuple[str, str]] = {}
for _c, _words in COLOUR_SYNONYMS.items():
    _LEXICON.update({w: ("colour", _c) for w in _words})
for _s, _words in SHAPE_SYNONYMS.items():
    _LEXICON.update({w: ("shape", _s) for w in _words})
    _LEXICON.update({w + ("es" if w.endswith("x") else "s"): ("shape", _s) for w in _words})  # plurals
for _m, _words in DIRECTION_SYNONYMS.items():
    _LEXICON.update({w: ("motion", _m) for w in _words if " " not in w})
_LEXICON.update({w: ("motion", "still") for w in ("still", "static", "stationary", "motionless", "resting", "rest")})
_LEXICON.update({"top": ("motion", "up"), "bottom": ("motion", "down"), "upwards": ("motion", "up"),
                 "downwards": ("motion", "down"), "leftwards": ("motion", "left"), "rightwards": ("motion", "right")})
_STILL_FILLER = frozenset({"staying", "sitting", "at"})


@dataclass(frozen=True)
class Pattern:
    """A partial attribute combination: the attributes given, ``None`` for those left free.

    ``Pattern(colour="blue", shape="triangle")`` matches every blue triangle whatever its motion.
    """

    colour: str | None = None
    shape: str | None = None
    motion: str | None = None

    def matches(self, colour: str, shape: str, motion: str) -> bool:
        """True when every given attribute equals the argument's."""
        return ((self.colour is None or self.colour == colour) and (self.shape is None or self.shape == shape)
                and (self.motion is None or self.motion == motion))

    def __str__(self) -> str:
        parts = [p for p in (self.colour, self.shape) if p is not None]
        if self.motion is not None:
            parts.append(self.motion if self.motion == "still" else f"moving {self.motion}")
        return " ".join(parts)


def parse_phrase(phrase: str) -> Pattern:
    """Read a phrase naming one to three attributes into a :class:`Pattern`.

    Accepts canonical names and their synonyms in any order, with filler words ignored: ``"blue triangle"``,
    ``"green moving up"``, ``"triangle moving left"``, ``"crimson ball"``, ``"still"``, ``"red"``.

    Args:
        phrase: the words, case-insensitive.

    Raises:
        TypeError: ``phrase`` is not a string.
        ValueError: an unknown word, two values of one attribute, or no attribute at all.
    """
    if not isinstance(phrase, str):
        raise TypeError(f"phrase: expected a string like 'blue triangle', got {type(phrase).__name__}")
    words = re.findall(r"[a-z]+", re.sub(r"\bnot moving\b", "still", phrase.lower()))
    found: dict[str, str] = {}
    for w in words:
        if w in _LEXICON:
            attr, value = _LEXICON[w]
            if attr in found and found[attr] != value:
                raise ValueError(f"phrase {phrase!r}: names two {attr}s, {found[attr]!r} and {value!r}")
            found[attr] = value
        elif w not in _FILLER and w not in _STILL_FILLER:
            raise ValueError(
                f"phrase {phrase!r}: unknown word {w!r}; expected colours {sorted(COLOURS)}, shapes {list(SHAPES)}, "
                f"motions {list(MOTIONS)} or their synonyms (docs/data.md)"
            )
    if not found:
        raise ValueError(f"phrase {phrase!r}: names no colour, shape or motion")
    return Pattern(**found)


def parse_exclude(exclude: Iterable[str | Pattern] | str | None) -> tuple[Pattern, ...]:
    """Parse a list of exclude phrases (a single string is one phrase; ``None`` is none).

    Raises:
        ValueError: from :func:`parse_phrase`.
    """
    if exclude is None:
        return ()
    if isinstance(exclude, (str, Pattern)):
        exclude = [exclude]
    return tuple(p if isinstance(p, Pattern) else parse_phrase(p) for p in exclude)


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple, in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def split_combinations(
    exclude: Iterable[str | Pattern] | str | None,
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Split every (colour, shape, motion) triple into (seen, held_out) under ``exclude``.

    A triple is held out when any exclude pattern matches it. Use the held-out list to measure compositional
    generalisation: a model trained on ``CaptionedVideoWorld(exclude=...)`` never saw those triples.

    Raises:
        ValueError: from :func:`parse_phrase`, or when ``exclude`` removes every combination.
    """
    patterns = parse_exclude(exclude)
    seen, held = [], []
    for combo in all_combinations():
        (held if any(p.matches(*combo) for p in patterns) else seen).append(combo)
    if not seen:
        raise ValueError(f"exclude: {[str(p) for p in patterns]} removes every combination")
    return seen, held


def split_prompts(exclude: Iterable[str | Pattern] | str | None) -> dict[str, list[str]]:
    """Canonical prompts ("a red circle moving left") for the seen and held-out combinations under ``exclude``.

    Returns:
        ``{"seen": [...], "held_out": [...]}`` in the order of :func:`all_combinations`.

    Raises:
        ValueError: from :func:`split_combinations`.
    """
    seen, held = split_combinations(exclude)
    return {"seen": [caption(*c) for c in seen], "held_out": [caption(*c) for c in held]}


def motion_phrase(motion: str, rng: np.random.Generator) -> str:
    """A random wording of ``motion`` ("drifts to the left", "at rest")."""
    if motion == "still":
        return str(rng.choice(STILL_PHRASES))
    return f"{rng.choice(VERBS)} {rng.choice(DIRECTION_SYNONYMS[motion])}"


def caption(colour: str, shape: str, motion: str, rng: np.random.Generator | None = None) -> str:
    """A caption for the triple: a random template and synonyms from ``rng``, or the canonical wording without one.

    The canonical wording is ``"a red circle moving left"`` / ``"a red circle staying still"``.

    Raises:
        ValueError: an unknown attribute value.
    """
    _check_triple(colour, shape, motion)
    if rng is None:
        return f"a {colour} {shape} " + ("staying still" if motion == "still" else f"moving {motion}")
    template = str(rng.choice(TEMPLATES))
    return template.format(c=rng.choice(COLOUR_SYNONYMS[colour]), s=rng.choice(SHAPE_SYNONYMS[shape]),
                           m=motion_phrase(motion, rng))


def _check_triple(colour: str, shape: str, motion: str) -> None:
    for name, value, allowed in (("colour", colour, tuple(COLOURS)), ("shape", shape, SHAPES),
                                 ("motion", motion, MOTIONS)):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def vocabulary() -> dict[str, Sequence[str]]:
    """Every word a caption can contain, grouped (for docs and for checking a tokenizer covers them)."""
    words = {
        "colours": sorted({w for ws in COLOUR_SYNONYMS.values() for w in ws}),
        "shapes": sorted({w for ws in SHAPE_SYNONYMS.values() for w in ws}),
        "directions": sorted({w for ws in DIRECTION_SYNONYMS.values() for w in ws}),
        "verbs": list(VERBS),
        "still": list(STILL_PHRASES),
    }
    return words

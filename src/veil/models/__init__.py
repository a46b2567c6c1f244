"""``veil.models``: one model family per module, each taking a config dataclass and built on :mod:`veil.layers`."""

from veil.models.latte import LATTE_PRESETS, LatteConfig, LatteDiT  # noqa: F401

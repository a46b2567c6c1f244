"""``veil.models``: one model family per file, configs and presets beside them; built on :mod:`veil.layers`."""

from veil.models.latte import LATTE_PRESETS, LatteConfig, LatteDiT  # noqa: F401
from veil.models.wan import WAN_PRESETS, AttentionPattern, TimestepExperts, WanConfig, WanDiT, WanMoE  # noqa: F401

"""veil: one exact, composable language of attention masks, lowered to the fastest correct kernel."""

from __future__ import annotations

from veil import masks
from veil.attention import attend, explain, use_backend

__version__ = "0.1.0"
__all__ = ["attend", "explain", "masks", "use_backend"]

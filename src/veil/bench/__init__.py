"""``veil.bench``: benchmark programs behind ``veil bench`` (programs, not tests: they print measured ratios)."""

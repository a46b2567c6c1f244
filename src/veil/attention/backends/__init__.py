"""Built-in attention backends; importing this package registers them."""

from veil.attention.backends import flex, reference, sdpa, tiles, varlen  # noqa: F401

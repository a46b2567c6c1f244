"""Built-in attention backends; importing this package registers them."""

from veil.attention.backends import reference, sdpa, tiles  # noqa: F401

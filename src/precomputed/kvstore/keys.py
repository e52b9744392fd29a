"""Key validation shared by every store: keys are ``/``-separated, relative to the root."""

from __future__ import annotations

from ..errors import InvalidArgumentError

__all__ = ["check_key"]


def check_key(key: str) -> str:
    """Reject keys that would escape the root or alias another key after normalisation."""
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"kvstore key must be a non-empty string, got {key!r}")
    # String tests rather than split(): this runs for every key of every read.
    framed = f"/{key}/"
    if "//" in framed or "/./" in framed or "/../" in framed:
        raise InvalidArgumentError(f"invalid kvstore key {key!r}: empty, '.' or '..' segment")
    return key

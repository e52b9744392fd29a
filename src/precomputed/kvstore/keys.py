"""The one key rule of every store: keys are ``/``-separated and stay inside the root.

A key is a non-empty string of ``/``-separated components, none of them empty, ``.`` or
``..``, with no leading or trailing ``/``, no NUL and no backslash. Every public method
of :class:`~precomputed.kvstore.KvStore` checks its keys here before any I/O, on every
store (local files and memory included), so a key can neither resolve outside the
store's root nor alias another key after normalisation. TensorStore 0.1.86's file store
also rejects ``..`` components, but its memory store accepts them, and its precomputed
driver resolves scale keys against the volume path first, so ``../../escape`` leaves the
volume (docs/stores.md, "Keys"). Keeping a resolved scale key inside the *volume* is the
metadata layer's job, before keys reach the store.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError

__all__ = ["check_key", "check_prefix", "CHECKED_KEYS"]

#: Keys already validated (chunk keys repeat on every read): a dict lookup instead of
#: the string scans; hot paths test ``key in CHECKED_KEYS`` before calling
#: :func:`check_key`. Bounded (cleared when full); only valid keys are ever added.
CHECKED_KEYS: dict[str, None] = {}
_MEMO = 1 << 16


def check_key(key: str) -> str:
    """``key`` if it is valid, else InvalidArgumentError naming it and the rule."""
    if type(key) is str and key in CHECKED_KEYS:
        return key
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"kvstore key must be a non-empty string, got {key!r}")
    framed = f"/{key}/"
    if "//" in framed or "/./" in framed or "/../" in framed:
        raise InvalidArgumentError(
            f"invalid kvstore key {key!r}: an empty, '.' or '..' component (keys are "
            "relative to the store root and may not leave it)"
        )
    if "\x00" in key or "\\" in key:
        raise InvalidArgumentError(f"invalid kvstore key {key!r}: NUL or backslash")
    if len(CHECKED_KEYS) >= _MEMO:
        CHECKED_KEYS.clear()
    CHECKED_KEYS[key] = None
    return key


def check_prefix(prefix: str) -> str:
    """A listing/deletion prefix: ``""`` (everything), or a valid key's first
    characters, e.g. ``"8_8_8/"`` or ``"8_8_8/0-"``."""
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"kvstore prefix must be a string, got {prefix!r}")
    if not prefix:
        return prefix
    head, _, tail = prefix.rpartition("/")
    if head:
        check_key(head)
    elif prefix.startswith("/"):
        raise InvalidArgumentError(f"invalid kvstore prefix {prefix!r}: leading '/'")
    if "\x00" in tail or "\\" in tail:
        raise InvalidArgumentError(f"invalid kvstore prefix {prefix!r}: NUL or backslash")
    return prefix

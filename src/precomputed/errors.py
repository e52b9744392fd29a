"""Error hierarchy mirroring TensorStore's status codes.

Each class also subclasses the Python builtin a caller would naturally catch, so
``except ValueError`` keeps working for invalid specs and ``except FileNotFoundError``
for missing volumes. Messages name the key or member at fault and the value received;
errors about a JSON member also carry :attr:`PrecomputedError.member_path`, so a user
interface can point at the field without reading the message.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "PrecomputedError",
    "InvalidArgumentError",
    "FailedPreconditionError",
    "CorruptDataError",
    "NotFoundError",
    "AlreadyExistsError",
    "OutOfRangeError",
    "UnimplementedError",
    "ConditionFailedError",
    "GenerationChangedError",
    "ReadOnlyError",
    "PermissionDeniedError",
    "StorageError",
    "UnavailableError",
]


class PrecomputedError(Exception):
    """Base class of every error raised by the driver.

    ``member_path`` names the JSON member the error concerns, outermost first: object
    member names and array positions, e.g. ``("scale_metadata", "size", 1)`` for the
    second element of ``scale_metadata.size``. It is filled as the message's ``Error
    parsing object member "..."`` prefixes are added (``internal.jsonparse.member`` and
    ``position``), or given directly where a rule concerns one member; ``()`` when the
    error concerns no member.
    """

    def __init__(self, *args: object, member_path: Sequence[str | int] = ()) -> None:
        super().__init__(*args)
        self.member_path: tuple[str | int, ...] = tuple(member_path)


class InvalidArgumentError(PrecomputedError, ValueError):
    """A spec, argument or constraint is malformed (TensorStore INVALID_ARGUMENT)."""


class FailedPreconditionError(PrecomputedError, ValueError):
    """Stored data or metadata conflicts with the request (FAILED_PRECONDITION)."""


class CorruptDataError(FailedPreconditionError):
    """Stored bytes cannot be decoded: a corrupt chunk, shard or index."""


class NotFoundError(PrecomputedError, FileNotFoundError):
    """A volume, scale or chunk does not exist (NOT_FOUND)."""


class AlreadyExistsError(PrecomputedError, FileExistsError):
    """Creating something that already exists (ALREADY_EXISTS)."""


class OutOfRangeError(PrecomputedError, IndexError):
    """An index lies outside the array's domain (OUT_OF_RANGE)."""


class UnimplementedError(PrecomputedError, NotImplementedError):
    """An operation the format or store cannot do (UNIMPLEMENTED)."""


class ConditionFailedError(PrecomputedError):
    """A conditional write lost a race: the object changed since it was read."""


class GenerationChangedError(ConditionFailedError):
    """A read pinned to a generation found the object changed (or gone).

    Raised by :meth:`~precomputed.kvstore.KvStore.read_ranges_pinned`: no bytes of
    another version were returned. ``changed`` maps each key that changed to
    ``(expected, actual)`` generations (``expected`` is None when the caller pinned
    nothing and the object kept changing during the read; ``actual`` is None when the
    server only said "differs"); ``key``/``expected``/``actual`` are the first of them.
    ``results`` holds what the call read for the other keys, as the call would have
    returned it (``None`` in the slots of changed keys), so a caller can re-read only
    the changed ones.
    """

    def __init__(
        self,
        message: str,
        changed: dict[str, tuple[str | None, str | None]],
        results: tuple[list[bytes | None], dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.changed = changed
        self.key, (self.expected, self.actual) = next(iter(changed.items()))
        self.results = results


class ReadOnlyError(PrecomputedError, PermissionError):
    """Writing to a store that cannot be written (e.g. HTTP)."""


class PermissionDeniedError(PrecomputedError, PermissionError):
    """The server refused the credentials given, or their absence (HTTP 401/403;
    TensorStore PERMISSION_DENIED/UNAUTHENTICATED). The message says how to give
    credentials or use anonymous access."""


class StorageError(PrecomputedError, OSError):
    """A store operation failed for a reason none of the other classes describe: an
    unexpected HTTP status, a malformed response (TensorStore UNKNOWN/INTERNAL)."""


class UnavailableError(StorageError, ConnectionError):
    """A transient failure (connection error, reset, truncated body, timeout, HTTP
    408/429/5xx) that outlived its retries or their time budget (TensorStore
    UNAVAILABLE/DEADLINE_EXCEEDED)."""

"""JSON parsing primitives shared by the spec, schema, metadata and sharding parsers.

They report problems in TensorStore's words, so messages can be compared with (and
searched like) TensorStore's: ``Error parsing object member "x": Error parsing value at
position 1: Expected 64-bit signed integer, but received: 10.5``. Everything raises
:class:`InvalidArgumentError`; callers that parse *stored* data convert the class (keeping
:attr:`~precomputed.errors.PrecomputedError.member_path`, which :func:`member` and
:func:`position` fill as they add their prefixes: ``("x", 1)`` above).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidArgumentError, PrecomputedError

# Every TensorStore dtype name: a known name outside the format's data types gets the "not
# one of the supported data types" message (codecs.table), anything else "Unsupported data
# type".
_TENSORSTORE_DTYPES = frozenset(
    "bool char byte int2 int4 int8 uint8 int16 uint16 int32 uint32 int64 uint64 float8_e3m4 "
    "float8_e4m3fn float8_e4m3fnuz float8_e4m3b11fnuz float8_e5m2 float8_e5m2fnuz "
    "float8_e8m0fnu float4_e2m1fn bfloat16 float16 float32 float64 complex64 complex128 "
    "string ustring json".split()
)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


# ---------------------------------------------------------------------------------------
# JSON primitives
# ---------------------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Stands for an absent member, so parsers can say "but member is missing".
MISSING: Any = _Missing()


#: Longest value quoted in a message; longer ones are cut (with "...").
_MAX_QUOTED = 1000


def dump_json(value: Any) -> str:
    """Compact JSON as TensorStore prints values in messages and files (cut after
    :data:`_MAX_QUOTED` characters: a message never quotes a megabyte of hostile input)."""
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = _short_repr(value)
    return text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "..."


def _short_repr(value: Any) -> str:
    try:
        return repr(value)[: _MAX_QUOTED + 1]
    except RecursionError:
        return f"<{type(value).__name__} nested too deep to print>"


def fail(expected: str, value: Any) -> InvalidArgumentError:
    """``Expected <expected>, but received: <value>`` (or ``member is missing``)."""
    got = "member is missing" if value is MISSING else f"received: {dump_json(value)}"
    return InvalidArgumentError(f"Expected {expected}, but {got}")


class RankError(InvalidArgumentError):
    """A rank mismatch; reported without member prefixes, as TensorStore does."""


@contextmanager
def member(name: str) -> Iterator[None]:
    """Prefix errors raised inside with ``Error parsing object member "<name>": ``."""
    try:
        yield
    except RankError:
        raise
    except InvalidArgumentError as e:
        raise InvalidArgumentError(
            f'Error parsing object member "{name}": {e}', member_path=(name, *e.member_path)
        ) from None


@contextmanager
def position(index: int) -> Iterator[None]:
    """Prefix errors raised inside with ``Error parsing value at position <i>: ``."""
    try:
        yield
    except RankError:
        raise
    except InvalidArgumentError as e:
        raise InvalidArgumentError(
            f"Error parsing value at position {index}: {e}", member_path=(index, *e.member_path)
        ) from None


@contextmanager
def concerning(*path: str | int) -> Iterator[None]:
    """Errors raised inside concern the member at ``path`` (outermost first): it is put in
    front of their ``member_path``; the message is left as it is."""
    try:
        yield
    except PrecomputedError as e:
        e.member_path = (*path, *e.member_path)
        raise


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is a JSON integer or an integral float, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def parse_int(value: Any, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` (integral floats accepted, as in TensorStore)."""
    v = as_int(value)
    if v is None or not lo <= v <= hi:
        raise fail(f"integer in the range [{lo}, {hi}]", value)
    return v


def parse_int64(value: Any) -> int:
    v = as_int(value)
    if v is None or not -_INT64_MAX - 1 <= v <= _INT64_MAX:
        raise fail("64-bit signed integer", value)
    return v


def parse_uint64(value: Any) -> int:
    v = as_int(value)
    if v is None or not 0 <= v <= _UINT64_MAX:
        raise fail("64-bit unsigned integer", value)
    return v


def parse_string(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("string", value)
    return value


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail("boolean", value)
    return value


def parse_loose_float(value: Any) -> float:
    """A number, or (like TensorStore's "loose" parsing of ``resolution``) a numeric string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and "_" not in value:
        try:
            return float(value)
        except ValueError:
            if value.strip().lstrip("+-").lower().startswith("0x"):  # strtod accepts hex
                try:
                    return float.fromhex(value)
                except ValueError:
                    pass
    raise fail("64-bit floating-point number", value)


def parse_enum(value: Any, choices: Sequence[str]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    raise fail("one of " + ", ".join(f'"{c}"' for c in choices), value)


def parse_array(value: Any, length: int | None = None) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise fail("array", value)
    if length is not None and len(value) != length:
        raise InvalidArgumentError(f"Array has length {len(value)} but should have length {length}")
    return list(value)


def parse_vector(value: Any, parse: Any, length: int | None = 3) -> tuple[Any, ...]:
    """A fixed-length array whose elements are parsed by ``parse`` (errors name positions)."""
    items = parse_array(value, length)
    out = []
    for i, item in enumerate(items):
        with position(i):
            out.append(parse(item))
    return tuple(out)


def require_object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail("object", value)
    return value


def check_extra_members(obj: Mapping[str, Any], allowed: Sequence[str]) -> None:
    extra = [k for k in obj if k not in allowed]
    if extra:
        names = ",".join(dump_json(k) for k in extra)
        raise InvalidArgumentError(f"Object includes extra members: {names}")


def format_g(value: float) -> str:
    """C ``%g`` formatting (absl ``StrCat(double)``), used in keys and messages."""
    return format(value, "g")


# ---------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------


def parse_dtype_name(value: Any) -> str:
    """A TensorStore dtype name (not yet checked against the format's data types)."""
    name = parse_string(value)
    if name not in _TENSORSTORE_DTYPES:
        raise InvalidArgumentError(f"Unsupported data type: {dump_json(name)}")
    return name

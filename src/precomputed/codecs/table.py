"""The one table of what the format stores: data types, encodings, and which data types
and channel counts each encoding allows (the format reference, §1.5).

Used by the ``info`` parser, the spec constraints, scale creation and the codecs, so every
layer rejects the same combinations with the same (TensorStore's) words. Errors name the
member they concern in ``member_path`` (``("encoding",)``, relative: callers put the
enclosing members in front).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "SUPPORTED_DTYPES",
    "ENCODINGS",
    "EncodingRule",
    "ENCODING_RULES",
    "check_data_type",
    "check_encoding",
    "check_chunk",
]

#: The eight data types of the format, in TensorStore's order.
SUPPORTED_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "uint64", "float32")
#: The chunk encodings, in TensorStore's order.
ENCODINGS = ("raw", "png", "jpeg", "compressed_segmentation")


@dataclass(frozen=True)
class EncodingRule:
    """What one encoding stores: its data types and channel counts (``None``: any), and
    how TensorStore names them in its messages."""

    data_types: tuple[str, ...] | None = None
    channels: frozenset[int] | None = None
    title: str = ""  # the encoding as messages name it
    data_types_text: str = ""
    channels_text: str = ""


ENCODING_RULES: dict[str, EncodingRule] = {
    "raw": EncodingRule(),
    "png": EncodingRule(("uint8", "uint16"), frozenset(range(1, 5)), '"png"', "uint8 and uint16", "1 to 4"),
    "jpeg": EncodingRule(("uint8",), frozenset((1, 3)), '"jpeg"', "uint8", "1 or 3"),
    "compressed_segmentation": EncodingRule(
        ("uint32", "uint64"), None, "compressed_segmentation", "uint32 and uint64"
    ),
}  # fmt: skip


def check_data_type(name: str) -> str:
    """Raise unless ``name`` is one of the 8 data types the format supports."""
    if name not in SUPPORTED_DTYPES:
        raise InvalidArgumentError(
            f"{name} data type is not one of the supported data types: "
            + ", ".join(SUPPORTED_DTYPES)
        )
    return name


def check_encoding(
    encoding: str | None, data_type: str | None, num_channels: int | None
) -> None:
    """Encoding vs data type and channel count; ``None`` and unknown encodings are not
    checked (their parsers report them)."""
    rule = ENCODING_RULES.get(encoding) if encoding is not None else None
    if rule is None:
        return
    if rule.data_types is not None and data_type is not None and data_type not in rule.data_types:
        raise InvalidArgumentError(
            f"{rule.title} encoding only supported for {rule.data_types_text}, not for {data_type}",
            member_path=("encoding",),
        )
    if rule.channels is not None and num_channels is not None and num_channels not in rule.channels:
        raise InvalidArgumentError(
            f"{rule.title} encoding only supports {rule.channels_text} channels, not {num_channels}",
            member_path=("encoding",),
        )


#: (encoding, dtype, channels) combinations already checked: codecs check every chunk.
_CHECKED: set[tuple[str, np.dtype, int]] = set()


def check_chunk(encoding: str, dtype: np.dtype, channels: int) -> None:
    """:func:`check_data_type` and :func:`check_encoding` for a chunk of a native-order
    ``dtype`` with ``channels`` channels (remembered: this runs for every chunk)."""
    key = (encoding, dtype, channels)
    if key in _CHECKED:
        return
    check_data_type(dtype.name)
    check_encoding(encoding, dtype.name, channels)
    if len(_CHECKED) < 4096:
        _CHECKED.add(key)

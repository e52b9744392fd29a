"""The one table of encodings, data types and channel counts (``codecs.table``)."""

from __future__ import annotations

import pytest

from precomputed.codecs.table import check_encoding as validate_encoding
from precomputed.errors import (
    InvalidArgumentError,
)


def test_validate_encoding_table() -> None:
    validate_encoding("raw", "float32", 100)
    validate_encoding("jpeg", None, None)
    validate_encoding("png", "uint16", 4)
    with pytest.raises(InvalidArgumentError, match="1 to 4 channels, not 0"):
        validate_encoding("png", "uint8", 0)

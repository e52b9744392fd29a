"""Errors carry the member they concern (``member_path``), filled as the message prefixes
are built, and set where a rule's message names no member; stored info keeps them."""

from __future__ import annotations

from typing import Any

import pytest

from member_path_cases import CASES
from precomputed import create
from precomputed.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PrecomputedError,
)
from precomputed.internal.jsonparse import concerning, member, parse_int, position
from precomputed.metadata import MultiscaleMetadata


@pytest.mark.parametrize("name", CASES)
def test_create_errors_name_their_member(name: str) -> None:
    mm, sm, existing, path = CASES[name]
    with pytest.raises(PrecomputedError) as e:
        create.plan_scale(mm, sm, existing)
    assert e.value.member_path == path, str(e.value)


def test_member_and_position_build_the_path_with_the_message() -> None:
    with pytest.raises(InvalidArgumentError) as e, member("a"), position(2), member("b"):
        parse_int("x", 0, 3)
    assert e.value.member_path == ("a", 2, "b")
    assert str(e.value).startswith(
        'Error parsing object member "a": Error parsing value at position 2: '
        'Error parsing object member "b": Expected integer'
    )
    with pytest.raises(NotFoundError) as n, concerning("x", "y"):
        raise NotFoundError("gone", member_path=("z",))
    assert n.value.member_path == ("x", "y", "z") and str(n.value) == "gone"
    assert InvalidArgumentError("no member").member_path == ()


def test_stored_info_errors_keep_the_member_path() -> None:
    info: dict[str, Any] = {
        "type": "image", "data_type": "uint8", "num_channels": 1,
        "scales": [{"key": "a", "size": [1, "b", 1], "resolution": [1, 1, 1],
                    "chunk_sizes": [[1, 1, 1]], "encoding": "raw"}],
    }  # fmt: skip
    with pytest.raises(FailedPreconditionError) as e:
        MultiscaleMetadata.from_json(info)
    assert e.value.member_path == ("scales", 0, "size", 1)
    info["data_type"] = "uint16"
    info["scales"][0].update(size=[1, 1, 1], encoding="jpeg")
    with pytest.raises(FailedPreconditionError) as e:
        MultiscaleMetadata.from_json(info)
    assert e.value.member_path == ("scales", 0, "encoding")

"""The create widget can find the field an error concerns from ``member_path`` alone: for
every case, the field the path names is the one the widget's message matching finds."""

from __future__ import annotations

from typing import Any

import pytest

from member_path_cases import CASES
from napari_precomputed.widgets.create import _MEMBER_FIELDS, field_for_message
from precomputed import create
from precomputed.errors import PrecomputedError


def field_of_path(path: tuple[Any, ...]) -> str:
    """The innermost member of ``path`` that is a widget field ("general" if none)."""
    for name in reversed(path):
        if isinstance(name, str) and name in _MEMBER_FIELDS:
            return _MEMBER_FIELDS[name]
    return "general"


@pytest.mark.parametrize("name", CASES)
def test_member_path_names_the_field_the_message_names(name: str) -> None:
    mm, sm, existing, _ = CASES[name]
    with pytest.raises(PrecomputedError) as e:
        create.plan_scale(mm, sm, existing)
    assert field_of_path(e.value.member_path) == field_for_message(str(e.value))

"""The create widget finds the field an error concerns from ``member_path`` alone: for
every case, the field the widget shows the message under is the one its former matching
of message text found (recorded below when that matching was removed, issue 13)."""

from __future__ import annotations

import pytest

from member_path_cases import CASES
from napari_precomputed.widgets.create import field_for_error
from precomputed import create
from precomputed.errors import PrecomputedError

#: Case -> the field the widget's message matching (regexes over the text) found.
FIELD_THE_MESSAGE_NAMED = {
    "png_level": "png_level",
    "size_element": "size",
    "sharding_member": "preshift_bits",
    "invalid_region": "size",
    "no_domain": "size",
    "no_dtype": "data_type",
    "unsupported_dtype": "data_type",
    "encoding_dtype": "encoding",
    "encoding_channels": "encoding",
    "sharded_64_bits": "sharding",
    "existing_key": "key",
    "existing_resolution": "resolution",
    "existing_data_type": "data_type",
}


@pytest.mark.parametrize("name", CASES)
def test_member_path_names_the_field_the_message_names(name: str) -> None:
    mm, sm, existing, _ = CASES[name]
    with pytest.raises(PrecomputedError) as e:
        create.plan_scale(mm, sm, existing)
    assert field_for_error(e.value) == FIELD_THE_MESSAGE_NAMED[name]

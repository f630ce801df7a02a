"""agent.jsontext.dumps writes exactly what json.dumps(..., default=str) writes: its text is
hashed into published content digests and stored as the before images of corrections."""
import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jsontext import dumps

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.decimals(allow_nan=True, allow_infinity=True) | st.dates() | st.datetimes()
    | st.datetimes(timezones=st.just(dt.timezone.utc)) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)


@pytest.mark.parametrize("sort_keys, separators", [(True, (",", ":")), (False, (", ", ": "))])
@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(), _values, max_size=8))
def test_the_text_is_exactly_what_json_writes(payload, sort_keys, separators):
    assert dumps(payload, sort_keys=sort_keys, separators=separators) == \
        json.dumps(payload, sort_keys=sort_keys, default=str, separators=separators)


def test_keys_that_are_not_text_are_left_to_json():
    payload = {2: "b", 1: Decimal("1.50")}
    for sort_keys in (True, False):
        assert dumps(payload, sort_keys=sort_keys) == json.dumps(payload, sort_keys=sort_keys, default=str,
                                                                 separators=(", ", ": "))

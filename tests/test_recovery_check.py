"""The independent check of the SIGKILL recovery contract (``assert_delivered_once``) fails for
every way a route can get it wrong, and passes what a de-duplicating consumer would accept."""
import pytest

from tests.support.harness import Change as C
from tests.support.recovery import assert_delivered_once

MADE = [C("A", "1"), C("B", "2"), C("A", "3"), C("B", "4")]
ONCE = [C("A", "1", "a1"), C("B", "2", "b2"), C("A", "3", "a3"), C("B", "4", "b4")]


def test_each_change_once_in_key_order_passes_and_a_repeat_under_its_id_is_only_refused_when_exact():
    assert_delivered_once(MADE, ONCE, exact=True)
    redelivered = ONCE + [C("A", "1", "a1"), C("A", "3", "a3")]       # a batch sent again after a kill
    assert_delivered_once(MADE, redelivered)
    with pytest.raises(AssertionError, match="2 change.s. arrived twice"):
        assert_delivered_once(MADE, redelivered, exact=True)


@pytest.mark.parametrize("landed, why", [
    (ONCE[:3], "lost 1 change"),
    (ONCE + [C("C", "9", "c9")], "never made"),
    (ONCE + [C("A", "1", "a1-again")], "under two event ids"),
    ([C("A", "1", "x"), C("B", "2", "x"), *ONCE[2:]], "one event id for different changes"),
    ([ONCE[2], ONCE[1], ONCE[0], ONCE[3]], "out of order"),
])
def test_every_way_of_getting_it_wrong_is_named(landed, why):
    with pytest.raises(AssertionError, match=why):
        assert_delivered_once(MADE, landed)


def test_a_polling_source_may_merge_a_keys_changes_but_not_lose_the_last_or_reorder():
    merged = [C("B", "2", "b2"), C("A", "3", "a3"), C("B", "4", "b4")]     # A's first version never seen
    assert_delivered_once(MADE, merged, coalesced=True)
    with pytest.raises(AssertionError, match="lost"):
        assert_delivered_once(MADE, merged[:-1], coalesced=True)
    with pytest.raises(AssertionError, match="out of order"):
        assert_delivered_once(MADE, [C("B", "4", "b4"), C("B", "2", "b2"), C("A", "3", "a3")], coalesced=True)

"""The targeting rule (javia_core.rollouts.targeting): by uuid, by tag, or every device."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from javia_core.rollouts.targeting import is_targeted, targeting_reason

TAGS = st.sets(st.sampled_from(["kitchen", "beta", "attic", "canary"]), max_size=4)
UUIDS = st.sets(st.uuids(), max_size=3)
DEVICE = uuid.UUID("3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b")


@given(
    targets=st.none() | UUIDS,
    target_tags=st.none() | TAGS,
    device_tags=TAGS,
    listed=st.booleans(),
)
def test_a_device_is_targeted_exactly_when_everyone_listed_or_sharing_a_tag(
    targets, target_tags, device_tags, listed
):
    if targets is not None and listed:
        targets = targets | {DEVICE}
    expected = (
        (targets is None and target_tags is None)
        or (targets is not None and DEVICE in targets)
        or bool(target_tags and device_tags & target_tags)
    )

    targeted, reason = targeting_reason(targets, target_tags, DEVICE, device_tags)

    assert is_targeted(targets, target_tags, DEVICE, device_tags) is targeted is expected
    assert reason.startswith("not ") is not targeted


def test_the_reasons_an_operator_reads():
    assert targeting_reason(None, None, DEVICE, ()) == (True, "every device")
    assert targeting_reason({DEVICE}, {"kitchen"}, DEVICE, ()) == (True, "listed by uuid")
    assert targeting_reason(None, {"kitchen", "beta"}, DEVICE, ("kitchen",)) == (
        True,
        "tagged kitchen",
    )
    assert targeting_reason(None, {"kitchen", "beta"}, DEVICE, ("attic",)) == (
        False,
        "not tagged beta or kitchen",
    )
    assert targeting_reason(set(), None, DEVICE, ("kitchen",)) == (False, "not listed by uuid")
    assert targeting_reason({uuid.uuid4()}, {"beta"}, DEVICE, ()) == (
        False,
        "not listed by uuid and not tagged beta",
    )

"""The revert source: which devices a revert targets and which release's content it republishes."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_core.errors import ConflictError
from javia_core.models import UpdateStatus
from javia_core.versioning import Version
from javia_updates.service.revert import (
    Release,
    affected_devices,
    choose_healthy_release,
    previous_release,
    superseding_release,
)
from revert_helpers import HttpFleet
from shared_helpers import bearer

V100 = Release(Version(1, 0, 0), 1)
V110 = Release(Version(1, 1, 0), 2)
V120 = Release(Version(1, 2, 0), 3)
BAD = Version(1, 2, 0)
A, B, C, D = (uuid.UUID(int=n) for n in range(1, 5))


# --------------------------------------------------------------------------- the pure rule


def test_affected_are_the_devices_running_it_and_those_installing_it():
    rows = [
        (A, UpdateStatus.COMPLETED),
        (B, UpdateStatus.INSTALLING),
        (C, UpdateStatus.DOWNLOADING),
        (D, UpdateStatus.PENDING),
    ]
    assert affected_devices([A], rows) == [A, B, C]


def test_previous_release_is_the_highest_completed_below_the_bad_one_not_withdrawn():
    completed = [V100, V110, V120]
    assert previous_release(BAD, completed, withdrawn=set()) == V110
    assert previous_release(BAD, completed, withdrawn={V110.update_id}) == V100
    assert previous_release(BAD, [V120], withdrawn=set()) is None


def test_the_fleets_previous_release_wins_over_an_older_one_completed_by_more_devices():
    completed = {A: [V100, V110], B: [V100, V110], C: [V100]}  # v1.1.0 failed on C

    assert choose_healthy_release(BAD, completed, withdrawn=set()) == V110


def test_equally_common_previous_releases_go_to_the_higher_version():
    completed = {A: [V100], B: [V110]}

    assert choose_healthy_release(BAD, completed, withdrawn=set()) == V110


def test_a_halted_or_cancelled_release_is_never_the_healthy_one():
    completed = {A: [V100, V110], B: [V100, V110]}

    assert choose_healthy_release(BAD, completed, withdrawn={V110.update_id}) == V100


def test_no_earlier_release_is_a_conflict_naming_the_bad_version():
    with pytest.raises(
        ConflictError, match="no earlier release completed on the devices running v1.2.0"
    ):
        choose_healthy_release(BAD, {A: [V120], B: []}, withdrawn=set())


def test_no_affected_device_is_a_conflict_pointing_at_cancel():
    with pytest.raises(ConflictError, match="no device runs or is installing v1.2.0"):
        choose_healthy_release(BAD, {}, withdrawn=set())


releases = st.builds(
    lambda minor, update_id: Release(Version(1, minor, 0), update_id),
    st.integers(0, 5),
    st.integers(1, 8),
)


@given(
    completed=st.dictionaries(st.uuids(), st.lists(releases, max_size=5), min_size=1, max_size=8),
    withdrawn=st.sets(st.integers(1, 8), max_size=3),
)
def test_the_healthy_release_is_the_most_common_previous_release(completed, withdrawn):
    bad = Version(1, 3, 0)
    previous = [previous_release(bad, releases, withdrawn) for releases in completed.values()]
    votes = [release for release in previous if release is not None]
    if not votes:
        with pytest.raises(ConflictError):
            choose_healthy_release(bad, completed, withdrawn)
        return

    healthy = choose_healthy_release(bad, completed, withdrawn)

    assert healthy.version < bad and healthy.update_id not in withdrawn
    assert all(votes.count(healthy) >= votes.count(other) for other in votes)
    assert all(
        other.version <= healthy.version
        for other in votes
        if votes.count(other) == votes.count(healthy)
    )


# --------------------------------------------------------------------------- the route


def test_revert_source_names_the_last_release_that_completed_on_the_devices(client, admin, publish):
    fleet = HttpFleet(client, admin)
    first, second, installing, late = (
        fleet.register(name, "v1.0.0") for name in ("a", "b", "c", "d")
    )
    publish("v1.0.0", "instant")  # already on every device: no rows
    v110 = publish("v1.1.0", "instant")[0].json()["id"]
    for device in (first, second, installing, late):
        fleet.install(device, v110, "v1.1.0")
    v120 = publish("v1.2.0", "instant")[0].json()["id"]
    fleet.install(first, v120, "v1.2.0")
    fleet.install(second, v120, "v1.2.0")
    fleet.report(installing, v120, "downloading", "installing")
    # ``late`` has a pending row only: cancelling v1.2.0 stops it, it needs no revert.

    response = client.get("/api/v1/updates/v1.2.0/revert-source", headers=fleet.admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["bad_version"], body["healthy_version"]) == ("v1.2.0", "v1.1.0")
    assert body["healthy_update_id"] == v110
    assert set(body["devices"]) == {first, second, installing}


def test_revert_source_without_an_earlier_healthy_release_is_409_in_one_line(
    client, admin, publish
):
    fleet = HttpFleet(client, admin)
    device = fleet.register("a", "v1.0.0")  # v1.0.0 came with the device: no row proves it
    bad = publish("v1.1.0", "instant")[0].json()["id"]
    fleet.install(device, bad, "v1.1.0")

    response = client.get("/api/v1/updates/v1.1.0/revert-source", headers=fleet.admin)

    assert response.status_code == 409
    assert response.json()["detail"] == (
        "no earlier release completed on the devices running v1.1.0"
    )


def test_revert_source_needs_the_admin_key(client, publish):
    publish("v1.1.0", "instant")
    assert client.get("/api/v1/updates/v1.1.0/revert-source").status_code == 401


def test_a_newer_release_reaching_every_affected_device_supersedes_the_bad_one():
    V121 = Release(Version(1, 2, 1), 4)
    V130 = Release(Version(1, 3, 0), 5)
    assert superseding_release([A, B], [(V121, {A, B, C})]) == V121
    assert superseding_release([A, B], [(V121, {A}), (V130, {B})]) == V130
    assert superseding_release([A, B], [(V121, {A})]) is None  # B still needs a revert
    assert superseding_release([], [(V121, {A})]) is None


def test_a_newer_release_staged_or_retried_on_every_affected_device_is_a_revert_already_done(
    client, admin, publish
):
    """Staged ahead of its window or retried after a transient fault, v1.2.1 is on its way."""
    fleet = HttpFleet(client, admin)
    staged, retrying = fleet.register("a", "v1.0.0"), fleet.register("b", "v1.0.0")
    for version in ("v1.1.0", "v1.2.0"):
        update_id = publish(version, "instant")[0].json()["id"]
        for device in (staged, retrying):
            fleet.install(device, update_id, version)
    fix = publish("v1.2.1", "scheduled")[0].json()["id"]
    fleet.report(staged, fix, "downloading", "staged")
    fleet.report(retrying, fix, "downloading", "retrying")

    response = client.get("/api/v1/updates/v1.2.0/revert-source", headers=fleet.admin)

    assert response.status_code == 409, response.text
    assert response.json()["detail"].startswith("v1.2.0 was already reverted/superseded by v1.2.1")


def test_devices_with_the_bad_release_staged_or_retried_are_stopped_by_the_cancel_not_targeted(
    client, admin, publish
):
    fleet = HttpFleet(client, admin)
    running, staged, retrying = (fleet.register(name, "v1.0.0") for name in ("a", "b", "c"))
    v110 = publish("v1.1.0", "instant")[0].json()["id"]
    for device in (running, staged, retrying):
        fleet.install(device, v110, "v1.1.0")
    bad = publish("v1.2.0", "scheduled")[0].json()["id"]
    fleet.install(running, bad, "v1.2.0")
    fleet.report(staged, bad, "downloading", "staged")
    fleet.report(retrying, bad, "downloading", "retrying")

    source = client.get("/api/v1/updates/v1.2.0/revert-source", headers=fleet.admin).json()
    assert source["devices"] == [running]
    cancelled = client.post("/api/v1/updates/v1.2.0/cancel", json={}, headers=fleet.admin)
    assert cancelled.status_code == 200, cancelled.text

    for device in (staged, retrying):
        answer = client.post(
            f"/api/v1/devices/{device}/heartbeat",
            json={"current_version": "v1.1.0"},
            headers=bearer(fleet.tokens[device]),
        ).json()
        assert answer["update"] is None and answer["held"] is None  # the agent deletes its work

"""Inherited urgency names its evidence (DESIGN.md section 4: supersession).

When the highest pending version installs with a more urgent timing than its
own signed type (inherited from a row it supersedes), the directive names in
``urgency_from`` the superseded update that was signed that urgent, and the
device may fetch that update's manifest and signature to verify the claim.
"""

from __future__ import annotations

from javia_core.models import InstallDirective, UpdateType


def _publish(service, clock, make_package, version: str, update_type: str) -> int:  # type: ignore[no-untyped-def]
    return service.publish_update(make_package(version, update_type).upload(), now=clock.now).id


def test_an_inherited_instant_names_the_superseded_instant_update(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    fix = _publish(service, clock, make_package, "v1.1.0", "instant")
    _publish(service, clock, make_package, "v1.2.0", "scheduled")

    directive = beat(device).update

    assert (str(directive.version), directive.update_type) == ("v1.2.0", UpdateType.INSTANT)
    evidence = directive.urgency_from
    assert evidence is not None
    assert (evidence.update_id, str(evidence.version)) == (fix, "v1.1.0")
    assert evidence.manifest_url == f"/api/v1/updates/{fix}/manifest"
    assert evidence.signature_url == f"/api/v1/updates/{fix}/signature"
    # The superseded row stays readable by this device: it can verify the claim.
    assert service.device_may_read(service.find_device(device.device_uuid), fix)
    # The next heartbeat (the row now superseded) still names it.
    assert beat(device).update.urgency_from == evidence


def test_a_chain_of_supersessions_names_the_update_signed_urgent_not_an_inheritor(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    urgent = _publish(service, clock, make_package, "v1.1.0", "urgent")
    _publish(service, clock, make_package, "v1.2.0", "scheduled")
    assert beat(device).update.update_type is UpdateType.URGENT
    _publish(service, clock, make_package, "v1.3.0", "scheduled")

    directive = beat(device).update

    assert (str(directive.version), directive.update_type) == ("v1.3.0", UpdateType.URGENT)
    assert directive.urgency_from is not None
    # v1.2.0 only inherited its urgency (signed scheduled): v1.1.0 is the proof.
    assert (directive.urgency_from.update_id, str(directive.urgency_from.version)) == (
        urgent,
        "v1.1.0",
    )


def test_no_evidence_when_the_timing_is_the_packages_own(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    _publish(service, clock, make_package, "v1.1.0", "scheduled")
    _publish(service, clock, make_package, "v1.2.0", "instant")

    directive = beat(device).update

    assert (str(directive.version), directive.update_type) == ("v1.2.0", UpdateType.INSTANT)
    assert directive.urgency_from is None


def test_the_wire_form_carries_the_evidence_and_the_device_may_fetch_it(client, device, publish):
    instant, _ = publish("v1.1.0", "instant")
    scheduled, _ = publish("v1.2.0", "scheduled")
    assert instant.status_code == scheduled.status_code == 201

    answer = client.get(
        f"/api/v1/devices/{device['uuid']}/updates/check", headers=device["headers"]
    )

    assert answer.status_code == 200, answer.text
    update = answer.json()["update"]
    fix = instant.json()["id"]
    assert update["version"] == "v1.2.0"
    assert update["update_type"] == "instant"
    assert update["urgency_from"] == {
        "update_id": fix,
        "version": "v1.1.0",
        "manifest_url": f"/api/v1/updates/{fix}/manifest",
        "signature_url": f"/api/v1/updates/{fix}/signature",
    }
    InstallDirective.model_validate(update)  # what the device parses
    for url in ("manifest_url", "signature_url"):
        fetched = client.get(update["urgency_from"][url], headers=device["headers"])
        assert fetched.status_code == 200, fetched.text

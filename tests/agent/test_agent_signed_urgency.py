"""Inherited urgency is followed only when a signature proves it (DESIGN.md section 4).

Supersession: a device installs the highest pending version with the most
urgent timing among the rows it supersedes. The device runs v1.0.0 and is
offered v1.2.0, signed ``scheduled``, as ``instant`` (or ``urgent``) because it
supersedes v1.1.0. The device follows that timing only if the superseded
update the server names in ``urgency_from`` has a manifest signed by a trusted
key, for the version named, newer than the running release and older than the
offered one, signed at least as urgent as the offer. Anything else (no
evidence, a forged or unsigned or untrusted manifest, a lower type, a version
outside that range) and the device waits for its own maintenance window, as
the offered package's signed type says.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from javia_core.models import InstallDirective, UpdateStatus, UpdateType, UrgencyEvidence
from javia_core.scheduling import bound_by_signed_type, check_urgency_evidence
from javia_core.versioning import Version
from javia_updates.packaging import BuiltPackage, build_package

from .helpers import APP_SOURCE, NOW, Signer
from .test_agent_hostile_server import DEVICE, SERVER_TIME, HostileApi, World, _agent, _paths

RANK = {UpdateType.SCHEDULED: 0, UpdateType.URGENT: 1, UpdateType.INSTANT: 2}
RUNNING = Version.parse("v1.0.0")
OFFERED = Version.parse("v1.2.0")
OFFERED_ID = 12
EVIDENCE_ID = 11
# The device's next maintenance window (02:00 UTC) after SERVER_TIME (12:00 UTC).
NEXT_WINDOW = datetime(2031, 3, 5, 2, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Signed:
    """A package's signed metadata as a server would serve it."""

    manifest: bytes
    signature: bytes
    payload: bytes
    size: int


@pytest.fixture(scope="module")
def packages(
    tmp_path_factory: pytest.TempPathFactory, signer: Signer, other_signer: Signer
) -> dict[tuple[str, UpdateType, str], Signed]:
    """(version, signed type, "trusted"/"untrusted") -> its signed metadata."""
    built: dict[tuple[str, UpdateType, str], Signed] = {}
    versions = ["v0.9.0", "v1.0.0", "v1.1.0", "v1.1.5", "v1.2.0", "v1.3.0"]
    for version in versions:
        for kind in UpdateType:
            for trust, key in (("trusted", signer), ("untrusted", other_signer)):
                if trust == "untrusted" and (version, kind) != ("v1.1.0", UpdateType.INSTANT):
                    continue
                app = tmp_path_factory.mktemp("app")
                (app / "app.py").write_text(APP_SOURCE)
                package: BuiltPackage = build_package(
                    app,
                    tmp_path_factory.mktemp("out") / "pkg",
                    version=Version.parse(version),
                    update_type=kind,
                    description=f"{version} signed {kind}",
                    system_packages=(),
                    private_key=key.private_key,
                    now=NOW,
                    app_name="assistant",
                    write_version_file=False,
                )
                built[(version, kind, trust)] = Signed(
                    package.manifest_bytes,
                    package.signature_bytes,
                    package.payload_path.read_bytes(),
                    package.manifest.archive.size,
                )
    return built


def _evidence(update_id: int = EVIDENCE_ID, version: str = "v1.1.0") -> dict[str, Any]:
    paths = _paths(update_id)
    return {
        "update_id": update_id,
        "version": version,
        "manifest_url": paths["manifest_url"],
        "signature_url": paths["signature_url"],
    }


def _server(
    packages: dict[tuple[str, UpdateType, str], Signed],
    *,
    claimed: str = "instant",
    evidence: dict[str, Any] | None = None,
    serve_payload: bool = True,
) -> HostileApi:
    """A server offering the signed-scheduled v1.2.0 as ``claimed``, naming ``evidence``."""
    offered = packages[("v1.2.0", UpdateType.SCHEDULED, "trusted")]
    fields: dict[str, Any] = {
        "update_id": OFFERED_ID,
        "version": str(OFFERED),
        "update_type": claimed,
        "status": "pending",
        "install_at": (SERVER_TIME - timedelta(minutes=1)).isoformat(),
        "idle_seconds_required": 0 if claimed == "urgent" else None,
        "size": offered.size,
        **_paths(OFFERED_ID),
    }
    if evidence is not None:
        fields["urgency_from"] = evidence
    api = HostileApi(
        heartbeat=lambda: {
            "server_time": SERVER_TIME.isoformat(),
            "heartbeat_interval_seconds": 300,
            "update": fields,
        }
    )
    base = f"/api/v1/updates/{OFFERED_ID}"
    api.objects[f"{base}/manifest"] = (200, offered.manifest)
    api.objects[f"{base}/signature"] = (200, offered.signature)
    if serve_payload:
        api.objects[f"{base}/download"] = (200, offered.payload)
    return api


def _serve_evidence(api: HostileApi, manifest: bytes | None, signature: bytes | None) -> None:
    base = f"/api/v1/updates/{EVIDENCE_ID}"
    if manifest is not None:
        api.objects[f"{base}/manifest"] = (200, manifest)
    if signature is not None:
        api.objects[f"{base}/signature"] = (200, signature)


def _downloaded(api: HostileApi) -> bool:
    return any(url.path == f"/api/v1/updates/{OFFERED_ID}/download" for url in api.requests)


def _assert_waits_for_the_window(result: Any, api: HostileApi, world: World) -> None:
    assert result.decision is not None and not result.decision.install_now, result.decision
    assert "scheduled" in result.decision.reason
    assert result.decision.wake_at is not None and result.decision.wake_at >= NEXT_WINDOW
    assert result.outcome is None and not _downloaded(api)
    assert (world.paths.current_link).readlink() == Path("releases/v1.0.0")


# -- (a) a proven inherited timing is followed -------------------------------------------


@pytest.mark.parametrize(
    ("claimed", "proof"),
    [
        ("instant", UpdateType.INSTANT),
        ("urgent", UpdateType.URGENT),
        ("urgent", UpdateType.INSTANT),  # the server may always make it later
    ],
)
def test_a_superseded_update_signed_that_urgent_makes_the_successor_install_now(
    claimed: str,
    proof: UpdateType,
    tmp_path: Path,
    signer: Signer,
    packages: dict[tuple[str, UpdateType, str], Signed],
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World.create(tmp_path)
    api = _server(packages, claimed=claimed, evidence=_evidence())
    fix = packages[("v1.1.0", proof, "trusted")]
    _serve_evidence(api, fix.manifest, fix.signature)
    agent = _agent(world, api, signer)

    with caplog.at_level(logging.INFO, logger="javia_agent.offers"):
        result = agent.run_once()

    assert result.decision is not None and result.decision.install_now, result.decision
    assert _downloaded(api), "the successor was not installed at once"
    assert result.outcome is not None
    assert "proven by the signed" in caplog.text and "v1.1.0" in caplog.text
    evidence_fetches = [
        url for url in api.requests if url.path.startswith(f"/api/v1/updates/{EVIDENCE_ID}/")
    ]
    assert len(evidence_fetches) == 2  # its manifest and signature, verified once


def test_the_evidence_is_fetched_once_and_fetched_again_if_it_did_not_answer(
    tmp_path: Path, signer: Signer, packages: dict[tuple[str, UpdateType, str], Signed]
) -> None:
    world = World.create(tmp_path)
    api = _server(packages, evidence=_evidence(), serve_payload=False)
    base = f"/api/v1/updates/{EVIDENCE_ID}"
    api.objects[f"{base}/manifest"] = (503, b'{"detail": "try later"}')
    agent = _agent(world, api, signer)

    # No answer: not a verdict. The device falls back for now (waits for its window)...
    _assert_waits_for_the_window(agent.run_once(), api, world)
    # ... and asks again at the next heartbeat, when the proof is there.
    fix = packages[("v1.1.0", UpdateType.INSTANT, "trusted")]
    _serve_evidence(api, fix.manifest, fix.signature)
    second = agent.run_once()
    assert second.decision is not None and second.decision.install_now
    fetched = sum(u.path == f"{base}/manifest" for u in api.requests)
    agent.run_once()  # a later heartbeat uses the kept verdict
    assert sum(u.path == f"{base}/manifest" for u in api.requests) == fetched


# -- (b) an unproven timing is bounded by the offered package's signed type --------------


def _refusals(packages: dict[tuple[str, UpdateType, str], Signed]) -> dict[str, Any]:
    instant = packages[("v1.1.0", UpdateType.INSTANT, "trusted")]
    other = packages[("v1.1.5", UpdateType.INSTANT, "trusted")]
    tampered = instant.manifest.replace(b'"instant"', b'"instant" ', 1)
    return {
        "no evidence": (None, None, None),
        "unsigned (no signature)": (_evidence(), instant.manifest, None),
        "untrusted key": (
            _evidence(),
            packages[("v1.1.0", UpdateType.INSTANT, "untrusted")].manifest,
            packages[("v1.1.0", UpdateType.INSTANT, "untrusted")].signature,
        ),
        "tampered manifest": (_evidence(), tampered, instant.signature),
        "another manifest's signature": (_evidence(), instant.manifest, other.signature),
        "junk signature": (_evidence(), instant.manifest, b'{"key_id": "x", "signature": "AA"}'),
        "lower type": (
            _evidence(),
            packages[("v1.1.0", UpdateType.URGENT, "trusted")].manifest,
            packages[("v1.1.0", UpdateType.URGENT, "trusted")].signature,
        ),
        "a version other than named": (
            _evidence(version="v1.1.0"),
            other.manifest,
            other.signature,
        ),
        "the running version": _signed(packages, "v1.0.0"),
        "older than running": _signed(packages, "v0.9.0"),
        "the offered version": _signed(packages, "v1.2.0"),
        "newer than offered": _signed(packages, "v1.3.0"),
        "the offered update itself": (
            {**_evidence(OFFERED_ID, "v1.2.0")},
            None,
            None,
        ),
    }


def _signed(packages: dict[tuple[str, UpdateType, str], Signed], version: str) -> tuple[Any, ...]:
    signed = packages[(version, UpdateType.INSTANT, "trusted")]
    return _evidence(version=version), signed.manifest, signed.signature


REFUSALS = [
    "no evidence",
    "unsigned (no signature)",
    "untrusted key",
    "tampered manifest",
    "another manifest's signature",
    "junk signature",
    "lower type",
    "a version other than named",
    "the running version",
    "older than running",
    "the offered version",
    "newer than offered",
    "the offered update itself",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_an_unproven_inherited_instant_waits_for_the_window(
    case: str,
    tmp_path: Path,
    signer: Signer,
    packages: dict[tuple[str, UpdateType, str], Signed],
    caplog: pytest.LogCaptureFixture,
) -> None:
    evidence, manifest, signature = _refusals(packages)[case]
    world = World.create(tmp_path)
    api = _server(packages, evidence=evidence)
    _serve_evidence(api, manifest, signature)
    agent = _agent(world, api, signer)

    with caplog.at_level(logging.WARNING, logger="javia_agent.offers"):
        result = agent.run_once()
        _assert_waits_for_the_window(result, api, world)
        # The verdict is kept: the next heartbeat neither installs nor fetches it again.
        fetched = len(api.requests)
        again = agent.run_once()
    _assert_waits_for_the_window(again, api, world)
    assert len(api.requests) == fetched + 1  # the heartbeat only
    # The log says why, once.
    warnings = [r.getMessage() for r in caplog.records if "no sooner than" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "signed scheduled but offered as instant" in warnings[0]


EVIDENCE_VERSIONS = ["v0.9.0", "v1.0.0", "v1.1.0", "v1.1.5", "v1.2.0", "v1.3.0"]
#: Per part of the evidence, what a hostile server may send instead of the valid value.
EVIDENCE_PARTS: dict[str, st.SearchStrategy[Any]] = {
    "claimed": st.sampled_from(["urgent", "instant"]),
    "named": st.sampled_from(EVIDENCE_VERSIONS),
    "served": st.sampled_from(EVIDENCE_VERSIONS),
    "kind": st.sampled_from(list(UpdateType)),
    "trust": st.sampled_from(["trusted", "untrusted"]),
    "signature_of": st.sampled_from(["itself", "another", "missing"]),
    "update_id": st.sampled_from([EVIDENCE_ID, OFFERED_ID, 1]),
}


@st.composite
def evidence_parts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid proof (v1.1.0 signed instant) with zero to three parts made hostile."""
    parts: dict[str, Any] = {
        "claimed": "instant",
        "named": "v1.1.0",
        "served": "v1.1.0",
        "kind": UpdateType.INSTANT,
        "trust": "trusted",
        "signature_of": "itself",
        "update_id": EVIDENCE_ID,
    }
    for name in draw(st.lists(st.sampled_from(sorted(EVIDENCE_PARTS)), max_size=3, unique=True)):
        parts[name] = draw(EVIDENCE_PARTS[name])
    return parts


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=evidence_parts())
def test_the_device_follows_an_inherited_timing_only_when_a_signature_proves_it(
    parts: dict[str, Any],
    signer: Signer,
    packages: dict[tuple[str, UpdateType, str], Signed],
) -> None:
    claimed, named, served, kind = parts["claimed"], parts["named"], parts["served"], parts["kind"]
    trust, signature_of, update_id = parts["trust"], parts["signature_of"], parts["update_id"]
    if (served, kind, trust) not in packages:
        trust = "trusted"  # untrusted keys signed only v1.1.0 instant
    signed = packages[(served, kind, trust)]
    other = packages[("v1.1.5" if served != "v1.1.5" else "v1.1.0", kind, "trusted")]
    signature = {"itself": signed.signature, "another": other.signature, "missing": None}[
        signature_of
    ]
    proven = (
        trust == "trusted"
        and signature_of == "itself"
        and named == served
        and RUNNING < Version.parse(served) < OFFERED
        and RANK[kind] >= RANK[UpdateType(claimed)]
        and update_id != OFFERED_ID  # the offered update's own objects are the offered package
    )
    with tempfile.TemporaryDirectory() as temporary:
        world = World.create(Path(temporary))
        api = _server(
            packages, claimed=claimed, evidence=_evidence(update_id, named), serve_payload=False
        )
        if update_id != OFFERED_ID:
            base = f"/api/v1/updates/{update_id}"
            api.objects[f"{base}/manifest"] = (200, signed.manifest)
            if signature is not None:
                api.objects[f"{base}/signature"] = (200, signature)
        result = _agent(world, api, signer).run_once()

        assert result.decision is not None
        assert result.decision.install_now is proven, (result.decision, parts)
        if not proven:
            _assert_waits_for_the_window(result, api, world)


# -- the pure rules ------------------------------------------------------------------------

versions = st.builds(
    lambda a, b, c: Version.parse(f"v{a}.{b}.{c}"),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
)


@given(
    claimed=st.sampled_from(list(UpdateType)),
    offered=versions,
    running=st.one_of(st.none(), versions),
    named=versions,
    signed_version=versions,
    signed_type=st.sampled_from(list(UpdateType)),
)
def test_evidence_proves_a_timing_only_between_running_and_offered_and_at_least_as_urgent(
    claimed: UpdateType,
    offered: Version,
    running: Version | None,
    named: Version,
    signed_version: Version,
    signed_type: UpdateType,
) -> None:
    evidence = UrgencyEvidence(update_id=3, version=named, manifest_url="/m", signature_url="/s")
    reason = check_urgency_evidence(
        claimed,
        offered=offered,
        running=running,
        evidence=evidence,
        signed_version=signed_version,
        signed_type=signed_type,
    )
    expected = (
        signed_version == named
        and (running is None or running < signed_version)
        and signed_version < offered
        and RANK[signed_type] >= RANK[claimed]
    )
    assert (reason is None) is expected, reason


@given(
    offered=st.sampled_from(list(UpdateType)),
    signed=st.sampled_from(list(UpdateType)),
    proven=st.one_of(st.none(), st.sampled_from(list(UpdateType))),
    hours=st.integers(min_value=-48, max_value=48),
)
def test_the_device_never_acts_sooner_than_the_most_urgent_signature_allows(
    offered: UpdateType, signed: UpdateType, proven: UpdateType | None, hours: int
) -> None:
    directive = InstallDirective(
        update_id=1,
        version="v1.1.0",
        update_type=offered,
        status=UpdateStatus.PENDING,
        install_at=SERVER_TIME + timedelta(hours=hours),
        size=1,
        manifest_url="/m",
        signature_url="/s",
        download_url="/d",
    )
    bounded = bound_by_signed_type(
        directive,
        signed,
        now=SERVER_TIME,
        timezone="Europe/Berlin",
        device_uuid=DEVICE,
        proven_type=proven,
    )
    allowed = max(RANK[signed], RANK[proven] if proven is not None else 0)
    if RANK[offered] <= allowed:
        assert bounded is directive
    else:
        assert bounded.update_type is signed and bounded.urgency_from is None

"""Device identity: 256-bit tokens stored only as hashes, revocation, rotation, enrollment tokens."""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from security_helpers import ADMIN, START, World, assert_detail, bearer, register

from javia_core.errors import ConflictError
from javia_updates.backends.base import AuditEntry, EnrollmentError, NewDevice, NewEnrollmentToken
from javia_updates.backends.migrations import upgrade
from javia_updates.backends.sql_store import SQLStore, make_engine
from javia_updates.service import ENROLLMENT_TOKEN_PREFIX, hash_token
from shared_helpers import Clock


def heartbeat(client: TestClient, device: str, token: str) -> int:
    return client.post(
        f"/api/v1/devices/{device}/heartbeat", json={}, headers=bearer(token)
    ).status_code


def database_text(client: TestClient) -> bytes:
    """Every byte of the server's SQLite database files (main file and WAL)."""
    data_dir = Path(client.app.state.settings.data_dir)
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("javia.db*")))


# --------------------------------------------------------------------------- device tokens


def test_device_tokens_carry_256_random_bits_and_are_stored_only_as_hashes(
    client: TestClient,
) -> None:
    tokens = [register(client, f"pi-{n}")[1] for n in range(20)]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) * 8 >= 256
    stored = database_text(client)
    for token in tokens:
        assert token.encode() not in stored
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_the_token_is_shown_once_and_never_again(client: TestClient) -> None:
    device, token = register(client, "kitchen")
    shown = [
        client.get(f"/api/v1/devices/{device}", headers=ADMIN).text,
        client.get("/api/v1/devices/", headers=ADMIN).text,
        client.get("/api/v1/audit", headers=ADMIN).text,
    ]
    assert all(token not in text for text in shown)


def test_a_revoked_token_is_refused_at_once_and_rotation_readmits_the_device(
    world: World,
) -> None:
    client = world.client
    assert heartbeat(client, world.device_a, world.token_a) == 200
    revoked = client.post(f"/api/v1/devices/{world.device_a}/revoke", headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json()["token_revoked_at"] is not None
    assert heartbeat(client, world.device_a, world.token_a) == 401
    listed = client.get(f"/api/v1/devices/{world.device_a}", headers=ADMIN).json()
    assert listed["token_revoked_at"] is not None

    rotated = client.post(f"/api/v1/devices/{world.device_a}/rotate-token", headers=ADMIN)
    assert rotated.status_code == 200
    new_token = rotated.json()["device_token"]
    assert new_token != world.token_a
    assert heartbeat(client, world.device_a, new_token) == 200
    assert heartbeat(client, world.device_a, world.token_a) == 401
    assert (
        client.get(f"/api/v1/devices/{world.device_a}", headers=ADMIN).json()["token_revoked_at"]
        is None
    )
    # Its history stayed: the update assigned to A is still there.
    history = client.get(f"/api/v1/devices/{world.device_a}/updates", headers=bearer(new_token))
    assert [row["update_id"] for row in history.json()["items"]] == [world.update_id]


def test_rotating_a_token_invalidates_the_old_one(world: World) -> None:
    client = world.client
    new_token = client.post(f"/api/v1/devices/{world.device_b}/rotate-token", headers=ADMIN).json()[
        "device_token"
    ]
    assert heartbeat(client, world.device_b, world.token_b) == 401
    assert heartbeat(client, world.device_b, new_token) == 200
    assert new_token.encode() not in database_text(client)


def test_revoking_or_rotating_an_unknown_device_is_404(client: TestClient) -> None:
    for action in ("revoke", "rotate-token"):
        response = client.post(f"/api/v1/devices/{uuid.uuid4()}/{action}", headers=ADMIN)
        assert_detail(response, 404, "not registered")


def test_revocation_and_rotation_are_in_the_audit_log(world: World) -> None:
    client = world.client
    client.post(f"/api/v1/devices/{world.device_a}/rotate-token", headers=ADMIN)
    actions = [
        line["action"] for line in client.get("/api/v1/audit", headers=ADMIN).json()["items"]
    ]
    assert actions[0] == "device.token_rotate"  # newest first
    assert "device.token_revoke" in actions  # device C's, when the world was built


# --------------------------------------------------------------------------- enrollment tokens


def enroll(client: TestClient, token: str, **body: object) -> object:
    return client.post("/api/v1/devices/register", json=body, headers=bearer(token))


def create_token(client: TestClient, **body: object) -> dict:
    response = client.post("/api/v1/enrollment-tokens/", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def test_an_enrollment_token_registers_at_most_max_uses_devices(client: TestClient) -> None:
    created = create_token(client, max_uses=2, expires_in_seconds=3600, label="batch 7")
    token = created["token"]
    assert token.startswith(ENROLLMENT_TOKEN_PREFIX)
    assert token.encode() not in database_text(client)
    first, second = enroll(client, token, device_name="a"), enroll(client, token, device_name="b")
    assert (first.status_code, second.status_code) == (201, 201)
    # The registered device holds its own device token, which works; the enrollment token does not.
    device, device_token = first.json()["device_uuid"], first.json()["device_token"]
    assert heartbeat(client, device, device_token) == 200
    assert heartbeat(client, device, token) == 401
    assert_detail(enroll(client, token, device_name="c"), 401, "used up", "2 of 2")
    listed = client.get("/api/v1/enrollment-tokens/", headers=ADMIN).json()["items"]
    assert [(t["uses"], t["max_uses"], t["usable"]) for t in listed] == [(2, 2, False)]
    assert all("token" not in t for t in listed)


def test_an_enrollment_token_expires(client: TestClient, clock: Clock) -> None:
    token = create_token(client, max_uses=5, expires_in_seconds=3600)["token"]
    clock.advance(seconds=3599)
    assert enroll(client, token).status_code == 201
    clock.advance(seconds=1)
    assert_detail(enroll(client, token), 401, "expired")


def test_a_revoked_enrollment_token_registers_nothing(client: TestClient) -> None:
    created = create_token(client, max_uses=5)
    revoked = client.post(f"/api/v1/enrollment-tokens/{created['id']}/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["usable"] is False
    assert_detail(enroll(client, created["token"]), 401, "revoked")


def test_an_unknown_enrollment_token_is_401(client: TestClient) -> None:
    assert_detail(
        enroll(client, ENROLLMENT_TOKEN_PREFIX + "x" * 43), 401, "unknown enrollment token"
    )


def test_a_failed_registration_does_not_use_the_token_up(client: TestClient) -> None:
    token = create_token(client, max_uses=1)["token"]
    taken, _ = register(client, "taken")
    assert_detail(enroll(client, token, device_uuid=taken), 409, "already registered")
    assert enroll(client, token).status_code == 201


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"max_uses": 0}, "max_uses"),
        ({"expires_in_seconds": 10}, "expires_in_seconds"),
        ({"expires_in_seconds": 10**9}, "expires_in_seconds"),
        ({"label": "x" * 201}, "label"),
        ({"token": "chosen-by-me"}, "token"),
    ],
)
def test_bad_enrollment_token_requests_are_422(
    client: TestClient, body: dict, fragment: str
) -> None:
    assert_detail(
        client.post("/api/v1/enrollment-tokens/", json=body, headers=ADMIN), 422, fragment
    )


def _store(url: str) -> SQLStore:
    upgrade(url)
    return SQLStore(make_engine(url))


def _race(store: SQLStore, token_hash: str, attempts: int) -> tuple[int, int]:
    """``attempts`` threads register at once with one token; (registered, refused)."""
    barrier = threading.Barrier(attempts)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        device = NewDevice(uuid.uuid4(), None, "UTC", {}, hash_token(uuid.uuid4().hex))
        try:
            store.create_device_with_enrollment(
                token_hash, device, now=START, audit=AuditEntry("enrollment", "device.register")
            )
            result = "ok"
        except EnrollmentError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes.count("ok"), outcomes.count("refused")


@pytest.fixture(params=["sqlite", "postgresql"])
def race_store(request: pytest.FixtureRequest, tmp_path: Path) -> SQLStore:
    if request.param == "sqlite":
        store = _store(f"sqlite:///{tmp_path / 'race.db'}")
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        store = _store(cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}"))
    yield store
    store.close()


def test_concurrent_registrations_never_exceed_max_uses(race_store: SQLStore) -> None:
    token = "javia_enroll_race-" + uuid.uuid4().hex
    race_store.create_enrollment_token(
        NewEnrollmentToken(hash_token(token), "race", START + timedelta(hours=1), max_uses=3),
        now=START,
        audit=AuditEntry("admin", "enrollment_token.create"),
    )
    registered, refused = _race(race_store, hash_token(token), attempts=12)
    assert (registered, refused) == (3, 9)
    tokens = race_store.list_enrollment_tokens(limit=10, offset=0).items
    assert [(t.uses, t.max_uses) for t in tokens] == [(3, 3)]


def test_the_store_refuses_a_duplicate_uuid_without_counting_a_use(tmp_path: Path) -> None:
    store = _store(f"sqlite:///{tmp_path / 'dup.db'}")
    try:
        token = "javia_enroll_dup"
        store.create_enrollment_token(
            NewEnrollmentToken(hash_token(token), None, START + timedelta(hours=1), max_uses=1),
            now=START,
            audit=AuditEntry("admin", "enrollment_token.create"),
        )
        existing = uuid.uuid4()
        store.create_device(
            NewDevice(existing, None, "UTC", {}, hash_token("a")),
            now=START,
            audit=AuditEntry("admin", "device.register"),
        )
        with pytest.raises(ConflictError):
            store.create_device_with_enrollment(
                hash_token(token),
                NewDevice(existing, None, "UTC", {}, hash_token("b")),
                now=START,
                audit=AuditEntry("enrollment", "device.register"),
            )
        assert store.list_enrollment_tokens(limit=1, offset=0).items[0].uses == 0
    finally:
        store.close()


def test_enrollment_tokens_open_only_registration(world: World) -> None:
    # Covered cell by cell in the authorization matrix; here the end-to-end story:
    # a device registered with an enrollment token is an ordinary device.
    client = world.client
    registered = enroll(client, world.enrollment_token, device_name="new-pi").json()
    assert client.get("/api/v1/devices/", headers=bearer(world.enrollment_token)).status_code == 403
    assert heartbeat(client, registered["device_uuid"], registered["device_token"]) == 200
    audit = client.get("/api/v1/audit", headers=ADMIN).json()["items"]
    assert audit[0]["actor"] == "enrollment" and audit[0]["action"] == "device.register"
    assert audit[0]["details"]["enrollment_token_id"] == world.enrollment_id

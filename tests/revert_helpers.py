"""A small fleet driven over the HTTP API, for the revert tests (in-process app or server process).

Works with any client whose ``post(path, json=..., headers=...)`` answers like
``httpx`` (``fastapi.testclient.TestClient`` and ``httpx.Client`` both do).
"""

from __future__ import annotations

from typing import Any

from shared_helpers import bearer


class HttpFleet:
    """Devices registered through ``client`` as the operator (``admin``: the X-API-Key header)."""

    def __init__(self, client: Any, admin: dict[str, str]) -> None:
        self.client = client
        self.admin = admin
        self.tokens: dict[str, str] = {}

    def register(self, name: str, version: str) -> str:
        """Register a device named ``name`` that heartbeats running ``version``; its uuid."""
        response = self.client.post(
            "/api/v1/devices/register", json={"device_name": name}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        body = response.json()
        self.tokens[body["device_uuid"]] = body["device_token"]
        self.heartbeat(body["device_uuid"], version)
        return str(body["device_uuid"])

    def heartbeat(self, device: str, version: str) -> None:
        """One heartbeat of ``device`` reporting ``version`` as its current one."""
        response = self.client.post(
            f"/api/v1/devices/{device}/heartbeat",
            json={"current_version": version},
            headers=bearer(self.tokens[device]),
        )
        assert response.status_code == 200, response.text

    def report(self, device: str, update_id: int, *statuses: str) -> None:
        """``device`` reports each of ``statuses`` on ``update_id``, in order."""
        for status in statuses:
            response = self.client.post(
                f"/api/v1/devices/{device}/updates/{update_id}/status",
                json={"status": status},
                headers=bearer(self.tokens[device]),
            )
            assert response.status_code == 200, response.text

    def install(self, device: str, update_id: int, version: str) -> None:
        """``device`` installs ``update_id`` successfully and then runs ``version``."""
        self.report(device, update_id, "downloading", "installing", "completed")
        self.heartbeat(device, version)

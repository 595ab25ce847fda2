"""The tags routes of the admin API: change, list by tag, register with tags, publish by tag.

Bad input is a 422 naming the field and the expected form, and stores nothing.
"""

from __future__ import annotations

import uuid

import pytest
from test_server_api import assert_detail


def test_tags_change_list_and_register(client, admin, device):
    uuid_text = device["uuid"]
    registered = client.post(
        "/api/v1/devices/register",
        json={"device_name": "b", "tags": ["beta", "beta"]},
        headers=admin,
    )

    changed = client.post(
        f"/api/v1/devices/{uuid_text}/tags", json={"add": ["kitchen", "beta"]}, headers=admin
    )
    kitchen = client.get("/api/v1/devices/", params={"tag": "kitchen"}, headers=admin).json()
    beta = client.get("/api/v1/devices/", params={"tag": "beta"}, headers=admin).json()

    assert registered.status_code == 201
    assert changed.status_code == 200 and changed.json()["tags"] == ["beta", "kitchen"]
    assert [item["device_uuid"] for item in kitchen["items"]] == [uuid_text]
    assert beta["total"] == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("post", "/api/v1/devices/register", {"tags": ["Kitchen"]}, "'Kitchen' is not valid"),
        ("post", "/api/v1/devices/register", {"tags": "kitchen"}, "tags"),
        ("post", "/api/v1/devices/{uuid}/tags", {"add": ["-x"]}, "'-x' is not valid"),
        (
            "post",
            "/api/v1/devices/{uuid}/tags",
            {"remove": ["a" * 33]},
            "(33 characters, at most 32)",
        ),
        ("post", "/api/v1/devices/{uuid}/tags", {"add": ["a"], "extra": 1}, "extra"),
        ("get", "/api/v1/devices/?tag=UP", None, "'UP' is not valid"),
        (
            "post",
            "/api/v1/updates/plan",
            {"update_type": "scheduled", "version": "v1.1.0", "tags": ["a b"]},
            "'a b' is not valid",
        ),
    ],
)
def test_malformed_tags_are_422_naming_the_tag(client, admin, device, method, path, body, fragment):
    url = path.replace("{uuid}", device["uuid"])
    response = getattr(client, method)(
        url, headers=admin, **({} if body is None else {"json": body})
    )
    assert response.status_code == 422, response.text
    assert fragment in str(response.json()["detail"])
    listed = client.get("/api/v1/devices/", headers=admin).json()
    assert listed["total"] == 1 and listed["items"][0]["tags"] == []


def test_tags_of_an_unknown_device_are_404(client, admin):
    response = client.post(
        f"/api/v1/devices/{uuid.uuid4()}/tags", json={"add": ["a"]}, headers=admin
    )
    assert_detail(response, 404, "not registered")


def test_publish_by_an_unknown_or_malformed_tag_is_422_and_publishes_nothing(
    client, admin, device, publish
):
    client.post(f"/api/v1/devices/{device['uuid']}/tags", json={"add": ["kitchen"]}, headers=admin)

    unknown, _ = publish("v1.1.0", "scheduled", data={"tags": "kitchen,garden"})
    malformed, _ = publish("v1.1.0", "scheduled", data={"tags": "kitchen,Garden"})
    published, _ = publish("v1.1.0", "scheduled", data={"tags": "kitchen"})

    assert_detail(unknown, 422, "unknown tag garden: no device has it")
    assert_detail(malformed, 422, "tags:", "'Garden' is not valid")
    assert published.status_code == 201, published.text
    assert published.json()["status_counts"] == {"pending": 1}
    assert client.get("/api/v1/updates/", headers=admin).json()["total"] == 1

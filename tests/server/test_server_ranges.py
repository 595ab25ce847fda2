"""Resumable downloads: HTTP Range (RFC 9110 section 14) on /updates/{id}/download."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_updates.server.ranges import RangeNotSatisfiableError, parse_byte_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 99)),
        ("bytes=10-", (10, 99)),
        ("bytes=10-19", (10, 19)),
        ("bytes=99-99", (99, 99)),
        ("bytes=90-500", (90, 99)),  # an end past the object is clamped
        ("bytes=-10", (90, 99)),  # the last 10 bytes
        ("bytes=-500", (0, 99)),
        ("BYTES=5-6", (5, 6)),
        ("bytes=20-10", None),  # invalid: ignored, whole object
        ("bytes=0-1,5-6", None),  # several ranges: ignored
        ("items=0-10", None),
        ("bytes=a-b", None),
        ("bytes=", None),
        ("bytes=-", None),
    ],
)
def test_parse_byte_range(header, expected):
    assert parse_byte_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=5000-", "bytes=-0"])
def test_ranges_past_the_end_are_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiableError):
        parse_byte_range(header, 100)


def test_any_range_of_an_empty_object_is_unsatisfiable():
    with pytest.raises(RangeNotSatisfiableError):
        parse_byte_range("bytes=0-", 0)


@given(size=st.integers(1, 10_000), first=st.integers(0, 20_000), length=st.integers(0, 20_000))
def test_a_satisfiable_range_always_lies_inside_the_object(size, first, length):
    header = f"bytes={first}-{first + length}"
    try:
        result = parse_byte_range(header, size)
    except RangeNotSatisfiableError:
        assert first >= size
        return
    assert result is not None
    start, end = result
    assert start == first and 0 <= start <= end < size and end == min(first + length, size - 1)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def published(client, admin, make_package):  # type: ignore[no-untyped-def]
    package = make_package("v1.1.0", files={"model.bin": os.urandom(200_000)})
    response = client.post("/api/v1/updates/", files=package.files(), headers=admin)
    assert response.status_code == 201
    return f"/api/v1/updates/{response.json()['id']}/download", package.payload


def test_full_download_advertises_ranges_and_an_etag(client, admin, published):
    url, payload = published
    response = client.get(url, headers=admin)
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(payload))
    assert response.headers["etag"].strip('"') == hashlib.sha256(payload).hexdigest()


def test_resume_from_an_offset_is_206_with_the_exact_content_range(client, admin, published):
    url, payload = published
    size = len(payload)
    response = client.get(url, headers={**admin, "Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    assert response.headers["content-length"] == str(size - 1000)
    assert response.content == payload[1000:]


def test_a_closed_range_is_206_with_exactly_those_bytes(client, admin, published):
    url, payload = published
    response = client.get(url, headers={**admin, "Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 10-19/{len(payload)}"
    assert response.content == payload[10:20]


def test_resumed_parts_reassemble_the_archive(client, admin, published):
    url, payload = published
    cut = len(payload) // 3
    head = client.get(url, headers={**admin, "Range": f"bytes=0-{cut - 1}"}).content
    tail = client.get(url, headers={**admin, "Range": f"bytes={cut}-"}).content
    assert head + tail == payload


def test_range_past_the_end_is_416_with_the_size(client, admin, published):
    url, payload = published
    response = client.get(url, headers={**admin, "Range": f"bytes={len(payload)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(payload)}"
    assert "outside the payload" in response.json()["detail"]


def test_if_range_with_another_etag_sends_the_whole_archive(client, admin, published):
    url, payload = published
    response = client.get(url, headers={**admin, "Range": "bytes=100-", "If-Range": '"0000"'})
    assert response.status_code == 200 and response.content == payload
    etag = response.headers["etag"]
    matching = client.get(url, headers={**admin, "Range": "bytes=100-", "If-Range": etag})
    assert matching.status_code == 206 and matching.content == payload[100:]


def test_unparsable_range_is_ignored_and_the_whole_archive_sent(client, admin, published):
    url, payload = published
    response = client.get(url, headers={**admin, "Range": "bytes=5-1"})
    assert response.status_code == 200 and response.content == payload

"""Property: whatever the cut point and however the server answers a resume, the
downloaded file is exactly the signed bytes, or the download is refused — never a
corrupt or oversized file (ANCHORS.md, "Downloads")."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from javia_agent.client import DeviceClient
from javia_agent.errors import DownloadError, DownloadTooLargeError
from javia_agent.transport import RetryPolicy

PATH = "/api/v1/updates/1/download"
UUID = "00000000-0000-0000-0000-0000000000e1"
RESUME_ANSWERS = ("honour", "ignore_range", "wrong_start", "refuse_416")


def _server(data: bytes, cut: int, resume_answer: str, extra: bytes = b""):
    """A MockTransport handler: the first answer breaks after ``cut`` bytes."""
    state = {"requests": 0}

    def body(chunk: bytes, fail: bool) -> Iterator[bytes]:
        for start in range(0, len(chunk), 4096):
            yield chunk[start : start + 4096]
        if fail:
            raise httpx.ReadError("connection reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        state["requests"] += 1
        full = data + extra
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if state["requests"] == 1:
            return httpx.Response(200, content=body(full[:cut], fail=True))
        if match and resume_answer == "honour":
            start = int(match.group(1))
            headers = {"Content-Range": f"bytes {start}-{len(full) - 1}/{len(full)}"}
            return httpx.Response(206, headers=headers, content=body(full[start:], fail=False))
        if match and resume_answer == "wrong_start":
            start = max(0, int(match.group(1)) - 7)
            headers = {"Content-Range": f"bytes {start}-{len(full) - 1}/{len(full)}"}
            return httpx.Response(206, headers=headers, content=body(full[start:], fail=False))
        if match and resume_answer == "refuse_416":
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(full)}"})
        return httpx.Response(200, content=body(full, fail=False))

    return handler


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=20_000),
    cut_fraction=st.floats(min_value=0.0, max_value=0.999),
    resume_answer=st.sampled_from(RESUME_ANSWERS),
)
def test_resumed_downloads_are_exact(data: bytes, cut_fraction: float, resume_answer: str) -> None:
    cut = int(len(data) * cut_fraction)
    transport = httpx.MockTransport(_server(data, cut, resume_answer))
    with (
        tempfile.TemporaryDirectory() as directory,
        DeviceClient(
            "https://u.example.org",
            device_uuid=UUID,
            token="t",
            transport=transport,
            retry=RetryPolicy(attempts=1),  # one attempt per call: the resume is the next call
        ) as client,
    ):
        dest = Path(directory) / "payload.tar.gz"
        with pytest.raises(DownloadError):
            client.download_payload(PATH, dest, len(data))
        assert (Path(directory) / "payload.tar.gz.partial").read_bytes() == data[:cut]
        client.download_payload(PATH, dest, len(data))
        assert dest.read_bytes() == data


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=20_000),
    extra=st.binary(min_size=1, max_size=5_000),
    cut_fraction=st.floats(min_value=0.0, max_value=0.999),
    resume_answer=st.sampled_from(RESUME_ANSWERS),
)
def test_more_than_the_signed_size_is_never_kept(
    data: bytes, extra: bytes, cut_fraction: float, resume_answer: str
) -> None:
    cut = int(len(data) * cut_fraction)
    transport = httpx.MockTransport(_server(data, cut, resume_answer, extra=extra))
    with (
        tempfile.TemporaryDirectory() as directory,
        DeviceClient(
            "https://u.example.org",
            device_uuid=UUID,
            token="t",
            transport=transport,
            retry=RetryPolicy(attempts=1),  # one attempt per call: the resume is the next call
        ) as client,
    ):
        dest = Path(directory) / "payload.tar.gz"
        with pytest.raises(DownloadError):
            client.download_payload(PATH, dest, len(data))
        with pytest.raises(DownloadTooLargeError):
            client.download_payload(PATH, dest, len(data))
        assert not dest.exists()
        partial = Path(directory) / "payload.tar.gz.partial"
        assert not partial.exists() or partial.stat().st_size <= len(data)


def _cutting_server(data: bytes, cuts: list[int], honour_range: bool):
    """Each answer breaks at the next cut offset; counts the body bytes it sent."""
    pending = sorted(set(cuts))
    sent = {"bytes": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        start = int(match.group(1)) if match and honour_range else 0
        stop = len(data)
        upcoming = [cut for cut in pending if cut > start]
        if upcoming:
            stop = upcoming[0]
            pending.remove(stop)
        chunk = data[start:stop]
        sent["bytes"] += len(chunk)

        def body() -> Iterator[bytes]:
            yield chunk
            if stop < len(data):
                raise httpx.ReadError("connection reset by peer")

        if match and honour_range:
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            return httpx.Response(206, headers=headers, content=body())
        return httpx.Response(200, content=body())

    return handler, sent


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=21, max_size=30_000),
    seeds=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=20, max_size=20),
)
def test_twenty_random_cuts_always_end_complete_with_little_overhead(
    data: bytes, seeds: list[float]
) -> None:
    """ISSUE: a download cut at 20 random offsets ends complete with ≤ 1.1 × the size sent."""
    cuts = [1 + int(seed * (len(data) - 1)) for seed in seeds]
    handler, sent = _cutting_server(data, cuts, honour_range=True)
    with (
        tempfile.TemporaryDirectory() as directory,
        DeviceClient(
            "https://u.example.org",
            device_uuid=UUID,
            token="t",
            transport=httpx.MockTransport(handler),
            sleep=lambda seconds: None,
        ) as client,
    ):
        dest = Path(directory) / "payload.tar.gz"
        client.download_payload(PATH, dest, len(data))
        assert dest.read_bytes() == data
    assert sent["bytes"] <= 1.1 * len(data)

"""A client that disconnects in the middle of an upload (Ctrl-C during ``javia publish``).

Against a real server process: the server logs one line saying so, never a
traceback (it used to log ``ClientDisconnect`` twice, in full), keeps no part
of the upload and goes on serving.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from shared_helpers import server_process

API_KEY = "upload-disconnect-admin-key-0123"


def _start_upload_and_hang_up(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    part = (
        b'--b\r\nContent-Disposition: form-data; name="payload"; filename="payload.tar.gz"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    head = (
        b"POST /api/v1/updates/ HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"X-API-Key: " + API_KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(head + part + b"\0" * 256 * 1024)  # 256 KiB of 50 MB, then Ctrl-C
        time.sleep(0.3)


def test_a_client_gone_mid_upload_is_one_log_line_and_leaves_nothing(tmp_path: Path) -> None:
    with server_process(tmp_path, API_KEY) as (url, log):
        _start_upload_and_hang_up(url)
        deadline = time.monotonic() + 10
        while "disconnected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/api/v1/health").status_code == 200  # still serving
        text = log.read_text()

    lines = [line for line in text.splitlines() if "disconnected" in line]
    assert lines == [
        "POST /api/v1/updates/: 127.0.0.1 disconnected before the request body was complete; "
        "nothing was stored"
    ], text
    assert "Traceback" not in text and "ClientDisconnect" not in text, text
    assert list((tmp_path / "data" / "uploads").iterdir()) == []

"""The rollout commands of the operator CLI against a real server process, and publish's
rollout options checked before anything is built: one red line on refusal, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from javia_devtools.demo import example_app_dir, javia_command
from javia_updates.admin_client import AdminClient
from shared_helpers import server_process

API_KEY = "rollout-cli-admin-key-0123456789"


def javia(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    return subprocess.run(
        [*javia_command(), *args],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def one_red_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--phases", "10,5,100"], "--phases: phases must increase: 5 follows 10"),
        (["--phases", "1,abc,100"], "--phases: invalid phase 'abc'"),
        (
            ["--phases", "1,10"],
            "--phases: the last phase must be 100 (cumulative percentages such as 1,10,50,100), "
            "got 10",
        ),
        (["--phase-soak", "30"], "--phase-soak: invalid duration '30'"),
        (["--phase-soak", "99d"], "--phase-soak: phase soak '99d' is too long: at most 30d"),
        (
            ["--halt-failure-rate", "0"],
            "--halt-failure-rate: halt failure rate must be a percentage above 0 and at most 100",
        ),
        (["--halt-failure-rate", "abc"], "--halt-failure-rate: 'abc' is not a percentage"),
        (["--halt-min-devices", "x"], "--halt-min-devices: 'x' is not a whole number of devices"),
        (
            ["--halt-min-devices", "99999999999999999999999"],
            "--halt-min-devices: halt minimum must be a whole number of devices from 1 to 1000000",
        ),
    ],
)
def test_publish_refuses_bad_rollout_options_before_building(
    tmp_path: Path, options: list[str], expected: str
) -> None:
    app_dir = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    result = javia(
        "publish", str(app_dir), "--version", "v9.0.0", "--type", "scheduled", *options,
        "--server", "http://127.0.0.1:9", "--api-key", API_KEY,
    )  # fmt: skip
    assert expected in one_red_line(result)
    assert result.returncode == 1  # the house rule, not the usage error's 2
    assert (app_dir / "VERSION").read_text().strip() != "v9.0.0"


def test_pause_approve_and_refusals_through_the_cli(
    tmp_path: Path, make_package: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    package = make_package("v1.1.0", "scheduled")
    paths = {}
    for name, data in (
        ("manifest", package.manifest),
        ("signature", package.signature),
        ("payload", package.payload),
    ):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    with server_process(tmp_path, API_KEY) as (url, log):
        with AdminClient(url, API_KEY) as client:
            client.register_device(device_name="kitchen")  # one device still to install
            published = client.publish(
                manifest_path=paths["manifest"],
                signature_path=paths["signature"],
                payload_path=paths["payload"],
                rollout={"phase_soak_seconds": "600", "require_approval": "true"},
            )
        assert published.rollout is not None
        assert published.rollout.state.value == "awaiting_approval"
        common = ("--server", url, "--api-key", API_KEY)
        listed = javia("updates", "list", *common)
        assert "awaiting_approval" in listed.stdout, listed.stdout + listed.stderr
        shown = javia("updates", "show", "v1.1.0", *common).stdout
        assert "rollout: awaiting_approval: awaiting approval: nothing offered" in shown
        assert "soak 10m," in shown and " open" not in shown.split("\n")[3]

        refused = javia("updates", "pause", "v1.1.0", *common)
        assert one_red_line(refused).endswith(
            "v1.1.0: pause refused: the rollout has not started: approve it or cancel it"
        )
        approved = javia("updates", "approve", "v1.1.0", "--reason", "checked", "--json", *common)
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["rollout"]["state"] == "active"

        paused = javia("updates", "pause", "v1.1.0", *common)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.strip() == "v1.1.0: paused, phase 1 of 1 (100%)"
        again = javia("updates", "pause", "v1.1.0", *common)
        assert again.returncode == 0 and again.stdout.strip() == paused.stdout.strip()

        cancelled = javia("updates", "cancel", "v1.1.0", "--reason", "wrong build", *common)
        assert cancelled.stdout.strip() == "v1.1.0: cancelled, phase 1 of 1 (100%)"
        unknown = javia("updates", "resume", "v7.7.7", *common)
        assert "v7.7.7" in one_red_line(unknown)
    assert "Traceback" not in log.read_text()  # the periodic evaluation included


def test_publish_dry_run_plans_with_the_rollout_options(tmp_path: Path) -> None:
    app_dir = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    with server_process(tmp_path, API_KEY) as (url, _):
        with AdminClient(url, API_KEY) as client:
            client.register_device(device_name="kitchen")
        result = javia(
            "publish", str(app_dir), "--version", "v9.0.0", "--type", "instant", "--dry-run",
            "--require-approval", "--phases", "1,100", "--json", "--server", url,
            "--api-key", API_KEY,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (plan,) = json.loads(result.stdout)
    assert plan["phase"] in (0, 1)
    assert plan["reason"].startswith("waits for approval, then ")

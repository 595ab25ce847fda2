"""The operator CLI on bad input: one red line, a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from javia_devtools.demo import example_app_dir, free_port, javia_command


def javia(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    environment.update(env or {})
    return subprocess.run(
        [*javia_command(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    target = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def assert_one_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("bad", ["1.2.3", "v1.2", "v01.2.3", "v1.2.3-beta"])
def test_publish_refuses_malformed_versions_with_the_expected_form(app_dir: Path, bad: str):
    result = javia(
        "publish", str(app_dir), "--version", bad, "--type", "scheduled", "--output", "x"
    )
    assert_one_clean_error(result, bad, "vX.Y.Z")


def test_publish_refuses_unknown_update_type_naming_the_valid_ones(app_dir: Path):
    result = javia(
        "publish", str(app_dir), "--version", "v1.0.1", "--type", "weekly", "--output", "x"
    )
    assert_one_clean_error(result, "weekly", "scheduled", "urgent", "instant")


def test_publish_refuses_an_apt_name_that_looks_like_an_option(app_dir: Path):
    result = javia(
        "publish",
        str(app_dir),
        "--version",
        "v1.0.1",
        "--type",
        "scheduled",
        "--system-packages",
        "sox,--allow-unauthenticated",
        "--output",
        "x",
    )
    assert_one_clean_error(result, "--allow-unauthenticated")


def test_publish_refuses_a_version_older_than_the_app(app_dir: Path):
    (app_dir / "VERSION").write_text("v2.0.0\n")
    result = javia(
        "publish", str(app_dir), "--version", "v1.9.9", "--type", "scheduled", "--output", "x"
    )
    assert_one_clean_error(result, "v1.9.9", "v2.0.0")


def test_instant_publish_without_a_terminal_needs_yes(app_dir: Path, tmp_path: Path):
    key = tmp_path / "k"
    assert javia("keys", "generate", "--output", str(key)).returncode == 0
    result = javia(
        "publish",
        str(app_dir),
        "--version",
        "v1.0.1",
        "--type",
        "instant",
        "--key",
        str(key / "javia-signing.pem"),
        "--api-key",
        "x",
        "--server",
        "http://127.0.0.1:9",
    )
    assert_one_clean_error(result, "--yes")
    assert (app_dir / "VERSION").read_text().strip() == "v1.0.0"


def test_unreachable_server_is_one_line(tmp_path: Path):
    port = free_port()  # nothing listens there
    result = javia("devices", "list", "--server", f"http://127.0.0.1:{port}", "--api-key", "k")
    assert_one_clean_error(result, f"127.0.0.1:{port}")


def test_missing_api_key_is_one_line():
    result = javia("updates", "list", "--server", "http://127.0.0.1:9")
    assert_one_clean_error(result, "JAVIA_API_KEY")


def test_output_writes_a_verifiable_package_and_leaves_version_alone(app_dir: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    generated = javia("keys", "generate", "--output", str(keys))
    assert generated.returncode == 0, generated.stderr
    out = tmp_path / "pkg"
    result = javia(
        "publish",
        str(app_dir),
        "--version",
        "v1.0.1",
        "--type",
        "urgent",
        "--key",
        str(keys / "javia-signing.pem"),
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "payload.tar.gz",
    ]
    assert (app_dir / "VERSION").read_text().strip() == "v1.0.0", "nothing was published"
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    shutil.copy(keys / "javia-signing.pub", keyring)
    verified = javia(
        "agent", "verify", str(out), "--keyring", str(keyring), "--current-version", "v1.0.0"
    )
    assert verified.returncode == 0, verified.stderr
    refused = javia(
        "agent", "verify", str(out), "--keyring", str(keyring), "--current-version", "v1.0.1"
    )
    assert refused.returncode == 1
    assert "not newer" in refused.stderr + refused.stdout


def test_publish_refuses_an_app_without_version_or_content(tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    result = javia(
        "publish", str(bare), "--version", "v1.0.0", "--type", "scheduled", "--output", "x"
    )
    assert_one_clean_error(result, "VERSION")
    (bare / "VERSION").write_text("v0.1.0\n")
    result = javia(
        "publish", str(bare), "--version", "v1.0.0", "--type", "scheduled", "--output", "x"
    )
    assert_one_clean_error(result, "empty")


def test_malformed_server_url_is_one_line():
    result = javia("devices", "list", "--server", "http://[::1", "--api-key", "k")
    assert_one_clean_error(result, "invalid server URL")


def test_dry_run_and_output_exclude_each_other(app_dir: Path):
    result = javia(
        "publish",
        str(app_dir),
        "--version",
        "v1.0.1",
        "--type",
        "scheduled",
        "--dry-run",
        "--output",
        "x",
    )
    assert_one_clean_error(result, "--dry-run", "--output")


def test_generate_refuses_to_overwrite_and_names_force(tmp_path: Path):
    assert javia("keys", "generate", "--output", str(tmp_path)).returncode == 0
    result = javia("keys", "generate", "--output", str(tmp_path))
    assert_one_clean_error(result, "--force")


def test_an_empty_or_too_long_tag_is_named_and_measured() -> None:
    from javia_core.models import check_tag

    with pytest.raises(ValueError, match=r"tag '' is not valid"):
        check_tag("")
    with pytest.raises(ValueError, match=r"is too long \(40 characters, at most 32\)"):
        check_tag("k" * 40)
    with pytest.raises(ValueError, match=r"tag 'Kitchen' is not valid"):
        check_tag("Kitchen")
    with pytest.raises(ValueError, match=r"tag 'K{37}\.\.\.' is not valid"):
        check_tag("K" * 50)


def test_devices_tag_with_an_empty_tag_says_the_tag_is_invalid() -> None:
    result = javia(
        "devices", "tag", "3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b", "--add", "",
        "--server", "http://127.0.0.1:9", "--api-key", "k",
    )  # fmt: skip
    assert_one_clean_error(result, "invalid --add: tag '' is not valid")


@pytest.mark.parametrize("reason", ["two\nlines", "tab\there", "x" * 501])
def test_a_rollout_command_reason_must_be_one_short_line(reason: str) -> None:
    result = javia(
        "updates", "pause", "v1.2.0", "--reason", reason,
        "--server", "http://127.0.0.1:9", "--api-key", "k",
    )  # fmt: skip
    assert_one_clean_error(result, "--reason")
    assert result.returncode == 1

"""``javia updates revert VERSION``: roll the devices running a bad release forward to healthy content.

One command (docs/rollouts.md, "Revert"), each step a progress line:

1. ask the server for the revert source (the devices running the bad version
   and their last healthy release, :mod:`javia_updates.service.revert`);
2. download the healthy release's package with the admin key;
3. verify it against its signed manifest with the operator's public key;
4. unpack it and build it as a new version (the highest published version's
   patch + 1), signed on this machine (:mod:`javia_updates.repackaging`);
5. publish that to the affected devices with the chosen type (default urgent);
6. cancel the bad release's rollout.

Nothing changes on the server before step 5. Every failure is one red line and
a non-zero exit; if the publish succeeded and the cancel failed, the line says
so and gives the command that finishes the revert.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import typer

from javia_core.errors import JaviaError
from javia_core.manifest import key_id_for
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    OperatorSettings,
    ServerOption,
    admin_client,
    check_reason,
    choices,
    console,
    error_console,
    fail,
    friendly_errors,
    markup_safe,
    print_json,
)
from javia_updates.cli.publish import _interactive, _load_key, _upload, _warn

__all__ = ["revert_update"]


def _with_article(kind: UpdateType) -> str:
    return ("an " if kind.value[0] in "aeiou" else "a ") + kind.value


def revert_update(
    version: str = typer.Argument(..., help="The bad version, vX.Y.Z."),
    update_type: str = typer.Option(
        "urgent",
        "--type",
        help="How the new version installs: urgent, instant or scheduled.",
        autocompletion=choices(*UpdateType),
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
    key: Path | None = typer.Option(
        None, "--key", envvar="JAVIA_SIGNING_KEY", help="Private signing key (PEM)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Publish the last healthy content as a new version to the devices running VERSION, then
    cancel VERSION's rollout (a roll-forward: no device downgrades)."""
    with friendly_errors():
        bad_version = Version.parse(version)
        kind = UpdateType.parse(update_type)
    check_reason(reason)
    key_path = key or OperatorSettings().signing_key
    if not key_path.exists():
        fail(
            f"signing key {key_path} not found: create one with 'javia keys generate' or pass --key"
        )
    out = error_console if as_json else console

    def step(text: str) -> None:
        out.print(f"[dim]·[/dim] {markup_safe(text)}", highlight=False, soft_wrap=True)

    with friendly_errors(), admin_client(server, api_key) as client:
        source = client.revert_source(str(bad_version))
        healthy = source.healthy_version
        newest = client.list_updates(limit=1)
        highest = Version.parse(newest[0].version) if newest else bad_version
        new_version = max(highest, bad_version).bump("patch")
        devices = [str(device) for device in source.devices]
        step(f"{len(devices)} device(s) run {bad_version}; their last healthy release is {healthy}")
        step(
            f"plan: publish {new_version} with the content of {healthy} to those devices "
            f"as {_with_article(kind)} update, then cancel {bad_version}"
        )
        if not yes:
            if not _interactive():
                fail("revert publishes a new version: pass --yes to confirm")
            if not typer.confirm("Go ahead?", default=False):
                fail("cancelled, nothing published")
        private_key = _load_key(key_path)
        public_key = private_key.public_key()
        description = f"Revert of {bad_version}: the content of {healthy}" + (
            f" ({reason})" if reason else ""
        )

        from javia_updates.admin_client import ApiError
        from javia_updates.repackaging import repackage, verify_downloaded_package

        with tempfile.TemporaryDirectory(prefix="javia-revert-") as workspace_name:
            workspace = Path(workspace_name)
            download = client.download_package(healthy, workspace / "download")
            step(f"downloaded {healthy} (update {source.healthy_update_id})")
            old = verify_downloaded_package(download, public_key)
            step(f"verified {healthy} with your key {key_id_for(public_key)}")
            built = repackage(
                download,
                old,
                workspace / "build",
                version=new_version,
                update_type=kind,
                description=description,
                private_key=private_key,
                now=datetime.now(UTC),
            )
            _warn(built.warnings)
            step(
                f"built and signed {new_version}: {len(built.manifest.files)} files, "
                f"{built.manifest.archive.size} bytes"
            )
            try:
                # one phase: the affected devices all need it
                published = _upload(built, kind, devices, {}, server, api_key, quiet=as_json)
            except JaviaError as error:
                if isinstance(error, ApiError) and error.status_code == 409:
                    # Another revert may have won the race: say so rather than "publish higher".
                    client.revert_source(str(bad_version))  # its 409 names the winner
                if isinstance(error, ApiError) and error.status_code < 500:
                    raise  # refused: nothing was published
                fail(
                    f"publishing {new_version} failed: {error}; nothing else was done. It may "
                    f"or may not be published: check with 'javia updates show {new_version}'"
                )
        step(f"published {new_version} as update {published.id} to {len(devices)} device(s)")
        if published.rollout is not None and published.rollout.state == "awaiting_approval":
            step(f"{new_version} awaits approval: javia updates approve {new_version}")
    try:
        with admin_client(server, api_key) as client:
            cancelled = client.rollout_command(str(bad_version), "cancel", reason)
    except JaviaError as error:
        fail(
            f"published {new_version} (update {published.id}) to {len(devices)} device(s), "
            f"but cancelling {bad_version} failed: {error}; finish the revert with "
            f"'javia updates cancel {bad_version}'"
        )
    step(f"cancelled the rollout of {bad_version}")
    if as_json:
        print_json({"revert_source": source, "published": published, "cancelled": cancelled})
        return
    console.print(
        f"[green]reverted[/green] {bad_version}: {new_version} (the content of "
        f"{markup_safe(healthy)}) goes to {len(devices)} device(s) as {_with_article(kind)} update. "
        f"Follow it with: javia updates show {new_version}",
        highlight=False,
    )

"""``javia publish``: package, sign and publish an update (DESIGN.md sections 3, 4, 8).

Scripted::

    javia publish ./pi_client --version v1.2.3 --description "Bug fixes" --type scheduled

In a terminal without ``--version`` or ``--type`` it asks the questions whose
answer no option gave (questionary), suggesting versions above both the local
``VERSION`` and the server's newest, and refusing a version that is not above
them at the prompt. ``--output DIR``
writes the signed package directory instead of uploading it; ``--dry-run``
shows who would install when, without publishing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from javia_core.addresses import AddressError, parse_device_uuid
from javia_core.errors import SigningKeyError
from javia_core.manifest import check_description
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    OperatorSettings,
    ServerOption,
    admin_client,
    choices,
    console,
    fail,
    friendly_errors,
    markup_safe,
    operator_api_key,
    parse_tags,
    print_json,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from javia_core.models import UpdateOut
    from javia_updates.admin_client import ProgressCallback
    from javia_updates.packaging import BuiltPackage

TYPE_HELP = {
    UpdateType.SCHEDULED: "installs in each device's 02:00 local maintenance window",
    UpdateType.URGENT: "installs after 1 h without voice activity, at the latest in the window",
    UpdateType.INSTANT: "installs now on every device seen in the last 5 minutes",
}


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _parse_targets(values: list[str] | None) -> list[str]:
    targets: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                targets.append(str(parse_device_uuid(part)))
            except AddressError as error:
                fail(f"--target: {error}")
    return targets


def _parse_system_packages(value: str | None) -> list[str]:
    from javia_core.manifest import validate_apt_package

    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    with friendly_errors():
        for name in names:
            validate_apt_package(name)
    return names


#: Seconds the wizard waits for the server's newest version before it goes on without it.
WIZARD_SERVER_TIMEOUT_SECONDS = 3.0


def _published_highest(server: str | None, api_key: str | None) -> Version | None:
    """The highest published version, or None when the server cannot say quickly.

    The wizard's suggestions and its check at the prompt use it; an
    unreachable server, no admin key or a slow answer (over
    :data:`WIZARD_SERVER_TIMEOUT_SECONDS`) only means the wizard knows less
    (the upload checks again before anything is built).
    """
    from javia_updates.admin_client import AdminClient

    settings = OperatorSettings()
    key = operator_api_key(api_key, settings)
    if not key:
        return None
    try:
        with AdminClient(
            server or settings.server_url, key, timeout=WIZARD_SERVER_TIMEOUT_SECONDS
        ) as client:
            newest = client.list_updates(limit=1)
        return Version.parse(newest[0].version) if newest else None
    except Exception:  # noqa: BLE001 - any failure: the wizard goes on without the server
        return None


def _too_low(candidate: Version, current: Version | None, published: Version | None) -> str | None:
    """Why ``candidate`` cannot be published, or None: versions only go up (DESIGN.md section 2)."""
    if published is not None and candidate <= published:
        return f"{candidate} is not above {published}, already published: choose a higher version"
    if current is not None and candidate < current:
        return f"{candidate} is older than VERSION ({current}): choose a higher version"
    return None


def _wizard(
    current: Version | None,
    published: Version | None,
    given: dict[str, str | None],
) -> dict[str, str | None]:
    """Ask, in a terminal, the publish questions whose answer is not ``given`` yet.

    Suggested versions go up from the higher of the local ``VERSION`` and
    the server's newest (``published``); a typed version is refused at the
    prompt when it is not above them.

    Args:
        current: the application directory's ``VERSION``.
        published: the highest published version, None if unknown.
        given: ``version``, ``description``, ``update_type``, ``system_packages``
            from the command line (None: ask).

    Returns:
        ``given`` with every missing value answered.
    """
    import questionary

    answers = dict(given)
    if answers["version"] is None:
        base = max((v for v in (current, published) if v is not None), default=Version(0, 0, 0))
        choices = [
            questionary.Choice(f"{base.bump('patch')}  patch: fixes only", str(base.bump("patch"))),
            questionary.Choice(
                f"{base.bump('minor')}  minor: new features", str(base.bump("minor"))
            ),
            questionary.Choice(
                f"{base.bump('major')}  major: breaking changes", str(base.bump("major"))
            ),
            questionary.Choice("other…", "other"),
        ]
        known = [f"VERSION says {current}"] if current else []
        known += [f"{published} is published"] if published else []
        shown = f" ({'; '.join(known)})" if known else ""
        version = questionary.select(f"Version to publish{shown}", choices=choices).unsafe_ask()
        if version == "other":

            def acceptable(text: str) -> bool | str:
                if not Version.is_valid(text):
                    return "expected vX.Y.Z, e.g. v1.2.3"
                return _too_low(Version.parse(text), current, published) or True

            version = questionary.text("Version (vX.Y.Z)", validate=acceptable).unsafe_ask()
        answers["version"] = version
    if answers["description"] is None:
        answers["description"] = questionary.text(
            "Description (what changes for users)"
        ).unsafe_ask()
    if answers["update_type"] is None:
        answers["update_type"] = questionary.select(
            "Update type",
            choices=[
                questionary.Choice(f"{t.value:<9} {TYPE_HELP[t]}", t.value) for t in UpdateType
            ],
        ).unsafe_ask()
    if answers["system_packages"] is None:
        answers["system_packages"] = questionary.text(
            "System packages to apt-install (comma-separated, empty for none)"
        ).unsafe_ask()
    return answers


def _signing_key_path(key: Path | None) -> Path:
    """``--key`` (or ``JAVIA_SIGNING_KEY``, or the default key); one red line if it does not exist."""
    key_path = key or OperatorSettings().signing_key
    if not key_path.exists():
        fail(
            f"signing key {key_path} not found: create one with 'javia keys generate' or pass --key"
        )
    return key_path


def _load_key(path: Path, *, ask: bool = True) -> Ed25519PrivateKey:
    """The private key in ``path``; asks its passphrase on a terminal if ``ask`` and none is set.

    Raises:
        SigningKeyError: not an Ed25519 private key, or encrypted and no
            (or a wrong) passphrase.
    """
    from javia_updates.keys import load_private_key

    passphrase_env = os.environ.get("JAVIA_SIGNING_KEY_PASSPHRASE")
    try:
        return load_private_key(path, passphrase_env.encode() if passphrase_env else None)
    except SigningKeyError as error:
        if (
            "passphrase" not in str(error).lower()
            or passphrase_env
            or not ask
            or not _interactive()
        ):
            raise
    secret = typer.prompt(f"Passphrase for {path}", hide_input=True)
    return load_private_key(path, secret.encode())


def _check_signing_inputs(
    key: Path | None, add_keys: Sequence[Path], retire_keys: Sequence[str]
) -> None:
    """Check ``--key``, ``--add-key`` and ``--retire-key`` as a publish would, for a dry run.

    The same checks as a publish (:func:`_signing_key_path`, :func:`_load_key`,
    :func:`javia_updates.packaging.keyring_changes`), one red line and exit 1
    on the first problem. A dry run signs nothing, so it asks no passphrase
    (an encrypted key is taken as a key) and needs no signing key unless
    ``--key`` (or ``JAVIA_SIGNING_KEY``) names one or the default key exists.
    """
    from javia_core.manifest import key_id_for
    from javia_updates.packaging import keyring_changes

    signing_key_id = None
    if key is not None or OperatorSettings().signing_key.exists():
        key_path = _signing_key_path(key)
        with friendly_errors():
            try:
                signing_key_id = key_id_for(_load_key(key_path, ask=False).public_key())
            except SigningKeyError as error:
                if "passphrase is needed" not in str(error):
                    raise
    with friendly_errors():
        keyring_changes(add_keys, retire_keys, signing_key_id)


def _write_version(app_dir: Path, version: Version) -> None:
    target = app_dir / "VERSION"
    temporary = target.with_name(".VERSION.tmp")
    temporary.write_text(f"{version}\n", encoding="ascii")
    os.replace(temporary, target)


def publish(
    app_dir: Path = typer.Argument(Path("pi_client"), help="The application directory to package."),
    version: str | None = typer.Option(None, "--version", help="New version, vX.Y.Z."),
    description: str | None = typer.Option(None, "--description", "-m", help="What changes."),
    update_type: str | None = typer.Option(
        None,
        "--type",
        help="scheduled (02:00 window), urgent (after 1 h idle) or instant (now).",
        autocompletion=choices(*UpdateType),
    ),
    system_packages: str | None = typer.Option(
        None, "--system-packages", help="Comma-separated apt packages the release needs."
    ),
    target: list[str] | None = typer.Option(
        None, "--target", help="Device uuid to target (repeatable; default: every device)."
    ),
    tag: list[str] | None = typer.Option(
        None,
        "--tag",
        help="Target devices carrying this tag, now and when tagged later (repeatable; "
        "a device with any given tag, beside --target).",
    ),
    key: Path | None = typer.Option(
        None, "--key", envvar="JAVIA_SIGNING_KEY", help="Private signing key (PEM)."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Write the signed package to this directory instead of uploading."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show who would install when; publish nothing."
    ),
    add_key: list[Path] | None = typer.Option(
        None,
        "--add-key",
        help="Public key (.pub) devices trust after this update (key rotation; repeatable).",
    ),
    retire_key: list[str] | None = typer.Option(
        None, "--retire-key", help="Key id devices stop trusting after this update (repeatable)."
    ),
    phases: str | None = typer.Option(
        None,
        "--phases",
        help="Cumulative percentages of the targeted devices, e.g. 1,10,50,100 (default 100).",
    ),
    phase_soak: str | None = typer.Option(
        None, "--phase-soak", help="How long a phase stays healthy before the next opens (1h)."
    ),
    halt_failure_rate: str | None = typer.Option(
        None, "--halt-failure-rate", help="Halt at this failure percentage or more (10)."
    ),
    halt_min_devices: str | None = typer.Option(
        None, "--halt-min-devices", help="... once this many devices finished (5)."
    ),
    require_approval: bool = typer.Option(
        False, "--require-approval", help="Offer nothing until 'javia updates approve VERSION'."
    ),
    phase_approval: bool = typer.Option(
        False, "--phase-approval", help="Each next phase waits for approval instead of the soak."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Package, sign and publish an update of the application."""
    from javia_updates.packaging import build_package, collect_files, read_app_version

    if not app_dir.is_dir():
        problem = "is not a directory" if app_dir.exists() else "does not exist"
        fail(f"application directory {app_dir} {problem} (expected a folder with a VERSION file)")
    if dry_run and output is not None:
        fail("--dry-run publishes nothing and writes nothing: drop --output, or drop --dry-run")
    with friendly_errors():
        current = read_app_version(app_dir)
        if current is None:
            fail(
                f"{app_dir} has no VERSION file: write the version it holds now, "
                f"e.g. echo v0.1.0 > {app_dir}/VERSION"
            )
        if all(source.path == "VERSION" for source in collect_files(app_dir)):
            fail(f"{app_dir} holds nothing but VERSION: refusing to publish an empty application")

    asked = False
    if (version is None or update_type is None) and _interactive():
        # Ask only what is missing; a given version is checked before any question.
        published = None if output is not None else _published_highest(server, api_key)
        if version is not None and Version.is_valid(version):
            refused = _too_low(Version.parse(version), current, published)
            if refused is not None:
                fail(refused)
        answers = _wizard(
            current,
            published,
            {
                "version": version,
                "description": description,
                "update_type": update_type,
                "system_packages": system_packages,
            },
        )
        version, description = answers["version"], answers["description"]
        update_type, system_packages = answers["update_type"], answers["system_packages"]
        asked = True
    if version is None:
        fail("missing --version: expected vX.Y.Z, e.g. v1.2.3")
    if update_type is None:
        fail("missing --type: expected one of scheduled, urgent, instant")
    with friendly_errors():
        new_version = Version.parse(version)
        kind = UpdateType.parse(update_type)
    if current is not None and new_version < current:
        fail(f"{new_version} is older than {app_dir}/VERSION ({current}): publish a higher version")
    packages = _parse_system_packages(system_packages)
    targets = _parse_targets(target)
    tags = parse_tags(tag)
    description = description or ""
    with friendly_errors():
        check_description(description)  # the server's rule, before a dry run or a build
    rollout = rollout_form(
        phases=phases,
        phase_soak=phase_soak,
        halt_failure_rate=halt_failure_rate,
        halt_min_devices=halt_min_devices,
        require_approval=require_approval,
        phase_approval=phase_approval,
    )

    if dry_run:
        from javia_updates.cli.updates import plan_table

        _check_signing_inputs(key, add_key or (), retire_key or ())
        with friendly_errors(), admin_client(server, api_key) as client:
            plans = client.plan_new_update(
                update_type=kind.value,
                version=str(new_version),
                targets=targets or None,
                tags=tags or None,
                rollout=rollout,
            )
        if as_json:
            print_json(plans)
        else:
            console.print(
                plan_table(plans, f"dry run: {kind.value} update {new_version} (nothing published)")
            )
        return

    key_path = _signing_key_path(key)

    if asked:
        console.print(
            f"\n[bold]{new_version}[/bold] ({kind.value}: {TYPE_HELP[kind]})\n"
            f"  from {markup_safe(app_dir)}  description: {markup_safe(description or '—')}\n"
            f"  system packages: {', '.join(packages) or 'none'}  targets: "
            f"{', '.join(targets) or ('' if tags else 'every device')}"
            + (f"  tags: {', '.join(tags)}" if tags else "")
        )
    if kind is UpdateType.INSTANT and output is None and not yes:
        if not _interactive():
            fail("an instant update installs now on every online device: pass --yes to confirm")
        if not typer.confirm("Install now on every online targeted device?", default=False):
            fail("cancelled, nothing published")
    elif asked and not yes and not typer.confirm("Publish?", default=True):
        fail("cancelled, nothing published")

    if output is None:
        _preflight(server, api_key, new_version)
    with friendly_errors():
        private_key = _load_key(key_path)

        def build(directory: Path) -> BuiltPackage:
            built = build_package(
                app_dir,
                directory,
                version=new_version,
                update_type=kind,
                description=description,
                system_packages=packages,
                private_key=private_key,
                now=datetime.now(UTC),
                write_version_file=False,  # only once the package is safely out
                add_keys=add_key or (),
                retire_keys=retire_key or (),
            )
            _warn(built.warnings)
            return built

        if output is not None:
            built = build(output)  # nothing is published, so VERSION stays as it is
            if as_json:
                print_json(
                    {"directory": str(built.directory), "manifest": built.manifest.to_json_dict()}
                )
            else:
                console.print(
                    f"wrote signed package {new_version} ({len(built.manifest.files)} files, "
                    f"{built.manifest.archive.size} bytes) to {markup_safe(built.directory)}",
                    highlight=False,
                )
            return
        with tempfile.TemporaryDirectory(prefix="javia-publish-") as workspace:
            built = build(Path(workspace) / "package")
            result = _upload(
                built, kind, targets, rollout, server, api_key, quiet=as_json, tags=tags
            )
        _write_version(app_dir, new_version)
    if as_json:
        print_json(result)
        return
    counts = result.status_counts
    console.print(
        f"[green]published[/green] {markup_safe(result.version)} as update "
        f"{markup_safe(result.id)} ({kind.value}); "
        f"{markup_safe(sum(counts.values()))} device(s) scheduled so far. "
        f"Follow it with: javia updates show {markup_safe(result.version)}",
        highlight=False,
    )


def rollout_form(
    *,
    phases: str | None,
    phase_soak: str | None,
    halt_failure_rate: str | None,
    halt_min_devices: str | None,
    require_approval: bool,
    phase_approval: bool,
) -> dict[str, str]:
    """The rollout options checked with the server's own rules, as publish form fields.

    Checked before anything is built or uploaded: a bad value is one red line
    naming the option and the expected form (``--phases: the last phase must
    be 100 ...``), and nothing is published.
    """
    from javia_core.rollouts import (
        RolloutError,
        RolloutPolicy,
        parse_halt_failure_rate,
        parse_halt_min_devices,
        parse_phase_soak,
        parse_phases,
    )

    values: dict[str, object] = {
        "require_approval": require_approval,
        "phase_approval": phase_approval,
    }
    parsers: tuple[tuple[str, str | None, str, Callable[[str], object]], ...] = (
        ("--phases", phases, "phases", parse_phases),
        ("--phase-soak", phase_soak, "phase_soak_seconds", parse_phase_soak),
        ("--halt-failure-rate", halt_failure_rate, "halt_failure_rate", parse_halt_failure_rate),
        ("--halt-min-devices", halt_min_devices, "halt_min_devices", parse_halt_min_devices),
    )
    for option, text, name, parse in parsers:
        if text is None:
            continue
        try:
            values[name] = parse(text)
        except RolloutError as error:
            fail(f"{option}: {error}")
    policy = RolloutPolicy(**values)  # type: ignore[arg-type]  # each field checked above
    return {
        "phases": ",".join(str(percent) for percent in policy.phases),
        "phase_soak_seconds": str(policy.phase_soak_seconds),
        "halt_failure_rate": f"{policy.halt_failure_rate:g}",
        "halt_min_devices": str(policy.halt_min_devices),
        "require_approval": str(policy.require_approval).lower(),
        "phase_approval": str(policy.phase_approval).lower(),
    }


def _preflight(server: str | None, api_key: str | None, new_version: Version) -> None:
    """Check the key and the version with the server before spending time on a build."""
    with friendly_errors(), admin_client(server, api_key) as client:
        newest = client.list_updates(limit=1)
    if newest:
        highest = Version.parse(newest[0].version)
        if new_version == highest:
            fail(f"version {new_version} is already published: publish a higher version")
        if new_version < highest:
            fail(
                f"{new_version} is lower than {highest}, already published: publish a higher "
                "version (a rollback is a roll-forward: republish the old content as a new version)"
            )


def _warn(warnings: Iterable[str]) -> None:
    from javia_updates.cli.common import error_console

    for warning in warnings:
        error_console.print(
            f"[yellow]warning:[/yellow] {markup_safe(warning)}", highlight=False, soft_wrap=True
        )


def _upload(
    built: BuiltPackage,
    kind: UpdateType,
    targets: list[str],
    rollout: dict[str, str],
    server: str | None,
    api_key: str | None,
    *,
    quiet: bool,
    tags: list[str] | None = None,
) -> UpdateOut:
    """Upload the package, with a progress bar on a terminal unless ``quiet`` (JSON output).

    Without a terminal the bar would leave only a blank line behind.
    """
    with admin_client(server, api_key) as client:

        def send(progress: ProgressCallback | None = None) -> UpdateOut:
            return client.publish(
                manifest_path=built.manifest_path,
                signature_path=built.signature_path,
                payload_path=built.payload_path,
                update_type=kind.value,
                targets=targets or None,
                progress=progress,
                tags=tags or None,
                rollout=rollout,
            )

        if quiet or not console.is_terminal:
            return send()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(
                f"uploading {built.manifest.version}", total=built.payload_path.stat().st_size
            )
            return send(lambda n: bar.advance(task, n))

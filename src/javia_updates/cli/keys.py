"""``javia keys``: the operator's Ed25519 signing keys (DESIGN.md section 3)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from javia_updates.cli.common import (
    DEFAULT_SIGNING_KEY,
    JsonOption,
    console,
    fail,
    friendly_errors,
    markup_safe,
    print_json,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

app = typer.Typer(help="Create and inspect signing keys.", no_args_is_help=True)


@app.command("generate")
def generate(
    output: Path = typer.Option(
        DEFAULT_SIGNING_KEY.parent, "--output", "-o", help="Directory for the key pair."
    ),
    name: str = typer.Option(
        "javia-signing", "--name", help="File name stem: NAME.pem (private), NAME.pub."
    ),
    passphrase: bool = typer.Option(
        False, "--passphrase", help="Ask for a passphrase to encrypt the private key."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key pair."),
    as_json: bool = JsonOption,
) -> None:
    """Generate an Ed25519 key pair; the private key is written with mode 0600.

    Copy NAME.pub into every device's keyring (/etc/javia/keys); keep NAME.pem
    on the operator's machine only.
    """
    from javia_updates.keys import generate_keypair

    secret = None
    if passphrase:
        secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True).encode()
    from javia_core.errors import SigningKeyError

    try:
        paths = generate_keypair(output, name=name, passphrase=secret, overwrite=force)
    except SigningKeyError as error:
        hint = " (pass --force to replace it)" if "already exists" in str(error) else ""
        fail(f"{error}{hint}")
    if as_json:
        print_json(
            {
                "key_id": paths.key_id,
                "private_key": str(paths.private_path),
                "public_key": str(paths.public_path),
            }
        )
        return
    console.print(f"key id      [bold]{paths.key_id}[/bold]")
    console.print(
        f"private key {markup_safe(paths.private_path)}  (mode 0600, never leaves this machine)"
    )
    console.print(
        f"public key  {markup_safe(paths.public_path)}  (copy to each device's /etc/javia/keys/)"
    )


@app.command("show")
def show(
    path: Path = typer.Argument(..., help="A public (.pub) or private (.pem) key file."),
    as_json: bool = JsonOption,
) -> None:
    """Print the key id of a public or private key file."""
    from javia_core.keys import load_public_key
    from javia_core.manifest import key_id_for
    from javia_updates.keys import load_private_key

    with friendly_errors():
        if path.suffix == ".pub":  # else a private key (.pem)
            public = load_public_key(path)
        else:
            public = load_private_key(path).public_key()
    if as_json:
        print_json({"key_id": key_id_for(public), "path": str(path)})
        return
    console.print(key_id_for(public))


def _public_key_of(path: Path) -> Ed25519PublicKey:
    """The public key of a ``.pub`` file, or of a ``.pem`` private key (its ``.pub`` twin if present)."""
    import os

    from javia_core.keys import load_public_key
    from javia_updates.keys import load_private_key

    if path.suffix == ".pub":
        return load_public_key(path)
    twin = path.with_suffix(".pub")
    if twin.is_file():
        return load_public_key(twin)
    passphrase = os.environ.get("JAVIA_SIGNING_KEY_PASSPHRASE")
    return load_private_key(path, passphrase.encode() if passphrase else None).public_key()


@app.command("rotate")
def rotate(
    key: Path = typer.Option(
        DEFAULT_SIGNING_KEY,
        "--key",
        envvar="JAVIA_SIGNING_KEY",
        help="The signing key in use now (NAME.pem or NAME.pub).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="File name stem of the new key (default: NAME-YYYYMMDD, UTC date)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Directory for the new key pair (default: the current key's)."
    ),
    passphrase: bool = typer.Option(
        False, "--passphrase", help="Ask for a passphrase to encrypt the new private key."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Start a key rotation: create the successor key and print the two publishes that follow.

    Devices never trust a key they were not told about by a key they already
    trust: (1) publish an update signed with the CURRENT key that adds the new
    one (--add-key NEW.pub); (2) once every device runs it, publish with the
    NEW key and --retire-key CURRENT_ID. Nothing is published by this command.
    """
    from datetime import UTC, datetime

    from javia_core.manifest import key_id_for
    from javia_updates.cli.common import print_json
    from javia_updates.keys import generate_keypair

    with friendly_errors():
        current_id = key_id_for(_public_key_of(key))
        stem = key.name.removesuffix(".pem").removesuffix(".pub")
        new_name = name or f"{stem}-{datetime.now(UTC):%Y%m%d}"
        secret = None
        if passphrase:
            secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True).encode()
        paths = generate_keypair(output or key.parent, name=new_name, passphrase=secret)
    current_pem = key if key.suffix == ".pem" else key.with_suffix(".pem")
    steps = [
        (
            f"javia publish APP --version vX.Y.Z --type scheduled --key {current_pem} "
            f"--add-key {paths.public_path}"
        ),
        "javia updates show vX.Y.Z   # wait until every device has completed it",
        (
            f"copy {paths.public_path} into the server's trusted_keys_dir (if set), "
            f"then sign with {paths.private_path} (JAVIA_SIGNING_KEY)"
        ),
        (
            f"javia publish APP --version vX.Y.Z+1 --type scheduled --key {paths.private_path} "
            f"--retire-key {current_id}"
        ),
        f"destroy {current_pem} once every device has completed that update",
    ]
    if as_json:
        print_json(
            {
                "current_key_id": current_id,
                "new_key_id": paths.key_id,
                "private_key": str(paths.private_path),
                "public_key": str(paths.public_path),
                "steps": steps,
            }
        )
        return
    from rich.markup import escape

    console.print(f"current key id  [bold]{current_id}[/bold]")
    console.print(f"new key id      [bold]{paths.key_id}[/bold]")
    console.print(f"new private key {escape(str(paths.private_path))}  (mode 0600)")
    console.print(f"new public key  {escape(str(paths.public_path))}")
    console.print("next steps (docs/security.md, key rotation):")
    for number, step in enumerate(steps, 1):
        console.print(f"  {number}. {escape(step)}", highlight=False, soft_wrap=True)

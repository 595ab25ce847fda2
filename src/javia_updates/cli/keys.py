"""``javia keys``: the operator's Ed25519 signing keys (DESIGN.md section 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from javia_updates.cli.common import DEFAULT_SIGNING_KEY, console, friendly_errors

app = typer.Typer(help="Create and inspect signing keys.", no_args_is_help=True)


@app.command("generate")
def generate(
    output: Path = typer.Option(
        DEFAULT_SIGNING_KEY.parent, "--output", "-o", help="Directory for the key pair."
    ),
    name: str = typer.Option("javia-signing", "--name", help="File name stem: NAME.pem (private), NAME.pub."),
    passphrase: bool = typer.Option(
        False, "--passphrase", help="Ask for a passphrase to encrypt the private key."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key pair."),
) -> None:
    """Generate an Ed25519 key pair; the private key is written with mode 0600.

    Copy NAME.pub into every device's keyring (/etc/javia/keys); keep NAME.pem
    on the operator's machine only.
    """
    from javia_updates.keys import generate_keypair

    secret = None
    if passphrase:
        secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True).encode()
    with friendly_errors():
        paths = generate_keypair(output, name=name, passphrase=secret, overwrite=force)
    console.print(f"key id      [bold]{paths.key_id}[/bold]")
    console.print(f"private key {paths.private_path}  (mode 0600, never leaves this machine)")
    console.print(f"public key  {paths.public_path}  (copy to each device's /etc/javia/keys/)")


@app.command("show")
def show(path: Path = typer.Argument(..., help="A public (.pub) or private (.pem) key file.")) -> None:
    """Print the key id of a public or private key file."""
    from javia_updates.keys import load_private_key, load_public_key
    from javia_updates.manifest import key_id_for

    with friendly_errors():
        if path.suffix == ".pub":  # else a private key (.pem)
            public = load_public_key(path)
        else:
            public = load_private_key(path).public_key()
    console.print(key_id_for(public))

"""Secrets at publish: .env* never packaged by default; files that look like secrets are named."""

from __future__ import annotations

import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from security_helpers import START
from typer.testing import CliRunner

from javia_cli.main import app as javia_app
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.keys import generate_keypair
from javia_updates.packaging import build_package

AWS_KEY_ID = (
    "AKIA" + "Q3EXAMPLE7WXYZ12"
)  # the documented example form, split so scanners skip this file
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
OPENSSH_HEADER = "-----BEGIN OPENSSH " + "PRIVATE KEY-----"


def pkcs8_pem() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def make_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def build(app: Path, output: Path) -> object:
    return build_package(
        app,
        output,
        version=Version.parse("v1.1.0"),
        update_type=UpdateType.SCHEDULED,
        description="",
        system_packages=(),
        private_key=Ed25519PrivateKey.generate(),
        now=START,
        write_version_file=False,
    )


def members(package: Path) -> set[str]:
    with tarfile.open(package / "payload.tar.gz") as archive:
        return {member.name for member in archive.getmembers() if member.isfile()}


def test_env_files_are_never_packaged_by_default(tmp_path: Path) -> None:
    app = make_tree(
        tmp_path / "app",
        {
            "VERSION": "v1.0.0\n",
            "main.py": "print(1)\n",
            ".env": "API_TOKEN=secret\n",
            ".env.production": "API_TOKEN=secret\n",
            "config/.env.local": "API_TOKEN=secret\n",
        },
    )
    built = build(app, tmp_path / "package")
    assert members(tmp_path / "package") == {"VERSION", "main.py"}
    assert built.warnings == ()


def test_files_that_look_like_secrets_are_named_in_warnings_but_packaged(tmp_path: Path) -> None:
    private_pem = pkcs8_pem()
    app = make_tree(
        tmp_path / "app",
        {
            "VERSION": "v1.0.0\n",
            "main.py": "print('hello')\n",
            "ssh/id_ed25519": "anything\n",
            "ssh/id_ed25519.pub": "ssh-ed25519 AAAA... operator@laptop\n",
            "certs/client.pem": private_pem,
            "certs/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "deploy.sh": f"export AWS_ACCESS_KEY_ID={AWS_KEY_ID}\n",
            "notes.txt": f"{OPENSSH_HEADER}\nb3BlbnNzaC1rZXk=\n",
            "ci.yaml": f"token: {GITHUB_TOKEN}\n",
        },
    )
    built = build(app, tmp_path / "package")
    named = {warning.split(" ", 1)[0]: warning for warning in built.warnings}
    assert set(named) == {"ssh/id_ed25519", "certs/client.pem", "deploy.sh", "notes.txt", "ci.yaml"}
    assert "a private key" in named["certs/client.pem"]
    assert "AWS access key id" in named["deploy.sh"]
    assert "GitHub token" in named["ci.yaml"]
    assert all(".javiaignore" in warning for warning in built.warnings)
    text = "\n".join(built.warnings)
    assert AWS_KEY_ID not in text and GITHUB_TOKEN not in text and "MC4CAQAw" not in text
    assert "certs/client.pem" in members(tmp_path / "package")  # a warning, not a refusal


def test_a_secret_straddling_a_read_chunk_is_still_found(tmp_path: Path) -> None:
    header = pkcs8_pem().encode()
    filler = b"x" * (1024 * 1024 - 10)  # the header crosses the 1 MiB read boundary
    app = make_tree(tmp_path / "app", {"VERSION": "v1.0.0\n", "blob.bin": filler + header})
    built = build(app, tmp_path / "package")
    assert [warning.split(" ", 1)[0] for warning in built.warnings] == ["blob.bin"]


def test_excluding_a_secret_in_javiaignore_silences_its_warning(tmp_path: Path) -> None:
    app = make_tree(
        tmp_path / "app",
        {
            "VERSION": "v1.0.0\n",
            "main.py": "",
            "dev/key.pem": pkcs8_pem(),
            ".javiaignore": "dev/\n",
        },
    )
    assert build(app, tmp_path / "package").warnings == ()


def test_javia_publish_prints_each_warning_and_still_succeeds(tmp_path: Path) -> None:
    app = make_tree(
        tmp_path / "app", {"VERSION": "v1.0.0\n", "main.py": "", "deploy.sh": f"K={AWS_KEY_ID}\n"}
    )
    key = generate_keypair(tmp_path / "keys", name="signing").private_path
    result = CliRunner().invoke(
        javia_app,
        ["publish", str(app), "--version", "v1.1.0", "--type", "scheduled", "--key", str(key),
         "--output", str(tmp_path / "package")],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "deploy.sh" in warnings[0]
    assert AWS_KEY_ID not in result.stderr + result.stdout

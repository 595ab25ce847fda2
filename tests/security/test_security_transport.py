"""Transport: the agent verifies the server's TLS certificate by default and accepts a CA bundle.

A real HTTPS server (uvicorn, the javia app) on a loopback port with a
certificate from a throwaway CA: the agent's client refuses it with the
system's trust store and accepts it with ``ca_bundle``. Plain ``http://`` to a
non-loopback host is refused unless allowed
(``tests/agent/test_agent_client.py::test_plain_http_only_to_loopback_unless_allowed``).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from security_helpers import API_KEY

from javia_agent.client import DeviceClient
from javia_agent.errors import ConfigError, NetworkError
from javia_core.models import DeviceRegisterRequest
from javia_updates.server import create_app
from javia_updates.settings import ServerSettings


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, valid now."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("javia test CA"))
        .issuer_name(_name("javia test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The javia app behind uvicorn with TLS on a free loopback port; (base URL, CA bundle)."""
    ca_path, cert_path, key_path = make_ca_and_server_cert(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServerSettings(api_key=API_KEY, data_dir=tmp_path / "data"))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert_path),
        ssl_keyfile=str(key_path),
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20  # start-up, not policy
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the HTTPS server did not start")
        time.sleep(0.05)
    try:
        yield f"https://127.0.0.1:{port}", ca_path
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def register(url: str, **options: object) -> object:
    with DeviceClient(url, timeout_seconds=5, **options) as client:
        return client.register(API_KEY, DeviceRegisterRequest(device_name="tls"))


def test_the_agent_refuses_a_certificate_it_cannot_verify(https_server: tuple[str, Path]) -> None:
    url, _ca = https_server
    with pytest.raises(NetworkError, match="(?i)certificate"):
        register(url)


def test_the_agent_trusts_a_server_certified_by_its_ca_bundle(
    https_server: tuple[str, Path],
) -> None:
    url, ca = https_server
    registered = register(url, ca_bundle=ca)
    assert registered.device_token  # type: ignore[attr-defined]


def test_plain_http_to_another_host_is_refused_before_any_connection() -> None:
    with pytest.raises(ConfigError, match="refusing plain http"):
        DeviceClient("http://192.0.2.10:8000")
    assert DeviceClient("http://192.0.2.10:8000", allow_insecure_http=True).base_url

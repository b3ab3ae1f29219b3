"""Credentials made per deployment: a TLS certificate authority and the SuperLink's certificate
for 127.0.0.1, and one P-384 key per SuperNode, which Flower's SuperNode authentication knows
it by (https://flower.ai/docs/framework/how-to-authenticate-supernodes.html).

Flower's guide makes these with ``openssl`` and ``ssh-keygen``; the ``cryptography`` package,
which Flower itself depends on, makes the same files here without either tool on the machine.
Private keys are written readable by the user only, and live as long as the deployment's
temporary folder.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_FOR = datetime.timedelta(days=2)
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALID_FOR)
    )


def loopback_certificates(folder: Path) -> Certificates:
    """A CA made for this deployment alone and the SuperLink's certificate for 127.0.0.1 and
    localhost, signed by it; the CA's key is never written, so nothing else can be signed."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("splitsim deployment CA")
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _certificate(_name("127.0.0.1"), ca_name, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _private(folder / "server.key", private)
    return Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")


def node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair in OpenSSH form (what ``ssh-keygen -t ecdsa -b 384`` writes, and
    what ``flwr supernode register`` and ``--auth-supernode-private-key`` read)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (folder / f"{name}.pub").write_bytes(public)
    return _private(folder / name, private), folder / f"{name}.pub"

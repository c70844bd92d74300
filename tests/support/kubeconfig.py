"""Kubeconfig files and a loopback TLS certificate for the lab's API server.

client-go (kubectl) does not send a bearer token over plain http, so the emulator serves
https with a throwaway self-signed certificate for ``127.0.0.1``/``localhost``, and the
kubeconfig trusts exactly that certificate (``certificate-authority-data``): no
``insecure-skip-tls-verify`` is needed, and clients verify TLS as they would in a cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import os
import pathlib
import ssl
import tempfile

import yaml

__all__ = ["LoopbackCert", "make_loopback_cert", "write_kubeconfig"]


@dataclasses.dataclass(frozen=True)
class LoopbackCert:
    """A self-signed certificate (its own CA) for 127.0.0.1 and localhost, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for a server presenting this certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = pathlib.Path(tmp, "tls.crt"), pathlib.Path(tmp, "tls.key")
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def make_loopback_cert(days: int = 7) -> LoopbackCert:
    """Generate a fresh EC P-256 self-signed certificate valid for ``days`` days.

    Raises:
        ImportError: the ``cryptography`` package is missing.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidetune-lab-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return LoopbackCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_kubeconfig(
    path: str | pathlib.Path,
    *,
    server: str,
    token: str,
    ca_pem: bytes | None = None,
    context: str = "tidetune-lab",
    namespace: str = "default",
) -> pathlib.Path:
    """Write a kubeconfig with one cluster, one token user and one current context.

    With ``ca_pem`` the cluster trusts that certificate (for an https ``server``); without it
    the server should be plain http (note: kubectl then sends no token). The file is created
    with mode 0600 since it holds a token.

    Raises:
        ValueError: ``server`` is not an http(s) URL, or ``token`` is empty.
        OSError: the file cannot be written.
    """
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"server must be an http(s) URL, got {server!r}")
    if not token:
        raise ValueError("token must not be empty")
    cluster: dict[str, str] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": namespace},
            }
        ],
        "current-context": context,
        "preferences": {},
    }
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return target

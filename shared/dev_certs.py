"""Development certificates and node keys for a Stamen deployment, made with ``cryptography``.

A CA, a server certificate signed by it (for the SuperLink's TLS), and one EC key
pair per device in OpenSSH format (Flower's SuperNode authentication). For trying a
deployment on one machine or a lab network, never for production: the CA key sits
unencrypted beside the certificates it signs.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .atomic import atomic_write_bytes
from .run_signature import write_operator_keys
from .user_errors import UserError

LOOPBACK = "127.0.0.1"
_VALID_DAYS = 365
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a plain file name in nodes/: no path


class NodeNameError(UserError, ValueError):
    """A device name that is not a plain file name (it could write a key outside ``nodes/``)."""


def check_node_name(name: str) -> str:
    if not NODE_NAME.fullmatch(name) or ".." in name:
        raise NodeNameError(f"device name {name!r} must be 1-64 letters, digits, '.', '-' or '_', start with a "
                            f"letter or digit and hold no '..' (it names the key files in nodes/)")
    return name


class CertificateError(UserError, ValueError):
    """A certificate or key file that is missing or is not what its flag asks for."""


def require_certificate(path: Path, what: str) -> Path:
    """``path``, once it holds a PEM X.509 certificate; else a :class:`CertificateError` naming ``what``."""
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CertificateError(f"{what} {path} is not a PEM certificate ({_reason(error)}): give the certificate "
                               "file itself (`stamen certs` makes development ones)") from None
    return path


def require_private_key(path: Path, what: str) -> Path:
    """``path``, once it holds a private key (PEM or OpenSSH, unencrypted); else a :class:`CertificateError`."""
    try:
        data = path.read_bytes()
        if b"OPENSSH PRIVATE KEY" in data:
            serialization.load_ssh_private_key(data, None)
        else:
            serialization.load_pem_private_key(data, None)
    except (OSError, ValueError, TypeError) as error:
        raise CertificateError(f"{what} {path} is not an unencrypted private key ({_reason(error)}): give the "
                               ".key file `stamen certs` wrote, not its .pub or a certificate") from None
    return path


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error).split(".")[0][:80]


@dataclass(frozen=True)
class DevCertificates:
    """Where ``make_dev_certificates`` put everything."""

    folder: Path

    @property
    def ca_certificate(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_certificate(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def operator_key(self) -> Path:
        """The operator's Ed25519 key: ``stamen server start`` signs the run config with it."""
        return self.folder / "operator.key"

    @property
    def operator_public_key(self) -> Path:
        """What devices trust (``stamen client join --operator-key``)."""
        return self.folder / "operator.pub"

    def node_key(self, name: str) -> Path:
        return self.folder / "nodes" / f"{name}.key"

    def node_public_key(self, name: str) -> Path:
        return self.folder / "nodes" / f"{name}.pub"

    def node_public_keys(self) -> list[Path]:
        return sorted((self.folder / "nodes").glob("*.pub"))

    def check_server_files(self) -> None:
        """What ``stamen server start`` needs is here: the CA and server certificates, the server key, and at
        least one device's public key in ``nodes/``."""
        require_certificate(self.ca_certificate, "--certs")
        require_certificate(self.server_certificate, "--certs")
        require_private_key(self.server_key, "--certs")
        if not self.node_public_keys():
            raise CertificateError(f"--certs {self.folder} has no device keys (nodes/*.pub): the server accepts only "
                                   "registered devices; `stamen certs --node NAME` makes a pair")


def make_dev_certificates(folder: Path, hosts: list[str], nodes: list[str]) -> DevCertificates:
    """A CA, a server certificate valid for ``hosts`` (names or IPs) and for 127.0.0.1, where the server's
    own Fleet gateway and Flower CLI reach its SuperLink, the operator's signing key pair, and a key pair per
    node name."""
    hosts = list(dict.fromkeys([*hosts, LOOPBACK]))
    for name in nodes:  # every name is checked before anything is written
        check_node_name(name)
    certs = DevCertificates(folder)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stamen development CA")])
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, is_ca=True, hosts=[])
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server = _certificate(server_name, ca_name, server_key.public_key(), ca_key, is_ca=False, hosts=hosts)
    atomic_write_bytes(folder / "ca.key", _private_pem(ca_key))
    atomic_write_bytes(certs.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(certs.server_key, _private_pem(server_key))
    atomic_write_bytes(certs.server_certificate, server.public_bytes(serialization.Encoding.PEM))
    write_operator_keys(folder)
    for name in nodes:
        add_node_key(certs, name)
    return certs


def add_node_key(certs: DevCertificates, name: str) -> Path:
    """One device's EC key pair (OpenSSH format, as ``flower-supernode`` and ``flwr supernode register`` read)."""
    check_node_name(name)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(certs.node_key(name), private)
    atomic_write_bytes(certs.node_public_key(name), public + b"\n")
    certs.node_key(name).chmod(0o600)
    return certs.node_key(name)


def _certificate(subject, issuer, public_key, signing_key, is_ca: bool, hosts: list[str]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if hosts:
        names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())

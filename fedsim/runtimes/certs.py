"""Certificates and keys for a TLS deployment with SuperNode authentication.

``fedsim certs DIR`` writes, with the ``cryptography`` package:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (the trust root the
  SuperNodes and ``fedsim run`` verify the SuperLink against);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for
  ``127.0.0.1``, ``::1``, ``localhost``, ``superlink`` (the compose service name) and any
  ``--host`` given (the SuperLink's own SuperExec also connects through ``127.0.0.1``);
- ``node-<i>.key`` / ``node-<i>.pub``: one ECDSA P-384 key pair per SuperNode in OpenSSH
  format, for Flower's SuperNode authentication (``flower-superlink --enable-supernode-auth``,
  ``flower-supernode --auth-supernode-private-key``; the public keys are registered with the
  SuperLink's Control API before the nodes connect).

Private keys are written with mode 0600. Existing files are kept, so the command is safe to
run again (compose's ``certs`` service runs it on every ``up``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost", "superlink")


@dataclass(frozen=True)
class Certs:
    """The file layout of a certificate directory (paths as the processes see them)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def node_key(self, i: int) -> Path:
        return self.dir / f"node-{i}.key"

    def node_public_key(self, i: int) -> Path:
        return self.dir / f"node-{i}.pub"


def _write(path: Path, data: bytes, private: bool) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _ca(certs: Certs, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    """The CA's key and certificate, and whether they were created now."""
    if certs.ca_cert.exists() and certs.ca_key.exists():
        key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(certs.ca_cert.read_bytes()), False
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim CA"))
        .issuer_name(_name("fedsim CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(certs.ca_key, _pem_key(key), private=True)
    _write(certs.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return key, cert, True


def _server(certs: Certs, ca_key, ca_cert: x509.Certificate, hosts, days: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("superlink"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(certs.server_key, _pem_key(key), private=True)
    _write(certs.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _node_keys(certs: Certs, i: int) -> None:
    if certs.node_key(i).exists() and certs.node_public_key(i).exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    ssh_private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    ssh_public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(certs.node_key(i), ssh_private, private=True)
    _write(certs.node_public_key(i), ssh_public + f" fedsim-node-{i}\n".encode(), private=False)


def server_hosts(certs: Certs) -> set[str]:
    """The host names and addresses the SuperLink certificate is valid for."""
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def generate(directory: str | Path, nodes: int = 0, hosts: tuple[str, ...] = (), days: int = 365) -> Certs:
    """Write the CA, the SuperLink certificate and ``nodes`` SuperNode key pairs into ``directory``.

    The CA and node keys are kept when they exist; the server certificate is re-issued
    when the CA is new or the certificate lacks one of the requested hosts.
    """
    certs = Certs(Path(directory))
    certs.dir.mkdir(parents=True, exist_ok=True)
    wanted = tuple(dict.fromkeys(DEFAULT_HOSTS + tuple(hosts)))
    ca_key, ca_cert, new_ca = _ca(certs, days)
    have_server = certs.server_cert.exists() and certs.server_key.exists()
    if new_ca or not have_server or not set(wanted) <= server_hosts(certs):
        _server(certs, ca_key, ca_cert, wanted, days)
    for i in range(nodes):
        _node_keys(certs, i)
    return certs

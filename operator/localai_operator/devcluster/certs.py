"""The harness's PKI: a CA, the apiserver serving cert, an admin client cert and the service-account key pair;
`issue()` signs more leaves with that CA (the real node's kubelet, kube-proxy and the apiserver's kubelet client)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVING_DNS_NAMES: Final = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# 10.0.0.1 is the `kubernetes` Service's ClusterIP, the first address of --service-cluster-ip-range.
SERVING_IPS: Final = ("127.0.0.1", "10.0.0.1")
ADMIN_USER: Final = "localai-operator-admin"
ADMIN_GROUP: Final = "system:masters"
_VALIDITY = datetime.timedelta(days=365)

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files, all inside one directory."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_public_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> Pki:
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            serving_cert=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            admin_cert=directory / "admin.crt",
            admin_key=directory / "admin.key",
            service_account_key=directory / "sa.key",
            service_account_public_key=directory / "sa.pub",
        )


def write_pki(directory: Path, extra_ips: Sequence[str] = ()) -> Pki:
    """A new CA and the control plane's certificates in `directory`; `extra_ips` join the apiserver's SANs."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.in_directory(directory)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # tolerate small clock skew

    ca_key = _ec_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localai-operator-dev-ca")])
    # keyUsage and basicConstraints are required on the CA: Python 3.13's strict X.509 rejects a CA without them.
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = _ec_key()
    serving_cert = (
        _leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            serving_key,
            ca_cert,
            ca_key,
            now,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in SERVING_DNS_NAMES]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*SERVING_IPS, *extra_ips)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    admin_key = _ec_key()
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ADMIN_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
        ]
    )
    admin_cert = (
        _leaf(admin_name, admin_key, ca_cert, ca_key, now)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    service_account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.serving_cert, serving_cert)
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.admin_cert, admin_cert)
    _write_key(pki.admin_key, admin_key)
    _write_key(pki.service_account_key, service_account_key)
    pki.service_account_public_key.write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue(
    pki: Pki,
    stem: str,
    common_name: str,
    *,
    organization: str | None = None,
    client: bool = False,
    server_ips: Sequence[str] = (),
    server_dns: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Signs a leaf with the harness CA and writes `<stem>.crt` and `<stem>.key` beside it: a client certificate
    (the Kubernetes user is the CN, the group the O), a serving one (for the SANs given), or both."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "the harness CA key is ECDSA"
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    subject = x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    key = _ec_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = _leaf(subject, key, ca_cert, ca_key, now)
    if server_ips or server_dns:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in server_dns]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            ),
            critical=False,
        )
    cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(ca_key, hashes.SHA256())
    cert_path, key_path = pki.ca_cert.with_name(f"{stem}.crt"), pki.ca_cert.with_name(f"{stem}.key")
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


def _ec_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keys are generated in microseconds, RSA keys in tens of milliseconds; every client here accepts ECDSA.
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name, issuer: x509.Name, key: _PrivateKey, not_before: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _VALIDITY)
    )


def _leaf(
    subject: x509.Name,
    key: _PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        _builder(subject, ca_cert.subject, key, not_before)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,  # ECDSA keys sign; they never encipher
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: _PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(data)

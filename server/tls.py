"""HTTPS helpers: a self-signed certificate for LAN use and the server's SSL context.

Browsers only open the camera on https:// pages (or http://localhost), so a phone on the
same network needs HTTPS; a self-signed certificate works after accepting the warning.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
COMMON_NAME = "livestyle self-signed"
VALID_DAYS = 30
# Reuse a certificate only while it has more than this left, so a running server does not
# start with one that expires under it.
MIN_REMAINING = dt.timedelta(days=1)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_host(host: str) -> str | _IPAddress:
    """An IP address when `host` is one (brackets allowed), else the DNS name lower-cased."""
    text = host.strip()
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text.lower()


def _san_entries(hosts: Sequence[str]) -> set[str | _IPAddress]:
    entries = {_parse_host(h) for h in hosts if h.strip()}
    if not entries:
        raise ValueError(f"a certificate needs at least one host name or IP address, got {list(hosts)!r}")
    return entries


def _reusable(cert_path: Path, key_path: Path, wanted: set[str | _IPAddress], now: dt.datetime) -> bool:
    """Whether the files on disk are a matching pair, valid for a while yet, for exactly `wanted`."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.ExtensionNotFound) as exc:
        log.info(
            "regenerating the self-signed certificate in %s: existing files unreadable (%s)", cert_path.parent, exc
        )
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        log.info("regenerating the self-signed certificate in %s: key and certificate do not match", cert_path.parent)
        return False
    if cert.not_valid_after_utc - now <= MIN_REMAINING or cert.not_valid_before_utc > now:
        log.info("regenerating the self-signed certificate in %s: it expires or is not yet valid", cert_path.parent)
        return False
    have: set[str | _IPAddress] = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    # IPAddress entries may also be networks (name constraints); only plain addresses count.
    have.update(a for a in san.get_values_for_type(x509.IPAddress) if isinstance(a, _IPAddress))
    if have != wanted:
        log.info("regenerating the self-signed certificate in %s: the hosts changed", cert_path.parent)
        return False
    return True


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file and the key is
    never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask; pin it exactly
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def self_signed_certificate(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path]:
    """(cert.pem, key.pem) in `directory` for `hosts`, reusing the existing pair when it is still
    valid for more than a day and names exactly the same hosts; otherwise a new EC P-256 key
    and a certificate valid from yesterday for 30 days."""
    wanted = _san_entries(hosts)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    now = dt.datetime.now(dt.UTC)
    if _reusable(cert_path, key_path, wanted, now):
        log.debug("reusing the self-signed certificate %s", cert_path)
        return cert_path, key_path

    key = ec.generate_private_key(ec.SECP256R1())
    # Stable order in the certificate (names first, then addresses) so it reads well in a browser.
    names = sorted(e for e in wanted if isinstance(e, str))
    addresses = sorted((e for e in wanted if not isinstance(e, str)), key=lambda a: (a.version, a))
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    general += [x509.IPAddress(a) for a in addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Start a day early so clients with a slightly slow clock accept it.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Key first: a crash in between leaves a cert without its key, which _reusable rejects.
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info(
        "wrote a self-signed certificate %s for %s, valid until %s",
        cert_path,
        ", ".join([*names, *map(str, addresses)]),
        cert.not_valid_after_utc.date().isoformat(),
    )
    return cert_path, key_path


def default_hosts() -> list[str]:
    """localhost, the loopback addresses and this machine's non-loopback IPv4 addresses."""
    hosts = ["localhost", "127.0.0.1", "::1"]

    def add(address: str) -> None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return
        if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified and address not in hosts:
            hosts.append(address)

    try:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            add(str(sockaddr[0]))
    except OSError:
        pass  # no resolvable host name: the route lookup below still finds the main address
    try:
        # connect() on a UDP socket only picks a route and source address; nothing is sent.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            add(s.getsockname()[0])
    except OSError:
        pass  # no IPv4 route at all
    return hosts


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) serving `cert` with `key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context

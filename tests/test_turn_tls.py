import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.config import ConfigError
from server.tls import default_hosts, self_signed_certificate, ssl_context
from server.turn import TurnConfig, turn_credentials, turn_ice_server

pytestmark = pytest.mark.unit

# Known vector: secret "north", user "alice", now 1_700_000_000, ttl 3600.
VECTOR_USERNAME = "1700003600:alice"
VECTOR_PASSWORD = "wjwSXO2ch1B6VaLTLMy2Avn5O9o="


# --- TURN REST API credentials ---


def test_turn_credentials_known_vector():
    username, password = turn_credentials("north", "alice", 3600, 1_700_000_000)
    assert username == VECTOR_USERNAME
    by_hand = base64.b64encode(hmac.new(b"north", b"1700003600:alice", hashlib.sha1).digest()).decode("ascii")
    assert password == by_hand == VECTOR_PASSWORD


def test_turn_credentials_truncate_fractional_time():
    assert turn_credentials("north", "alice", 3600, 1_700_000_000.9) == (VECTOR_USERNAME, VECTOR_PASSWORD)
    assert turn_credentials("north", "alice", 60, 1_700_000_000)[0] == "1700000060:alice"


def test_turn_ice_server_shape():
    config = TurnConfig(urls=("turn:turn.example.org:3478", "turns:turn.example.org:5349"), secret="north")
    server = turn_ice_server(config, "alice", 1_700_000_000)
    assert server == {
        "urls": ["turn:turn.example.org:3478", "turns:turn.example.org:5349"],
        "username": VECTOR_USERNAME,
        "credential": VECTOR_PASSWORD,
    }
    assert config.ttl_s == 3600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"urls": ("stun:turn.example.org:3478",), "secret": "s"}, "stun:turn.example.org:3478"),
        ({"urls": ("http://turn.example.org",), "secret": "s"}, "turn: or turns:"),
        ({"urls": (), "secret": "s"}, "at least one"),
        ({"urls": ("turn:t.example",), "secret": "s", "ttl_s": 59}, "59"),
        ({"urls": ("turn:t.example",), "secret": "s", "ttl_s": 86401}, "60..86400"),
        ({"urls": ("turn:t.example",), "secret": ""}, "secret is empty"),
    ],
)
def test_turn_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TurnConfig(**kwargs)


def test_turn_config_repr_hides_secret():
    config = TurnConfig(urls=("turn:t.example:3478",), secret="hunter2-very-secret", ttl_s=600)
    text = repr(config)
    assert "hunter2-very-secret" not in text and "secret" not in text
    assert "turn:t.example:3478" in text and "600" in text


# --- self-signed certificate ---


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_self_signed_certificate_contents(tmp_path):
    directory = tmp_path / "tls" / "nested"  # created when missing
    cert_path, key_path = self_signed_certificate(directory, ["localhost", "127.0.0.1", "::1"])
    assert cert_path == directory / "cert.pem" and key_path == directory / "key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600

    cert = _load(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "livestyle self-signed"
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku

    now = dt.datetime.now(dt.UTC)
    assert abs(cert.not_valid_after_utc - (now + dt.timedelta(days=30))) < dt.timedelta(minutes=5)
    assert abs(cert.not_valid_before_utc - (now - dt.timedelta(days=1))) < dt.timedelta(minutes=5)


def test_self_signed_certificate_reuse_and_regenerate(tmp_path):
    cert_path, key_path = self_signed_certificate(tmp_path, ["localhost", "127.0.0.1"])
    first = (cert_path.read_bytes(), key_path.read_bytes(), cert_path.stat().st_mtime_ns, key_path.stat().st_mtime_ns)

    # Same hosts (order and case do not matter): the files are left alone.
    again = self_signed_certificate(tmp_path, ["127.0.0.1", "LOCALHOST"])
    assert again == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first[:2]
    assert (cert_path.stat().st_mtime_ns, key_path.stat().st_mtime_ns) == first[2:]

    # Different hosts: a new key and certificate naming the new set.
    self_signed_certificate(tmp_path, ["localhost", "127.0.0.1", "192.168.1.20", "studio.lan"])
    assert cert_path.read_bytes() != first[0] and key_path.read_bytes() != first[1]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    san = _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "studio.lan"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("192.168.1.20"),
    }


def test_self_signed_certificate_replaces_broken_files(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    cert_path, _ = self_signed_certificate(tmp_path, ["localhost"])
    assert _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_self_signed_certificate_needs_a_host(tmp_path):
    with pytest.raises(ValueError, match="at least one host"):
        self_signed_certificate(tmp_path, [])


def test_default_hosts():
    hosts = default_hosts()
    assert hosts[:3] == ["localhost", "127.0.0.1", "::1"]
    assert len(hosts) == len(set(hosts))
    for extra in hosts[3:]:
        ip = ipaddress.ip_address(extra)
        assert ip.version == 4 and not ip.is_loopback


async def test_tls_handshake_with_self_signed_certificate(tmp_path):
    cert_path, key_path = self_signed_certificate(tmp_path, ["localhost", "127.0.0.1"])
    server_ctx = ssl_context(cert_path, key_path)
    assert isinstance(server_ctx, ssl.SSLContext)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello over {request.scheme}")

    app = web.Application()
    app.router.add_get("/hello", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        url = f"https://127.0.0.1:{server.port}/hello"
        trusting = ssl.create_default_context(cafile=str(cert_path))
        assert trusting.check_hostname
        async with aiohttp.ClientSession() as session:
            # No verification at all.
            async with session.get(url, ssl=False) as resp:
                assert resp.status == 200 and await resp.text() == "hello over https"
            # Full verification against cert.pem, hostname "localhost" (connecting to the IPv4 loopback).
            async with session.get(url, ssl=trusting, server_hostname="localhost") as resp:
                assert resp.status == 200 and await resp.text() == "hello over https"
            # Full verification against the IP address SAN.
            async with session.get(url, ssl=trusting) as resp:
                assert resp.status == 200
            # A name the certificate does not cover is refused.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(url, ssl=trusting, server_hostname="elsewhere.example"):
                    pass
    finally:
        await server.close()


def test_self_signed_certificate_not_reused_near_expiry(tmp_path):
    from server.tls import _reusable

    cert_path, key_path = self_signed_certificate(tmp_path, ["localhost"])
    wanted = {"localhost"}
    now = dt.datetime.now(dt.UTC)
    assert _reusable(cert_path, key_path, wanted, now + dt.timedelta(days=28))
    assert not _reusable(cert_path, key_path, wanted, now + dt.timedelta(days=29, hours=1))
    assert not _reusable(cert_path, key_path, {"localhost", "studio.lan"}, now)


# --- the docker-compose TURN relay ---

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def _coturn_flags() -> dict[str, list[str]]:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["coturn"]["command"]
    flags: dict[str, list[str]] = {}
    for item in command:
        name, _, value = item.partition("=")
        flags.setdefault(name, []).append(value)
    return flags


def _denied(address: str, ranges: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    for text in ranges:
        low, _, high = text.partition("-")
        first, last = ipaddress.ip_address(low), ipaddress.ip_address(high or low)
        if first.version == ip.version and first <= ip <= last:
            return True
    return False


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.53.0.1",
        "0.0.0.0",
        "10.1.2.3",
        "172.20.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",
        "198.18.0.1",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 to loopback
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "2002:7f00:1::1",  # 6to4 of loopback
    ],
)
def test_compose_turn_relay_refuses_internal_peers(address):
    assert _denied(address, _coturn_flags()["--denied-peer-ip"]), address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "203.0.114.9", "2606:4700:4700::1111", "2a00:1450::1"])
def test_compose_turn_relay_still_reaches_the_internet(address):
    assert not _denied(address, _coturn_flags()["--denied-peer-ip"]), address


def test_compose_turn_relay_allows_only_this_server_among_internal_addresses():
    flags = _coturn_flags()
    assert flags["--allowed-peer-ip"] == [
        "${SERVER_IP:?set SERVER_IP in .env to this host's own address (hostname -I)}"
    ]
    for flag in ("--no-tcp-relay", "--no-multicast-peers", "--use-auth-secret", "--fingerprint"):
        assert flag in flags, flag
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    secret = services["livestyle"]["environment"]["LIVESTYLE_TURN_SECRET"]
    assert flags["--static-auth-secret"] == [secret]  # one shared secret
    ports = int(flags["--min-port"][0]), int(flags["--max-port"][0])
    assert 1024 < ports[0] < ports[1]

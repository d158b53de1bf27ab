"""A host whose only address is 127.0.0.1 (a bare container or VM) gives aiortc no ICE
candidate at all, so every WebRTC session times out. The server says so at start, the
bench skips its WebRTC runs before starting a server, and a bench client that cannot
connect says how many candidates each side offered."""

import ifaddr
import numpy as np
import pytest
from media import DAVIS_DIR

from bench import schema
from bench.loopback import ClipTrack, LoopbackClient
from server.cli import main
from signaling.ice import IceServer, host_addresses, unreachable_reason


def only(*addresses: str) -> list[ifaddr.Adapter]:
    ips = [ifaddr.IP(a, 8, "lo") for a in addresses]
    return [ifaddr.Adapter("lo", "lo", ips, index=1)]


@pytest.fixture
def loopback_only(monkeypatch):
    """This machine as aioice sees it on a loopback-only host."""
    monkeypatch.setattr(ifaddr, "get_adapters", lambda *a, **k: only("127.0.0.1"))


@pytest.mark.unit
def test_only_127_0_0_1_means_no_peer_can_connect_unless_a_relay_is_configured(monkeypatch, loopback_only):
    assert host_addresses() == []
    why = unreachable_reason()
    assert why is not None and "127.0.0.1" in why and "ip addr add" in why and "--ice-server turn:" in why
    assert unreachable_reason((IceServer(("stun:stun.example.org:3478",)),)) == why  # STUN finds no address
    assert unreachable_reason((IceServer(("turn:turn.example.org:3478",), "u", "p"),)) is None
    # aioice's own rule: any other IPv4 address of any interface is a host candidate
    monkeypatch.setattr(ifaddr, "get_adapters", lambda *a, **k: only("127.0.0.1", "127.0.0.2"))
    assert host_addresses() == ["127.0.0.2"] and unreachable_reason() is None


@pytest.mark.unit
def test_bench_skips_webrtc_without_starting_a_server_on_such_a_host(tmp_path, loopback_only):
    args = ["--scenarios", "webrtc", "--webrtc-engine", "preview", "--webrtc-clients", "1"]
    code = main(["bench", "--model", "tiny", "--davis-dir", str(DAVIS_DIR), "--out-dir", str(tmp_path), *args])
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    report, problems = schema.load(path)
    assert problems == []
    assert [s["scenario"] for s in report["skipped"]] == ["webrtc"] and "127.0.0.1" in report["skipped"][0]["reason"]
    assert not [p for p in report["meta"]["processes"] if p["role"] == "server"]


@pytest.mark.webrtc
async def test_a_client_that_cannot_connect_counts_the_candidates_of_both_sides(loopback_only):
    client = LoopbackClient("http://127.0.0.1:9", ClipTrack([np.zeros((64, 64, 3), np.uint8)]))
    client.pc.addTransceiver(client.track, direction="sendrecv")
    try:
        await client.pc.setLocalDescription(await client.pc.createOffer())
        client.answer = {"sdp": "v=0\r\n", "type": "answer"}
        why = client.not_connected()
    finally:
        await client.close()
    assert "0 candidate(s) in our offer, 0 in the server's answer" in why and "ICE new" in why


@pytest.mark.unit
def test_the_server_warns_at_start_unless_a_relay_or_its_media_processes_take_the_peers(loopback_only):
    from server.cli import unreachable_warning
    from server.config import load_config

    assert "cannot connect" in (unreachable_warning(load_config([], environ={})) or "")
    relayed = load_config(["--ice-server", "turn:u:p@turn.example.org:3478"], environ={})
    assert unreachable_warning(relayed) is None
    front = ["--peer", "m1=http://127.0.0.1:9001", "--place-on", "m1", "--peer-secret", "s" * 32, "--pod-name", "f"]
    assert unreachable_warning(load_config(front, environ={})) is None

"""A host whose only address is 127.0.0.1 (a bare container or VM) gives aiortc no ICE
candidate at all, so every WebRTC session times out. The server says so at start, the
bench skips its WebRTC runs before starting a server, and a bench client that cannot
connect says how many candidates each side offered."""

import asyncio

import ifaddr
import numpy as np
import pytest
from media import DAVIS_DIR

from bench import schema
from bench.loopback import ClipTrack, LoopbackClient
from server.cli import main
from signaling.ice import IceServer, host_addresses, offer_loopback, unreachable_reason


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


async def connect_two_peers(timeout: float) -> tuple[str, int]:
    """Two aiortc peers in this process, a data channel between them: (state, candidates offered)."""
    from aiortc import RTCPeerConnection

    a, b = RTCPeerConnection(), RTCPeerConnection()
    try:
        a.createDataChannel("probe")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        for _ in range(int(timeout / 0.1)):
            if a.connectionState == "connected" and b.connectionState == "connected":
                break
            await asyncio.sleep(0.1)
        return a.connectionState, a.localDescription.sdp.count("a=candidate:")
    finally:
        await a.close()
        await b.close()


@pytest.mark.webrtc
async def test_ice_loopback_lets_two_peers_on_a_loopback_only_host_connect(loopback_only):
    state, candidates = await connect_two_peers(timeout=3)
    assert candidates == 0 and state != "connected"  # stock aioice here: nothing to try
    undo = offer_loopback()
    try:
        assert host_addresses() == ["127.0.0.1"] and unreachable_reason() is None
        state, candidates = await connect_two_peers(timeout=15)
    finally:
        undo()
    assert candidates >= 1 and state == "connected"
    assert host_addresses() == []  # the undo restores aioice's own rule


@pytest.mark.webrtc
def test_bench_on_such_a_host_runs_every_process_with_ice_loopback(tmp_path, loopback_only):
    args = ["--scenarios", "webrtc", "--webrtc-engine", "preview", "--webrtc-clients", "1"]
    args += ["--webrtc-codecs", "VP8", "--webrtc-seconds", "2"]
    code = main(["bench", "--model", "tiny", "--davis-dir", str(DAVIS_DIR), "--out-dir", str(tmp_path), *args])
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    report, problems = schema.load(path)
    assert problems == [] and report["skipped"] == []
    processes = report["meta"]["processes"]
    servers = [p for p in processes if p["role"] == "server"]
    clients = [p for p in processes if p["role"] == "client"]
    assert servers and clients and all("--ice-loopback" in p["argv"] for p in servers + clients)
    (row,) = report["scenarios"]["webrtc"]["rows"]
    assert row["completed"] == 1 and "errors" not in row and row["delivered_fps_mean"] > 0, row


@pytest.mark.unit
def test_ice_loopback_is_a_flag_and_an_environment_switch():
    from server.cli import unreachable_warning
    from server.config import load_config

    assert load_config([], environ={}).ice_loopback is False
    assert load_config(["--ice-loopback"], environ={}).ice_loopback is True
    assert load_config([], environ={"LIVESTYLE_ICE_LOOPBACK": "1"}).ice_loopback is True
    assert unreachable_warning(load_config(["--ice-loopback"], environ={})) is None


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

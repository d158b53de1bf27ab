import json

import pytest

from signaling.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorMsg,
    PingMsg,
    PromptAppliedMsg,
    ProtocolError,
    SetAdapterStrengthMsg,
    SetPromptMsg,
    StatsMsg,
    encode_server_message,
    parse_client_message,
)

pytestmark = pytest.mark.unit


def parse(obj, max_chars=100):
    return parse_client_message(obj if isinstance(obj, (str, bytes)) else json.dumps(obj), max_chars)


def test_set_prompt_and_ping_parse():
    assert parse({"v": 1, "type": "set_prompt", "prompt": "  watercolor ", "seq": 3}) == SetPromptMsg("watercolor", 3)
    assert parse({"v": 1, "type": "ping", "t": 12.5}) == PingMsg(12.5)
    assert parse({"v": 1, "type": "set_adapter_strength", "value": 1.25, "seq": 2}) == SetAdapterStrengthMsg(1.25, 2)
    assert parse(b'{"v":1,"type":"ping","t":1}') == PingMsg(1.0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"hello"', "bad_message"),
        ('{"type": "ping", "t": 1}', "bad_version"),
        ('{"v": 2, "type": "ping", "t": 1}', "bad_version"),
        ('{"v": 1, "type": "launch_rockets"}', "unknown_type"),
        ('{"v": 1}', "unknown_type"),
        ('{"v": 1, "type": "set_prompt", "prompt": 5, "seq": 1}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": -1}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": true}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x"}', "bad_message"),
        ('{"v": 1, "type": "ping", "t": "soon"}', "bad_message"),
        ('{"v": 1, "type": "ping", "t": NaN}', "bad_message"),
        ('{"v": 1, "type": "set_adapter_strength", "value": 1.6, "seq": 1}', "bad_value"),
        ('{"v": 1, "type": "set_adapter_strength", "value": -0.1, "seq": 1}', "bad_value"),
        ('{"v": 1, "type": "set_adapter_strength", "value": "max", "seq": 1}', "bad_message"),
        (b"\xff\xfe", "bad_json"),
        ("[" * 100_000, "message_too_large"),
    ],
)
def test_bad_messages_raise_protocol_errors_with_codes(raw, code):
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.message  # always a human-readable reason


def test_deeply_nested_json_is_an_error_not_a_crash():
    raw = "[" * (MAX_MESSAGE_BYTES // 2) + "]" * (MAX_MESSAGE_BYTES // 2)
    with pytest.raises(ProtocolError) as info:
        parse(raw[: MAX_MESSAGE_BYTES - 1])
    assert info.value.code in ("bad_json", "bad_message")


def test_over_long_prompt_is_rejected_with_its_seq():
    with pytest.raises(ProtocolError) as info:
        parse({"v": 1, "type": "set_prompt", "prompt": "a" * 101, "seq": 7}, max_chars=100)
    assert info.value.code == "prompt_too_long"
    assert info.value.seq == 7
    assert "101" in info.value.message and "100" in info.value.message


def test_server_messages_carry_version_and_type():
    for msg, kind in [
        (PromptAppliedMsg(seq=2, latency_ms=12.5), "prompt_applied"),
        (StatsMsg(fps_in=30, fps_out=29.5, dropped=1, latency_ms=None), "stats"),
        (ErrorMsg(code="bad_json", message="nope"), "error"),
    ]:
        data = json.loads(encode_server_message(msg))
        assert data["v"] == 1 and data["type"] == kind
    stats = json.loads(encode_server_message(StatsMsg(fps_in=1, fps_out=1, dropped=0, latency_ms=None)))
    assert "latency_ms" in stats and stats["latency_ms"] is None
    err = json.loads(encode_server_message(ErrorMsg(code="x", message="y")))
    assert "seq" not in err

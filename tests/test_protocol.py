import json
import math
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from signaling.protocol import (
    CLIENT_TYPES,
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    ClientMessage,
    CreateWatchMsg,
    ErrorMsg,
    PingMsg,
    PromptAppliedMsg,
    ProtocolError,
    RerollMsg,
    RevokeWatchMsg,
    SetAdapterStrengthMsg,
    SetPromptMsg,
    StatsMsg,
    encode_server_message,
    parse_client_message,
)

pytestmark = pytest.mark.unit

HUGE = "1" + "0" * 400  # beyond float range: math.isfinite(int(HUGE)) raises OverflowError


def parse(obj, max_chars=100):
    return parse_client_message(obj if isinstance(obj, (str, bytes)) else json.dumps(obj), max_chars)


def test_set_prompt_and_ping_parse():
    assert parse({"v": 1, "type": "set_prompt", "prompt": "  watercolor ", "seq": 3}) == SetPromptMsg("watercolor", 3)
    assert parse({"v": 1, "type": "set_prompt", "prompt": "ink\t\n wash", "seq": 4}) == SetPromptMsg("ink wash", 4)
    assert parse({"v": 1, "type": "ping", "t": 12.5}) == PingMsg(12.5)
    assert parse({"v": 1, "type": "set_adapter_strength", "value": 1.25, "seq": 2}) == SetAdapterStrengthMsg(1.25, 2)
    assert parse(b'{"v":1,"type":"ping","t":1}') == PingMsg(1.0)
    assert parse({"v": 1, "type": "create_watch"}) == CreateWatchMsg()
    assert parse({"v": 1, "type": "create_watch", "renew": True}) == CreateWatchMsg(renew=True)
    assert parse({"v": 1, "type": "reroll", "seq": 3}) == RerollMsg(seq=3)
    assert parse({"v": 1, "type": "reroll", "seq": 4, "seed": 99}) == RerollMsg(seq=4, seed=99)
    assert parse({"v": 1, "type": "revoke_watch", "extra": [1, {"a": None}]}) == RevokeWatchMsg()
    assert parse({"v": 1, "type": "set_prompt", "prompt": "ölgemälde, 油画 🎨", "seq": 2**53 - 1}).seq == 2**53 - 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"hello"', "bad_message"),
        ("null", "bad_message"),
        ('{"type": "ping", "t": 1}', "bad_version"),
        ('{"v": 2, "type": "ping", "t": 1}', "bad_version"),
        ('{"v": true, "type": "ping", "t": 1}', "bad_version"),
        ('{"v": 1.0, "type": "ping", "t": 1}', "bad_version"),
        ('{"v": "1", "type": "ping", "t": 1}', "bad_version"),
        ('{"v": 1, "type": "launch_rockets"}', "unknown_type"),
        ('{"v": 1, "type": ["ping"]}', "unknown_type"),
        ('{"v": 1}', "unknown_type"),
        ('{"v": 1, "type": "set_prompt", "prompt": 5, "seq": 1}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": -1}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": true}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": 1.5}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x", "seq": 9007199254740992}', "bad_message"),
        ('{"v": 1, "type": "set_prompt", "prompt": "x"}', "bad_message"),
        ('{"v": 1, "type": "create_watch", "renew": "yes"}', "bad_message"),
        ('{"v": 1, "type": "reroll"}', "bad_message"),
        ('{"v": 1, "type": "reroll", "seq": 1, "seed": -1}', "bad_value"),
        ('{"v": 1, "type": "reroll", "seq": 1, "seed": 2147483648}', "bad_value"),
        ('{"v": 1, "type": "reroll", "seq": 1, "seed": 1.5}', "bad_value"),
        ('{"v": 1, "type": "set_prompt", "prompt": "a\\u0000b", "seq": 1}', "prompt_invalid"),
        ('{"v": 1, "type": "set_prompt", "prompt": "\\ud800", "seq": 1}', "prompt_invalid"),
        ('{"v": 1, "type": "ping", "t": "soon"}', "bad_message"),
        ('{"v": 1, "type": "ping"}', "bad_message"),
        ('{"v": 1, "type": "ping", "t": NaN}', "bad_json"),
        ('{"v": 1, "type": "ping", "t": Infinity}', "bad_json"),
        ('{"v": 1, "type": "ping", "t": -Infinity}', "bad_json"),
        ('{"v": 1, "type": "ping", "t": 1e400}', "bad_message"),
        ('{"v": 1, "type": "set_adapter_strength", "value": 1.6, "seq": 1}', "bad_value"),
        ('{"v": 1, "type": "set_adapter_strength", "value": -0.1, "seq": 1}', "bad_value"),
        ('{"v": 1, "type": "set_adapter_strength", "value": "max", "seq": 1}', "bad_message"),
        ('{"v": 1, "type": "set_adapter_strength", "value": NaN, "seq": 1}', "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"\x00\x01\x02binary", "bad_json"),
        ("[" * 100_000, "message_too_large"),
        (b"{" * (MAX_MESSAGE_BYTES + 1), "message_too_large"),
    ],
)
def test_bad_messages_raise_protocol_errors_with_codes(raw, code):
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.message  # always a human-readable reason


@pytest.mark.parametrize(
    "template",
    [
        '{"v":1,"type":"ping","t":%s}',
        '{"v":%s,"type":"ping","t":1}',
        '{"v":1,"type":"set_prompt","prompt":"x","seq":%s}',
        '{"v":1,"type":"set_adapter_strength","value":%s,"seq":1}',
        '{"v":1,"type":"set_adapter_strength","value":1,"seq":%s}',
        '{"v":1,"type":"create_watch","junk":%s}',
        '{"v":1,"type":%s}',
        "[%s]",
        "%s",
    ],
)
@pytest.mark.parametrize("number", [HUGE, "-" + HUGE, "1" * 5000, HUGE + ".5", "1e999", "-1e999", "0." + "1" * 400])
def test_numbers_beyond_float_range_in_any_field_are_protocol_errors(template, number):
    """The reported crash: a 400-digit integer made math.isfinite raise OverflowError (and
    past 4300 digits, json itself raises ValueError); it must be an error reply instead."""
    with pytest.raises(ProtocolError) as info:
        parse(template % number)
    assert info.value.code in ("bad_message", "bad_json")
    assert len(info.value.message) < 200  # the reply never echoes the number back


def test_deep_nesting_is_an_error_wherever_it_is():
    for depth in (MAX_DEPTH + 1, 200, 5000):
        nested = "[" * depth + "]" * depth
        for raw in (nested, f'{{"v":1,"type":"ping","t":1,"x":{nested}}}'):
            if len(raw) > MAX_MESSAGE_BYTES:
                raw = raw[: MAX_MESSAGE_BYTES - 1]
            with pytest.raises(ProtocolError) as info:
                parse(raw)
            assert info.value.code in ("bad_json", "bad_message")
    shallow = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse(f'{{"v":1,"type":"ping","t":1,"x":{shallow}}}') == PingMsg(1.0)


def test_over_long_prompt_is_rejected_with_its_seq():
    with pytest.raises(ProtocolError) as info:
        parse({"v": 1, "type": "set_prompt", "prompt": "a" * 101, "seq": 7}, max_chars=100)
    assert info.value.code == "prompt_too_long"
    assert info.value.seq == 7
    assert "101" in info.value.message and "100" in info.value.message


def test_error_messages_quote_little_of_what_was_sent():
    with pytest.raises(ProtocolError) as info:
        parse({"v": 1, "type": "x" * 10_000})
    assert len(info.value.message) < 300


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


# ---- property-based fuzz: whatever arrives, the parser returns a message or raises ProtocolError

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
FIELDS = ("v", "type", "prompt", "seq", "value", "t")


@st.composite
def client_messages(draw):
    """Objects shaped like every client message type, with each field either plausible or
    any JSON value (huge integers, NaN/Infinity, nested containers, odd strings)."""
    plausible = {
        "v": st.sampled_from([1, 1, 1, 0, 2, True, "1", 1.0]),
        "type": st.sampled_from([*CLIENT_TYPES, "", "PING", "hello"]),
        "prompt": st.text(max_size=120),
        "seq": st.integers(min_value=-5, max_value=2**60),
        "value": st.floats(min_value=-1, max_value=3) | st.integers(-2, 3),
        "t": st.floats() | st.integers(),
    }
    msg = {}
    for name in FIELDS:
        if draw(st.booleans()):
            msg[name] = draw(plausible[name] if draw(st.booleans()) else json_value)
    extra = draw(st.dictionaries(st.text(max_size=6), json_value, max_size=2))
    return {**extra, **msg}


def encodings(obj):
    """The same object as JSON text, raw UTF-8 bytes, and with a non-JSON literal spliced in."""
    text = json.dumps(obj)  # allow_nan: emits NaN/Infinity literals, as a hostile client could
    return [text, text.encode("utf-8", errors="surrogatepass"), text.replace("null", "NaN", 1)]


def check_parse(raw, max_chars=60):
    try:
        msg = parse_client_message(raw, max_chars)
    except ProtocolError as exc:
        assert exc.code and exc.message and len(exc.message) < 300
        json.loads(encode_server_message(ErrorMsg(exc.code, exc.message, exc.seq)))  # the reply encodes
        return None
    assert isinstance(msg, ClientMessage)
    return msg


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_messages())
@example({"v": 1, "type": "ping", "t": 10**400})
@example({"v": 1, "type": "set_adapter_strength", "value": -(10**400), "seq": 1})
@example({"v": 1, "type": "set_prompt", "prompt": "\udfff", "seq": 1})
def test_fuzz_every_message_type_only_raises_protocol_errors(obj):
    for raw in encodings(obj):
        msg = check_parse(raw)
        if msg is None:
            continue
        # Whatever was accepted is what the session expects: typed, finite, in range.
        if isinstance(msg, SetPromptMsg):
            assert 0 <= msg.seq < 2**53 and len(msg.prompt) <= 60 and msg.prompt == msg.prompt.strip()
            msg.prompt.encode("utf-8")  # no unpaired surrogates reach the engine
        elif isinstance(msg, SetAdapterStrengthMsg):
            assert 0 <= msg.value <= 1.5 and 0 <= msg.seq < 2**53
        elif isinstance(msg, PingMsg):
            assert math.isfinite(msg.t)
            json.loads(encode_server_message(ErrorMsg("x", "y")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_fuzz_arbitrary_bytes_and_text_only_raise_protocol_errors(raw):
    check_parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CLIENT_TYPES), st.integers(min_value=0, max_value=2**53 - 1), st.text(max_size=40))
def test_fuzz_valid_messages_parse_to_their_type(kind, seq, prompt):
    obj = {"v": 1, "type": kind, "seq": seq, "prompt": prompt, "value": seq % 16 / 10, "t": seq / 7}
    msg = check_parse(json.dumps(obj))
    # Whitespace of any kind is fine (collapsed); other control characters and surrogates are not.
    usable = not any(unicodedata.category(c) in ("Cc", "Cs") for c in " ".join(prompt.split()))
    if kind != "set_prompt" or usable:
        assert msg is not None and type(msg).__name__.lower().replace("msg", "") == kind.replace("_", "")

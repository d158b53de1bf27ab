from pathlib import Path

import pytest

from pipeline.config import ConfigError, DiffusionConfig, EngineConfig
from server.config import ServerConfig, load_config, parse_ice_server
from signaling.ice import IceServer

pytestmark = pytest.mark.unit


def test_defaults():
    config = load_config([], environ={})
    assert config == ServerConfig()
    assert config.port == 8080 and config.engine.kind == "auto"
    assert config.max_body_bytes == 64 * 1024


def test_environment_then_command_line_wins():
    env = {
        "LIVESTYLE_PORT": "9000",
        "LIVESTYLE_MAX_SESSIONS": "3",
        "LIVESTYLE_ENGINE": "preview",
        "LIVESTYLE_ICE_SERVERS": "stun:a.example:3478,turn:u:p@b.example:3478",
    }
    config = load_config([], environ=env)
    assert (config.port, config.max_sessions, config.engine.kind) == (9000, 3, "preview")
    assert config.ice_servers == (
        IceServer(("stun:a.example:3478",)),
        IceServer(("turn:b.example:3478",), "u", "p"),
    )
    config = load_config(["--port", "9100", "--max-batch", "4"], environ=env)
    assert config.port == 9100 and config.engine.max_batch == 4 and config.max_sessions == 3


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_batch": 3}, ["3", "1, 2, 4, 8, 16"]),
        ({"kind": "gpu"}, ["'gpu'", "auto, diffusion, preview"]),
        ({"size": 500}, ["500", "multiple of 64"]),
        ({"device": "tpu"}, ["'tpu'", "cuda:N"]),
        ({"model": " "}, ["model", "tiny"]),
    ],
)
def test_engine_config_errors_say_what_was_given_and_allowed(kwargs, words):
    with pytest.raises(ConfigError) as info:
        EngineConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"port": 70000}, "70000"),
        ({"max_sessions": 0}, "max_sessions 0"),
        ({"tls_cert": Path("/nonexistent.pem"), "tls_key": Path("/nonexistent.key")}, "does not exist"),
        ({"tls_cert": Path("/etc/hostname")}, "go together"),
        ({"log_level": "loud"}, "debug, info"),
    ],
)
def test_server_config_errors(kwargs, word):
    with pytest.raises(ConfigError) as info:
        ServerConfig(**kwargs)
    assert word in str(info.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_config([], environ={"LIVESTYLE_PORT": "eighty"})
    assert "LIVESTYLE_PORT" in str(info.value) and "eighty" in str(info.value)


def test_ice_server_forms():
    assert parse_ice_server('{"urls": "turn:x:3478", "username": "a", "credential": "b"}') == IceServer(
        ("turn:x:3478",), "a", "b"
    )
    assert parse_ice_server("stun:stun.example.org:19302").to_json() == {"urls": ["stun:stun.example.org:19302"]}
    with pytest.raises(ConfigError):
        parse_ice_server("http://example.org")
    with pytest.raises(ConfigError):
        parse_ice_server("{bad json")


def test_prompt_blend_from_environment_and_flag_and_its_range():
    assert load_config([], environ={}).engine.diffusion.prompt_blend == 4  # on by default
    config = load_config([], environ={"LIVESTYLE_PROMPT_BLEND": "0"})
    assert config.engine.diffusion.prompt_blend == 0
    assert load_config(["--prompt-blend", "8"], environ={}).engine.diffusion.prompt_blend == 8
    with pytest.raises(ConfigError, match=r"prompt_blend 121 .* 0\.\.120 \(--prompt-blend\)"):
        DiffusionConfig(prompt_blend=121)


def test_engine_host_and_engine_socket_are_checked():
    config = load_config(["--engine-socket", "/tmp/ls-engine.sock"])
    assert config.engine_socket == "/tmp/ls-engine.sock" and config.engine_host is None
    assert load_config([], {"LIVESTYLE_ENGINE_HOST": "/tmp/e.sock"}).engine_host == "/tmp/e.sock"
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(["--engine-host", "/tmp/a.sock", "--engine-socket", "/tmp/b.sock"])
    with pytest.raises(ConfigError, match=r"--engine-socket .* 1\.\.107 bytes"):
        load_config(["--engine-socket", "/tmp/" + "x" * 120])


def test_place_on_names_peers_and_says_so_when_it_does_not():
    args = ["--pod-name", "front", "--peer", "m1=http://127.0.0.1:9001", "--peer", "m2=http://127.0.0.1:9002"]
    config = load_config([*args, "--place-on", "m1, m2"], environ={})
    assert config.cluster.place_on == ("m1", "m2")
    env = {"LIVESTYLE_PEERS": "m1=http://127.0.0.1:9001", "LIVESTYLE_POD_NAME": "front", "LIVESTYLE_PLACE_ON": "m1"}
    assert load_config([], environ=env).cluster.place_on == ("m1",)
    with pytest.raises(ConfigError, match=r"--place-on names m3, which are not peers; .*--peer NAME=URL"):
        load_config([*args, "--place-on", "m1,m3"], environ={})
    assert load_config([], environ={}).cluster.place_on == ()

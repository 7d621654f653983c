"""`twistd broker`'s options from a TOML file, the environment and the
command line, in that order of weight; and the log observer they choose."""

from __future__ import annotations

import io
import json
import re

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python.usage import UsageError

from broker.logs import log_observer
from broker.tap import Options


def parsed(arguments: list[str], environment: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environment = environment or {}
    options.parseOptions(arguments)
    return options


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text(
        'port = ["tcp:4000", 4001]\n'
        "max_prefetch = 7\n"
        "max-topics = 70\n"
        "ack-timeout = 1.5\n"
        "disconnect-slow-consumers = true\n"
        'log-format = "json"\n'
    )
    only_file = parsed(["--config", str(config)])
    assert only_file["ports"] == ["tcp:4000", "4001"]
    assert only_file.settings().max_prefetch == 7 and only_file.settings().max_topics == 70
    assert only_file.settings().delivery.ack_timeout == 1.5
    assert only_file.settings().disconnect_slow_consumers
    environment = {
        "BROKER_MAX_PREFETCH": "8",
        "BROKER_PORT": "tcp:5000 tls:5001",
        "BROKER_DISCONNECT_SLOW_CONSUMERS": "false",
        "BROKER_TLS_CERT": "cert.pem",
        "OTHER_MAX_TOPICS": "1",
    }
    both = parsed([f"--config={config}"], environment)
    assert both["ports"] == ["tcp:5000", "tls:5001"] and both["tls-cert"] == "cert.pem"
    assert both.settings().max_prefetch == 8 and both.settings().max_topics == 70
    assert not both.settings().disconnect_slow_consumers
    everything = parsed(
        ["-c", str(config), "--max-prefetch", "9", "--port", "6000", "--tls-cert", "c.pem"],
        environment,
    )
    assert everything["ports"] == ["6000"] and everything.settings().max_prefetch == 9
    assert everything["log-format"] == "json"  # from the file still
    assert parsed([])["ports"] == ["3000"]


@pytest.mark.parametrize(
    ("content", "environment", "message"),
    [
        ("max_prefetch = \n", {}, "is not valid TOML"),
        ("max_prefetches = 3\n", {}, "max-prefetches: no such option"),
        ("max_prefetch = -3\n", {}, "max-prefetch: must be positive, not -3"),
        ("max_prefetch = true\n", {}, "max-prefetch: a string or a number"),
        ("port = [true]\n", {}, "port: a port or a list of ports"),
        ('disconnect-slow-consumers = "maybe"\n', {}, "true or false"),
        ("[broker]\nport = 1\n", {}, "options are top-level keys"),
        ("", {"BROKER_MAX_TOPICS": "many"}, "BROKER_MAX_TOPICS: not a number: 'many'"),
        ("", {"BROKER_LOG_FORMAT": "xml"}, "BROKER_LOG_FORMAT: must be one of text, json"),
    ],
)
def test_a_bad_file_or_variable_is_one_clear_error(tmp_path, content, environment, message):
    config = tmp_path / "broker.toml"
    config.write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        parsed(["--config", str(config)], environment)


def test_an_unknown_broker_variable_is_ignored_with_a_warning(capsys):
    options = parsed([], {"BROKER_FSYNC_EVERY": "1", "BROKER_URL": "x", "BROKER_MAX_TOPICS": "5"})
    assert options.settings().max_topics == 5
    warned = capsys.readouterr().err
    assert "ignoring BROKER_FSYNC_EVERY: no such option" in warned and "BROKER_URL" in warned


def test_a_missing_config_file_is_named():
    with pytest.raises(UsageError, match=re.escape("cannot read the config file /nowhere")):
        parsed(["--config", "/nowhere"])


def test_json_logs_are_one_object_per_line_with_their_fields_and_levels_filter():
    out = io.StringIO()
    observer = log_observer("json", "info", out)
    log = Logger(observer=observer, namespace="broker.test")
    log.debug("{peer} connected", peer="10.0.0.1:5000")
    log.info("{peer} subscribed to {topics}", peer="10.0.0.1:5000", topics=["a"], user="alice")
    log.warn("{peer}: slow", peer="10.0.0.2:6000")
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["log_level"]["name"] for e in events] == ["info", "warn"]
    assert (events[0]["peer"], events[0]["topics"], events[0]["user"]) == (
        "10.0.0.1:5000",
        ["a"],
        "alice",
    )
    text = io.StringIO()
    Logger(observer=log_observer("text", "warn", text)).info("hidden")
    Logger(observer=log_observer("text", "warn", text)).error("{what} shown", what="this")
    assert "hidden" not in text.getvalue() and "this shown" in text.getvalue()
    assert LogLevel.levelWithName("warn") is LogLevel.warn

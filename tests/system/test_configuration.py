"""`twistd broker`'s options from a TOML file, the environment and the
command line, in that order of weight; and the log observer they choose."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python.usage import UsageError

from broker.app.log_output import log_observer
from broker.app.tap import Options
from tests.process import ROOT, twistd


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
        ('compact = ["orders.>.x"]\n', {}, "--compact 'orders.>.x'"),
        ("compact = [true]\n", {}, "compact: a string or a number"),
        ("dedup-window = -1\n", {}, "dedup-window: must be 0 or more seconds, not -1"),
        ("", {"BROKER_DEDUP_WINDOW": "soon"}, "BROKER_DEDUP_WINDOW: not a number: 'soon'"),
    ],
)
def test_a_bad_file_or_variable_is_one_clear_error(tmp_path, content, environment, message):
    config = tmp_path / "broker.toml"
    config.write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        parsed(["--config", str(config)], environment)


def test_compacted_topics_come_from_the_file_and_the_command_line(tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text('compact = ["config.*", "prices"]\ndedup-window = 0\n')
    settings = parsed(["-c", str(config), "--compact", "users.>"]).settings()
    assert settings.compact == ("kv.>", "config.*", "prices", "users.>")
    assert settings.dedup_window == 0


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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "99999"], "--port 99999: a port number is 0-65535"),
        (["--port", "tcp:65536:interface=127.0.0.1"], "--port tcp:65536:interface=127.0.0.1: a"),
        (["--port", "tcp:port=70000"], "--port tcp:port=70000: a port number is 0-65535"),
        (["--port", "tls:99999", "--tls-cert", "c.pem"], "--port tls:99999: a port number is"),
        (["--port", "tcp:-1"], "--port tcp:-1: a port number is 0-65535"),
        (["--monitor", "99999"], "--monitor 99999: a port number is 0-65535"),
        (["--monitor", "tcp:99999:interface=127.0.0.1"], "--monitor tcp:99999:interface="),
        (["--port", "3300", "--port", "3300"], "--port 3300 is given twice"),
        (["--port", "3300", "--monitor", "3300"], "--monitor 3300 is also a --port"),
        (["--mqtt-port", "99999"], "--mqtt-port 99999: a port number is 0-65535"),
        (["--ws-port", "tcp:70000"], "--ws-port tcp:70000: a port number is 0-65535"),
        (["--port", "1883", "--mqtt-port", "1883"], "--mqtt-port 1883 is given twice"),
        (["--mqtt-port", "8080", "--ws-port", "8080"], "--ws-port 8080 is given twice"),
        (["--mqtt-port", "tls:8883"], "--mqtt-port tls:8883 needs --tls-cert"),
        (["--ws-port", "tls:8443"], "--ws-port tls:8443 needs --tls-cert"),
    ],
)
def test_a_port_out_of_range_or_given_twice_is_refused_when_parsed(arguments, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parsed(arguments)


def test_ports_at_the_ends_of_the_range_and_unix_sockets_are_accepted(tmp_path):
    socket = f"unix:{tmp_path}/b.sock"
    monitor = "tcp:port=8222:interface=127.0.0.1"
    options = parsed(["--port", "0", "--port", "tcp:65535", "--port", socket, "--monitor", monitor])
    assert options["ports"] == ["0", "tcp:65535", socket]


def test_the_config_files_ports_are_checked_too(tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text("port = [3000, 3000]\n")
    with pytest.raises(UsageError, match="--port 3000 is given twice"):
        parsed(["--config", str(config)])
    config.write_text("port = 123456\n")
    with pytest.raises(UsageError, match=re.escape("--port 123456: a port number is 0-65535")):
        parsed(["--config", str(config)])


def twistd_broker(tmp_path: Path, *arguments: str) -> subprocess.Popen[str]:
    """`twistd -n broker ARGUMENTS` in tmp_path, as a user would type it."""
    return subprocess.Popen(
        [twistd(), "-n", "broker", *arguments],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--bad"], "option --bad not recognized"),
        (["--max-topics", "many"], "--max-topics: not a number: 'many'"),
        (["--port", "99999"], "--port 99999: a port number is 0-65535"),
        (["--monitor", "99999"], "--monitor 99999: a port number is 0-65535"),
        (["--port", "3300", "--port", "3300"], "--port 3300 is given twice"),
        (["--fsync", "interval"], "--fsync needs --data-dir"),
    ],
)
def test_twistd_broker_says_an_option_error_in_one_line_that_points_to_help(
    tmp_path, arguments, said
):
    child = twistd_broker(tmp_path, *arguments)
    try:
        output, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 1, output
    assert output.splitlines() == [f"twistd broker: {said} (see twistd broker --help)"]

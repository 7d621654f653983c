"""The broker as `twistd broker` and the example, run as real processes."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.web.client import Agent

from broker import __version__
from broker.client import Message, connect
from broker.testing import start_broker
from broker.wire import StartAt
from tests.conftest import Inbox
from tests.process import ROOT, free_port, spawn, spawn_broker, twistd
from tests.system.test_monitoring import read_body

EXAMPLE = str(ROOT / "example" / "pubsub.py")


def example(server: str, client_type: str, *options: str):
    """example/pubsub.py as a child process."""
    return spawn(
        [sys.executable, EXAMPLE, "--client-type", client_type, "--server", server, *options]
    )


async def stopped_cleanly(broker) -> None:
    """twistd shuts down, then ends itself with the signal it was sent."""
    assert await broker.ended in (0, "signal 15"), broker.output
    assert "Server Shut Down." in broker.output


async def round_trip(endpoint: str) -> None:
    client = connect(reactor, endpoint)
    inbox = Inbox()
    try:
        await client.subscribe(["p"], inbox, start=StartAt.BEGINNING)
        await client.publish("p", b"through twistd")
        await inbox.wait(1)
        assert inbox.payloads == [b"through twistd"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_twistd_broker_takes_its_options_from_file_environment_and_command_line(tmp_path):
    port, unused = free_port(), free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'port = ["tcp:{unused}:interface=127.0.0.1"]\n'
        'log-format = "json"\nlog_level = "warn"\nack-timeout = 5\nmax_prefetch = 7\n'
    )
    broker = spawn_broker(
        tmp_path,
        "--config",
        str(config),
        "--port",
        f"tcp:{port}:interface=127.0.0.1",  # the command line wins over the file
        env={"BROKER_LOG_LEVEL": "debug", "BROKER_MAX_PREFETCH": "9"},  # over the file
    )
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=100)
    try:
        await broker.line(f"BrokerFactory starting on {port}")
        inbox = Inbox()
        await client.subscribe(["p"], inbox, start=StartAt.BEGINNING)
        await client.publish("p", b"through twistd")
        await inbox.wait(1)
        assert (await client.subscriber_connected()).server["prefetch"] == 9
        await broker.line("subscribed to {topics} at {where}")  # debug, from the environment
    finally:
        await client.close()
        broker.signal("TERM")
        await stopped_cleanly(broker)
    events = [json.loads(line) for line in broker.output.splitlines() if line.strip()]
    subscribed = [e for e in events if "subscribed to" in e.get("log_format", "")]
    assert subscribed[0]["peer"].startswith("127.0.0.1:")
    assert (subscribed[0]["topics"], subscribed[0]["where"]) == (["p"], "Beginning")
    assert {e["log_level"]["name"] for e in events} >= {"debug", "info"}


@pytest_twisted.ensureDeferred
async def test_twistd_broker_on_a_unix_socket(tmp_path):
    path = tmp_path / "broker.sock"
    broker = spawn_broker(tmp_path, "--port", f"unix:{path}")
    try:
        await broker.line("BrokerFactory starting on")
        await round_trip(f"unix:{path}")
    finally:
        broker.signal("TERM")
        await stopped_cleanly(broker)


@pytest_twisted.ensureDeferred
async def test_twistd_broker_refuses_bad_options(tmp_path):
    broker = spawn_broker(tmp_path, "--ack-timeout", "-1")
    assert await broker.ended != 0
    assert "ack-timeout" in broker.output


@pytest_twisted.ensureDeferred
async def test_example_consumer_and_publisher():
    running = start_broker()
    server = f"127.0.0.1:{running.port}"
    try:
        consumer = example(server, "consume")
        await consumer.line("subscribed to topic-a")
        publisher = example(server, "publish", "--count", "3", "--interval", "0.01")
        assert await publisher.ended == 0
        await consumer.line("received on topic-a: message 2")
        # Replay from offset 1, and publish while consuming.
        replayer = example(
            server, "consume", "--consume-from", "1", "--publish", "--interval", "0.05"
        )
        await replayer.line("received on topic-a: message 2")
        await replayer.line("published to topic-a: message 0")
        received = [line for line in replayer.output.splitlines() if line.startswith("received")]
        assert received[0] == "received on topic-a: message 1"
        for child in (consumer, replayer):
            child.signal("INT")  # Ctrl-C
            assert await child.ended == 0, child.output
        assert consumer.output.count("received on topic-a: message 1") == 1
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_example_with_extensions():
    running = start_broker()
    server = f"127.0.0.1:{running.port}"
    try:
        publisher = example(server, "publish", "--count", "2", "--interval", "0.01", "--extensions")
        assert await publisher.ended == 0, publisher.output
        assert "message 1 (stored at offset 1)" in publisher.output
        consumer = example(server, "consume", "--consume-from", "0", "--extensions")
        await consumer.line("received on topic-a: message 1 (offset 1)")
        consumer.signal("INT")
        assert await consumer.ended == 0, consumer.output
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_the_bench_runs_and_checks_what_it_gets(tmp_path):
    bench = spawn(
        [
            sys.executable,
            "-m",
            "broker.bench",
            "fanout",
            "--messages",
            "3000",
            "--subscribers",
            "2",
            "--json",
        ],
        cwd=tmp_path,
    )
    assert await bench.ended == 0, bench.output
    result = json.loads(bench.output.strip().splitlines()[-1])
    assert result["delivered"] == 6000
    assert result["complete"] and not result["corrupt"] and not result["out_of_order"]
    assert result["broker_rss_mb"] > 0


@pytest_twisted.ensureDeferred
async def test_the_bench_spreads_its_subscribers_over_processes(tmp_path):
    bench = spawn(
        [
            *(sys.executable, "-m", "broker.bench", "fanout", "--messages", "2000"),
            *("--subscribers", "3", "--processes", "2", "--prefetch", "64", "--json"),
        ],
        cwd=tmp_path,
    )
    assert await bench.ended == 0, bench.output
    result = json.loads(bench.output.strip().splitlines()[-1])
    assert result["delivered"] == 6000 and result["complete"]
    assert not result["corrupt"] and not result["out_of_order"]
    assert result["p50_ms"] > 0  # the parts' latencies came back


@pytest_twisted.ensureDeferred
async def test_twistd_broker_stops_at_start_on_an_unusable_data_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    broker = spawn_broker(
        tmp_path,
        "--port",
        f"tcp:{free_port()}:interface=127.0.0.1",
        "--data-dir",
        str(blocker / "data"),
    )
    assert await broker.ended == 1
    assert f"twistd broker: data directory {blocker / 'data'} is not usable" in broker.output
    assert "Traceback" not in broker.output


@pytest_twisted.ensureDeferred
async def test_twistd_broker_on_a_port_in_use_says_so_in_one_line(tmp_path):
    taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port = taken.getHost().port
    try:
        broker = spawn_broker(tmp_path, "--port", f"tcp:{port}:interface=127.0.0.1")
        assert await broker.ended == 1
        assert f"twistd broker: cannot listen on tcp:{port}:interface=127.0.0.1" in broker.output
        assert "Address already in use" in broker.output
        assert "Traceback" not in broker.output
    finally:
        await taken.stopListening()


@pytest_twisted.ensureDeferred
async def test_twistd_broker_version_help_and_bad_values(tmp_path):
    # All at once: each is a Python start-up.
    version = spawn([twistd(), "broker", "--version"])
    helped = spawn([twistd(), "broker", "--help"])
    bad_values = [
        ("--retention-age", "-1", "--retention-age: must be positive, not -1"),
        ("--max-topics", "many", "--max-topics: not a number: 'many'"),
        ("--fsync", "sometimes", "--fsync: must be always, interval or never"),
    ]
    refused = [spawn_broker(tmp_path, option, value) for option, value, _ in bad_values]
    assert await version.ended == 0
    assert version.output.startswith(f"twisted-broker {__version__} (Twisted ")
    assert await helped.ended == 0
    assert "the Go broker's wire protocol" in helped.output
    assert "seed" not in helped.output
    for child, (_, _, said) in zip(refused, bad_values, strict=True):
        assert await child.ended == 1
        assert said in child.output


@pytest_twisted.ensureDeferred
async def test_twistd_broker_says_where_topics_live(tmp_path):
    port = free_port()
    in_memory = spawn_broker(tmp_path, "--port", f"tcp:{port}:interface=127.0.0.1")
    await in_memory.line("topics live in memory: they are lost when the broker stops")
    await round_trip(f"tcp:127.0.0.1:{port}")  # the reactor runs: SIGTERM is handled
    in_memory.signal("TERM")
    await stopped_cleanly(in_memory)
    on_disk = spawn_broker(
        tmp_path, "--port", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(tmp_path / "d")
    )
    await on_disk.line(f"topics live in {tmp_path / 'd'}: 0 topic(s)")
    await round_trip(f"tcp:127.0.0.1:{port}")
    on_disk.signal("TERM")
    await stopped_cleanly(on_disk)


@pytest.mark.slow  # waits for a broker that starts late
@pytest_twisted.ensureDeferred
async def test_example_says_it_cannot_reach_the_broker_then_finds_it():
    port = free_port()
    consumer = example(f"127.0.0.1:{port}", "consume")
    try:
        await consumer.line(f"cannot reach 127.0.0.1:{port} (cannot connect:")
        await consumer.line("retrying")
        running = start_broker(port=port)
        try:
            await consumer.line("subscribed to topic-a", timeout=30)
        finally:
            await running.stop()
    finally:
        consumer.signal("INT")
        await consumer.ended


@pytest_twisted.ensureDeferred
async def test_example_checks_its_options():
    empty = example("127.0.0.1:1", "consume", "--topic", "")
    assert await empty.ended == 2
    assert "--topic '': invalid topic name: empty" in empty.output
    far = example("127.0.0.1:1", "consume", "--consume-from", "70000")
    assert await far.ended == 2
    assert "needs --extensions" in far.output
    pooled = example("127.0.0.1:1", "consume", "--group", "workers")
    assert await pooled.ended == 2
    assert "--group and --durable need --extensions" in pooled.output


@pytest_twisted.ensureDeferred
async def test_example_replays_from_an_offset_past_65535_with_extensions():
    running = start_broker()
    running.factory.broker.registry.publish("far", [b"m%d" % n for n in range(70_002)])
    try:
        consumer = example(
            f"127.0.0.1:{running.port}",
            "consume",
            "--topic",
            "far",
            "--consume-from",
            "70000",
            "--extensions",
        )
        await consumer.line("received on far: m70001 (offset 70001)")
        assert "m69999" not in consumer.output
        consumer.signal("INT")
        assert await consumer.ended == 0
    finally:
        await running.stop()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_drains_on_sigterm_and_redelivers_nothing_after_a_restart(tmp_path):
    port, monitor = free_port(), free_port()
    options = [
        *("--port", f"tcp:{port}:interface=127.0.0.1"),
        *("--monitor", f"tcp:{monitor}:interface=127.0.0.1"),
        *("--data-dir", str(tmp_path / "data"), "--drain-timeout", "10"),
    ]
    broker = spawn_broker(tmp_path, *options)
    await broker.line("BrokerFactory starting on")
    held: list[Deferred] = []
    seen: list[int] = []
    restarted = False

    def handle(message: Message) -> Deferred | bool:
        seen.append(message.offset)
        if restarted:
            return True
        held.append(Deferred())
        return held[-1]

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=5)
    try:
        await client.subscribe(["jobs"], handle, start=StartAt.BEGINNING)
        for n in range(10):
            await client.publish("jobs", b"job %d" % n)
        while len(held) < 5:
            await deferLater(reactor, 0.01, lambda: None)
        broker.signal("TERM")
        await broker.line("draining 2 connection(s)")
        response = await Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{monitor}/healthz".encode()
        )
        assert response.code == 503
        await read_body(response)
        for waiting in held:
            waiting.callback(True)  # acked during the drain
        await stopped_cleanly(broker)
        assert "0 delivery(ies) not acked" in broker.output
        restarted = True
        again = spawn_broker(tmp_path, *options)
        await again.line("BrokerFactory starting on")
        while len(seen) < 10:
            await deferLater(reactor, 0.05, lambda: None)
        # Resumed at 5: a redelivery of 0-4 would have come first, in order.
        assert seen == list(range(10))
    finally:
        await client.close()
        for child in (broker, locals().get("again")):
            if child is not None and not child.ended.called:
                child.signal("TERM")
                await child.ended

"""`broker-bench`: throughput and latency of a broker, measured over TCP.

    broker-bench fanout --messages 100000 --subscribers 1
    broker-bench latency --rate 1000 --messages 10000
    broker-bench ingest --messages 200000
    broker-bench fanout --prefetch 256 --subscribers 10
    broker-bench ingest --store file --fsync always --confirms
    broker-bench fanout --broker localhost:3000 --json

Without --broker it starts `twistd broker` on a free loopback port and stops
it afterwards. Every payload carries its sequence number and send time, so
each delivery is checked for order and integrity and timed from publish to
delivery. Every message is acked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater

from broker import wire
from broker.wire import ClientDecoder, StartAt

_HEADER = struct.Struct(">Qd")  # sequence number, send time (perf_counter)
_ACK = wire.encode_u16(wire.ACK)


def make_payload(sequence: int, size: int, sent: float) -> bytes:
    """A payload whose body is derived from its sequence number, to check integrity."""
    body_size = max(0, size - _HEADER.size)
    body = (sequence.to_bytes(8, "big") * (body_size // 8 + 1))[:body_size]
    return _HEADER.pack(sequence, sent) + body


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


@dataclass
class Result:
    scenario: str
    messages: int
    delivered: int = 0
    seconds: float = 0.0
    msgs_per_sec: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")
    broker_rss_mb: float = float("nan")
    complete: bool = True
    out_of_order: int = 0
    corrupt: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


class BenchSubscriber(Protocol):
    """A subscriber that acks everything and checks what it gets; with a
    prefetch over 1 it uses the extensions (many in flight, acks by id)."""

    def __init__(
        self, topic: str, expected: int, size: int, until: int | None = None, prefetch: int = 1
    ) -> None:
        self.topic = topic
        self.prefetch = prefetch
        self.expected = expected
        self.until = until  # if set: done when this sequence number arrives
        self.size = size
        self.decoder = ClientDecoder(self, 1 << 30)
        self.decoder.expect_topic(topic)
        self.subscribed: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.received = 0
        self.next_sequence = 0
        self.out_of_order = 0
        self.corrupt = 0
        self.latencies: list[float] = []
        self.last_at = 0.0

    def connectionMade(self) -> None:
        if self.prefetch > 1:
            self.decoder.expect_hello()
            self.transport.write(wire.encode_hello({"version": 1, "prefetch": self.prefetch}))
        else:
            self._subscribe()

    def hello_received(self, fields: dict) -> None:
        self._subscribe()

    def _subscribe(self) -> None:
        self.decoder.pending_requests = 1
        self.transport.write(wire.encode_subscribe([self.topic], StartAt.CURRENT))

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self._received(payload, wire.encode_ack_id(delivery_id))

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def status_received(self, code: int) -> None:
        self.decoder.pending_requests = 0
        self.subscribed.callback(None)

    def error_received(self, text: str) -> None:
        print(f"broker error: {text}", file=sys.stderr)

    def protocol_error(self, reason: str) -> None:
        print(f"protocol error: {reason}", file=sys.stderr)
        self.transport.loseConnection()

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._received(payload, _ACK)

    def _received(self, payload: bytes, ack: bytes) -> None:
        now = time.perf_counter()
        self.transport.write(ack)
        sequence, sent = _HEADER.unpack_from(payload)
        if payload != make_payload(sequence, self.size, sent):
            self.corrupt += 1
        if self.until is not None:
            if sequence == self.until and not self.done.called:
                self.last_at = now
                self.done.callback(None)
            return
        if sequence != self.next_sequence:
            self.out_of_order += 1
        self.next_sequence = sequence + 1
        self.latencies.append(now - sent)
        self.received += 1
        self.last_at = now
        if self.received == self.expected and not self.done.called:
            self.done.callback(None)


class BenchPublisher(Protocol):
    """Publishes pre-built frames; with confirms, counts what the broker confirmed."""

    def __init__(self, confirms: bool = False, expected: int = 0) -> None:
        self.confirms = confirms
        self.expected = expected
        self.confirmed_count = 0
        self.refused = 0
        self.all_confirmed: Deferred[None] = Deferred()
        self.ready: Deferred[None] = Deferred()
        self.decoder = ClientDecoder(self, 1 << 20)

    def connectionMade(self) -> None:
        if self.confirms:
            self.decoder.expect_hello()
            self.transport.write(wire.encode_hello({"version": 1, "confirms": True}))
        else:
            self.hello_received({})

    def hello_received(self, fields: dict) -> None:
        self.transport.write(wire.encode_u16(wire.ACTION_PUBLISH))
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def confirmed(self, count: int, first_offset: int) -> None:
        self.confirmed_count += count
        self._check_done()

    def error_received(self, text: str) -> None:
        print(f"broker error: {text}", file=sys.stderr)
        self.refused += 1
        self._check_done()

    def protocol_error(self, reason: str) -> None:
        print(f"protocol error: {reason}", file=sys.stderr)
        self.transport.loseConnection()

    def _check_done(self) -> None:
        if self.confirmed_count + self.refused >= self.expected and not self.all_confirmed.called:
            self.all_confirmed.callback(None)

    def publish_range(self, topic: str, start: int, stop: int, size: int) -> None:
        prefix = struct.pack(">H", 6 + len(topic)) + b"topic:" + topic.encode()
        now = time.perf_counter()
        frames = []
        for sequence in range(start, stop):
            payload = make_payload(sequence, size, now)
            frames.append(prefix + struct.pack(">I", len(payload)) + payload)
        self.transport.write(b"".join(frames))


class BrokerProcess:
    """`twistd -n broker` on a free loopback port, for the bench's duration."""

    def __init__(self, extra: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        twistd = Path(sys.executable).with_name("twistd")
        command = [
            str(twistd) if twistd.exists() else "twistd",
            "-n",
            "--pidfile=",
            "-l",
            os.devnull,
            "broker",
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1",
            *extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("twistd broker exited at start") from None
                time.sleep(0.05)
        raise RuntimeError("twistd broker did not start listening")

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def connect(reactor: Any, host: str, port: int, protocol: Protocol) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, host, port)
    connected = await connectProtocol(endpoint, protocol)
    connected.transport.setTcpNoDelay(True)
    return connected


async def fanout(reactor: Any, host: str, port: int, args: argparse.Namespace) -> Result:
    """A burst of --messages to --subscribers legacy subscribers."""
    topic = f"bench-fanout-{os.getpid()}-{time.monotonic_ns()}"
    subscribers = [
        await connect(
            reactor,
            host,
            port,
            BenchSubscriber(topic, args.messages, args.size, None, args.prefetch),
        )
        for _ in range(args.subscribers)
    ]
    for subscriber in subscribers:
        await subscriber.subscribed
    publisher = await connect(reactor, host, port, BenchPublisher())
    started = time.perf_counter()
    chunk = 2000
    for start in range(0, args.messages, chunk):
        publisher.publish_range(topic, start, min(args.messages, start + chunk), args.size)
        await deferLater(reactor, 0, lambda: None)
    await _all_done(reactor, subscribers, args.timeout)
    finished = max(s.last_at for s in subscribers)
    return _result("fanout", args, subscribers, finished - started)


async def latency(reactor: Any, host: str, port: int, args: argparse.Namespace) -> Result:
    """--messages at a steady --rate to --subscribers legacy subscribers."""
    topic = f"bench-latency-{os.getpid()}-{time.monotonic_ns()}"
    subscribers = [
        await connect(
            reactor,
            host,
            port,
            BenchSubscriber(topic, args.messages, args.size, None, args.prefetch),
        )
        for _ in range(args.subscribers)
    ]
    for subscriber in subscribers:
        await subscriber.subscribed
    publisher = await connect(reactor, host, port, BenchPublisher())
    sent = 0
    started = time.perf_counter()

    def publish_due() -> None:
        nonlocal sent
        due = min(args.messages, int((time.perf_counter() - started) * args.rate) + 1)
        if due > sent:
            publisher.publish_range(topic, sent, due, args.size)
            sent = due
        if sent >= args.messages:
            loop.stop()

    loop = LoopingCall(publish_due)
    loop.clock = reactor
    await loop.start(0.001)  # whatever is due each millisecond
    await _all_done(reactor, subscribers, args.timeout)
    return _result("latency", args, subscribers, time.perf_counter() - started)


async def ingest(reactor: Any, host: str, port: int, args: argparse.Namespace) -> Result:
    """--messages published with no subscriber; timed until the broker has
    taken them all (a subscriber from the end of the burst then sees the next)."""
    topic = f"bench-ingest-{os.getpid()}-{time.monotonic_ns()}"
    publisher = await connect(reactor, host, port, BenchPublisher(args.confirms, args.messages))
    await publisher.ready
    started = time.perf_counter()
    chunk = 2000
    for start in range(0, args.messages, chunk):
        publisher.publish_range(topic, start, min(args.messages, start + chunk), args.size)
        await deferLater(reactor, 0, lambda: None)
    if args.confirms:
        publisher.all_confirmed.addTimeout(args.timeout, reactor)
        await publisher.all_confirmed
        seconds = time.perf_counter() - started
        return Result(
            "ingest",
            args.messages,
            publisher.confirmed_count,
            round(seconds, 3),
            round(publisher.confirmed_count / seconds, 1),
            complete=publisher.refused == 0,
        )
    # The broker handles a connection's bytes in order: once a marker published
    # after the burst (to a topic of its own, so that its subscriber does not
    # have to wade through the burst) reaches a subscriber, the burst is stored.
    marker_topic = topic + "-marker"
    marker = BenchSubscriber(marker_topic, 1, args.size, until=args.messages)
    await connect(reactor, host, port, marker)
    await marker.subscribed
    publisher.publish_range(marker_topic, args.messages, args.messages + 1, args.size)
    await _all_done(reactor, [marker], args.timeout)
    seconds = marker.last_at - started
    return Result(
        "ingest",
        args.messages,
        args.messages,
        round(seconds, 3),
        round(args.messages / seconds, 1),
        corrupt=marker.corrupt,
    )


async def _all_done(reactor: Any, subscribers: list[BenchSubscriber], timeout: float) -> None:
    for subscriber in subscribers:
        subscriber.done.addTimeout(timeout, reactor)
        try:
            await subscriber.done
        except Exception:
            print(
                f"timed out with {subscriber.received}/{subscriber.expected} delivered",
                file=sys.stderr,
            )
            raise


def _result(
    name: str, args: argparse.Namespace, subscribers: list[BenchSubscriber], seconds: float
) -> Result:
    latencies = sorted(x for s in subscribers for x in s.latencies)
    delivered = sum(s.received for s in subscribers)
    return Result(
        scenario=name,
        messages=args.messages,
        delivered=delivered,
        seconds=round(seconds, 3),
        msgs_per_sec=round(delivered / seconds, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        p999_ms=round(percentile(latencies, 0.999) * 1000, 3),
        complete=all(s.received == s.expected for s in subscribers),
        out_of_order=sum(s.out_of_order for s in subscribers),
        corrupt=sum(s.corrupt for s in subscribers),
    )


SCENARIOS: dict[str, Callable[..., Any]] = {"fanout": fanout, "latency": latency, "ingest": ingest}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="broker-bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: start one)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--size", type=int, default=100, help="payload bytes (at least 16)")
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s, for latency")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="deliveries in flight per subscriber; 1 is the seed's protocol",
    )
    parser.add_argument(
        "--confirms",
        action="store_true",
        help="ingest: publish with confirms, timed until the last one",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--store",
        choices=["memory", "file"],
        default="memory",
        help="the broker's store, when the bench starts it",
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="interval",
        help="with --store file",
    )
    args = parser.parse_args(argv)
    if args.size < _HEADER.size:
        parser.error(f"--size must be at least {_HEADER.size}")
    return args


def run(args: argparse.Namespace) -> Result:
    """Run one scenario against a broker, starting one if none is given."""
    from twisted.internet import reactor

    process = None
    data_dir = None
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        host, port = host or "127.0.0.1", int(port_text)
    else:
        options = ["--ack-timeout", "60"]
        if args.store == "file":
            data_dir = tempfile.mkdtemp(prefix="broker-bench-")
            options += ["--data-dir", data_dir, "--fsync", args.fsync]
        process = BrokerProcess(options)
        host, port = "127.0.0.1", process.port
    outcome: list[Any] = []
    try:
        done = ensureDeferred(SCENARIOS[args.scenario](reactor, host, port, args))
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())
        reactor.run()
        if process is not None:
            outcome.append(process.rss_mb())
    finally:
        if process is not None:
            process.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    result = outcome[0]
    if not isinstance(result, Result):
        result.raiseException()
    if process is not None:
        result.broker_rss_mb = round(outcome[1], 1)
    result.settings = {k: v for k, v in vars(args).items() if k not in ("json", "scenario")}
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for key, value in asdict(result).items():
            if key != "settings":
                print(f"{key:>14}: {value}")
    if result.corrupt or result.out_of_order or not result.complete:
        sys.exit(1)


if __name__ == "__main__":
    main()

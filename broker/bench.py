"""`broker-bench`: throughput, latency and memory of a broker, over TCP.

    broker-bench fanout --messages 100000                 # one legacy subscriber
    broker-bench fanout --prefetch 256 --subscribers 10   # extensions, ten subscribers
    broker-bench latency --rate 1000 --messages 10000
    broker-bench ingest --store file --fsync always --confirms
    broker-bench replay --messages 1000000 --prefetch 256
    broker-bench connections --subscribers 10000
    broker-bench ceiling --prefetch 256                   # the bench's own limit
    broker-bench fanout --broker localhost:3000 --json

Without --broker it starts `twistd broker` on a free loopback port (memory or
file store) and stops it afterwards. Every payload carries its sequence
number and send time: each delivery is checked for order and integrity and
timed from publish to delivery, and every message is acked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater

from broker import wire
from broker.wire import ClientDecoder, StartAt

_HEADER = struct.Struct(">Qd")  # sequence number, send time (perf_counter)
READ_SIZE = 4096  # bytes a subscriber reads at a time (see BenchSubscriber)
_ACK = wire.encode_u16(wire.ACK)


def make_payload(sequence: int, size: int, sent: float) -> bytes:
    """A payload whose body is derived from its sequence number, to check integrity."""
    return _HEADER.pack(sequence, sent) + _body(sequence, size)


def _body(sequence: int, size: int) -> bytes:
    body_size = max(0, size - _HEADER.size)
    return (sequence.to_bytes(8, "big") * (body_size // 8 + 1))[:body_size]


class Histogram:
    """Latencies in log-linear buckets: two significant digits (about 1%),
    bounded memory whatever the number of samples."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        if micros < 1:
            key = 0
        else:
            exponent = int(math.log10(micros))
            key = exponent * 1000 + int(micros / 10 ** (exponent - 1))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.total += other.total

    def percentile(self, fraction: float) -> float:
        """The upper bound of the bucket holding that fraction, in seconds."""
        if not self.total:
            return float("nan")
        wanted = fraction * self.total
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= wanted:
                if key == 0:
                    return 1e-6
                exponent, mantissa = divmod(key, 1000)
                return (mantissa + 1) * 10 ** (exponent - 1) / 1e6
        return float("nan")


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
    bench_cpu_percent: float = float("nan")
    complete: bool = True
    out_of_order: int = 0
    corrupt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


class BenchSubscriber(Protocol):
    """A subscriber that acks everything and checks what it gets; with a
    prefetch over 1 it uses the extensions (many in flight, acks by id).
    Acks of one read go out in one write."""

    def __init__(
        self,
        topic: str,
        expected: int,
        size: int,
        prefetch: int = 1,
        start: StartAt = StartAt.CURRENT,
        until: int | None = None,
        timed: bool = True,
    ) -> None:
        self.topic = topic
        self.expected = expected
        self.size = size
        self.prefetch = prefetch
        self.start = start
        self.until = until  # if set: done when this sequence number arrives
        self.timed = timed
        self.decoder = ClientDecoder(self, 1 << 30)
        self.decoder.expect_topic(topic)
        self.subscribed: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.received = 0
        self.next_sequence = 0
        self.out_of_order = 0
        self.corrupt = 0
        self.latencies = Histogram()
        self.last_at = 0.0
        self._acks: list[bytes] = []

    def connectionMade(self) -> None:
        # Small reads keep the window moving: read 64 KiB (a whole prefetch
        # window) at once and ack it all at the end, and broker and bench take
        # turns; read a few deliveries at a time, and the broker refills the
        # window while the bench is still working. (Measured: prefetch 256,
        # 93k msg/s with 64 KiB reads, 143-155k with 4 KiB.)
        self.transport.bufferSize = READ_SIZE
        if self.prefetch > 1:
            self.decoder.expect_hello()
            self.transport.write(wire.encode_client_hello(prefetch=self.prefetch))
        else:
            self._subscribe()

    def hello_received(self, fields: dict) -> None:
        self._subscribe()

    def _subscribe(self) -> None:
        self.decoder.pending_requests = 1
        self.transport.write(wire.encode_subscribe([self.topic], self.start))

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)
        if self._acks:
            self.transport.write(b"".join(self._acks))
            self._acks.clear()

    def status_received(self, code: int) -> None:
        self.decoder.pending_requests = 0
        if not self.subscribed.called:
            self.subscribed.callback(None)

    def error_received(self, text: str) -> None:
        print(f"broker error: {text}", file=sys.stderr)

    def protocol_error(self, reason: str) -> None:
        print(f"protocol error: {reason}", file=sys.stderr)
        self.transport.loseConnection()

    def delivery_received(self, topic: str, payload: bytes) -> None:
        self._received(payload, _ACK)

    def extended_delivery_received(
        self, topic: str, offset: int, attempt: int, delivery_id: int, payload: bytes
    ) -> None:
        self._received(payload, wire.encode_ack_id(delivery_id))

    def _received(self, payload: bytes, ack: bytes) -> None:
        now = time.perf_counter()
        self._acks.append(ack)
        sequence, sent = _HEADER.unpack_from(payload)
        if payload[_HEADER.size :] != _body(sequence, self.size):
            self.corrupt += 1
        if self.until is not None:
            if sequence == self.until and not self.done.called:
                self.last_at = now
                self.done.callback(None)
            return
        if sequence != self.next_sequence:
            self.out_of_order += 1
        self.next_sequence = sequence + 1
        if self.timed:
            self.latencies.record(now - sent)
        self.received += 1
        self.last_at = now
        if self.received == self.expected and not self.done.called:
            self.done.callback(None)


class BenchPublisher(Protocol):
    """Publishes frames it builds in bulk; with confirms, counts what the
    broker confirmed."""

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
            self.transport.write(wire.encode_client_hello(confirms=True))
        else:
            self.hello_received({})

    def hello_received(self, fields: dict) -> None:
        self.transport.write(wire.encode_u16(wire.ACTION_PUBLISH))
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)

    def publish_range(self, topic: str, start: int, stop: int, size: int) -> None:
        self.transport.write(publish_frames(topic, start, stop, size))

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


def publish_frames(topic: str, start: int, stop: int, size: int) -> bytes:
    """Publish frames for sequence numbers [start, stop), stamped now."""
    prefix = wire.publish_prefix(topic)
    length = struct.pack(">I", size)
    now = time.perf_counter()
    return b"".join(prefix + length + make_payload(n, size, now) for n in range(start, stop))


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
            f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
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
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            print("twistd broker did not stop within 30 s; killing it", file=sys.stderr)
            self.process.kill()
            self.process.wait()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Bench:
    """What a scenario works with."""

    reactor: Any
    host: str
    port: int
    args: argparse.Namespace
    broker_rss: Callable[[], float]

    def topic(self, kind: str) -> str:
        return f"bench-{kind}-{os.getpid()}-{time.monotonic_ns()}"

    async def connect(self, protocol: Protocol) -> Any:
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port)
        connected = await connectProtocol(endpoint, protocol)
        connected.transport.setTcpNoDelay(True)
        return connected

    async def subscribers(self, topic: str, count: int, **options: Any) -> list[BenchSubscriber]:
        args = self.args
        subscribers = [
            await self.connect(
                BenchSubscriber(topic, args.messages, args.size, args.prefetch, **options)
            )
            for _ in range(count)
        ]
        for subscriber in subscribers:
            await subscriber.subscribed
        return subscribers

    def prepare_burst(self, topic: str, count: int) -> list[bytes]:
        """The frames of a burst, built before the clock starts, in chunks: a
        bench that built them while its subscribers wait for their acks to go
        out would slow the round trips it measures."""
        size = self.args.size
        return [
            publish_frames(topic, first, min(count, first + 2000), size)
            for first in range(0, count, 2000)
        ]

    async def burst(self, publisher: BenchPublisher, chunks: list[bytes]) -> None:
        """Write a prepared burst, a chunk per reactor turn."""
        for chunk in chunks:
            publisher.transport.write(chunk)
            await deferLater(self.reactor, 0, lambda: None)

    async def wait(self, subscribers: list[BenchSubscriber]) -> None:
        for subscriber in subscribers:
            subscriber.done.addTimeout(self.args.timeout, self.reactor)
            try:
                await subscriber.done
            except Exception:
                print(
                    f"timed out with {subscriber.received}/{subscriber.expected} delivered",
                    file=sys.stderr,
                )
                raise


def _delivery_result(
    name: str, bench: Bench, subscribers: list[BenchSubscriber], seconds: float
) -> Result:
    latencies = Histogram()
    for subscriber in subscribers:
        latencies.merge(subscriber.latencies)
    delivered = sum(s.received for s in subscribers)
    return Result(
        scenario=name,
        messages=bench.args.messages,
        delivered=delivered,
        seconds=round(seconds, 3),
        msgs_per_sec=round(delivered / seconds, 1),
        p50_ms=round(latencies.percentile(0.50) * 1000, 3),
        p99_ms=round(latencies.percentile(0.99) * 1000, 3),
        p999_ms=round(latencies.percentile(0.999) * 1000, 3),
        complete=all(s.received == s.expected for s in subscribers),
        out_of_order=sum(s.out_of_order for s in subscribers),
        corrupt=sum(s.corrupt for s in subscribers),
    )


async def fanout(bench: Bench) -> Result:
    """A burst of --messages to --subscribers subscribers of one topic."""
    topic = bench.topic("fanout")
    subscribers = await bench.subscribers(topic, bench.args.subscribers)
    publisher = await bench.connect(BenchPublisher())
    chunks = bench.prepare_burst(topic, bench.args.messages)
    with Progress(bench, subscribers):
        started = time.perf_counter()
        await bench.burst(publisher, chunks)
        await bench.wait(subscribers)
    return _delivery_result(
        "fanout", bench, subscribers, max(s.last_at for s in subscribers) - started
    )


async def latency(bench: Bench) -> Result:
    """--messages at a steady --rate to --subscribers subscribers."""
    args = bench.args
    topic = bench.topic("latency")
    subscribers = await bench.subscribers(topic, args.subscribers)
    publisher = await bench.connect(BenchPublisher())
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
    loop.clock = bench.reactor
    with Progress(bench, subscribers):
        await loop.start(0.001)  # whatever is due each millisecond
        await bench.wait(subscribers)
    return _delivery_result("latency", bench, subscribers, time.perf_counter() - started)


async def ingest(bench: Bench) -> Result:
    """--messages published with no subscriber, timed until the broker has
    stored them all (with --confirms: until the last is confirmed)."""
    args = bench.args
    topic = bench.topic("ingest")
    publisher = await bench.connect(BenchPublisher(args.confirms, args.messages))
    await publisher.ready
    chunks = bench.prepare_burst(topic, args.messages)
    started = time.perf_counter()
    await bench.burst(publisher, chunks)
    if args.confirms:
        publisher.all_confirmed.addTimeout(args.timeout, bench.reactor)
        await publisher.all_confirmed
        finished = time.perf_counter()
        stored = publisher.confirmed_count
    else:
        # The broker handles a connection's bytes in order: once a marker
        # published after the burst (to a topic of its own, so that its
        # subscriber does not wade through the burst) arrives, all is stored.
        marker_topic = topic + "-marker"
        marker = BenchSubscriber(marker_topic, 1, args.size, until=args.messages)
        await bench.connect(marker)
        await marker.subscribed
        publisher.publish_range(marker_topic, args.messages, args.messages + 1, args.size)
        await bench.wait([marker])
        finished, stored = marker.last_at, args.messages
    seconds = finished - started
    return Result(
        "ingest",
        args.messages,
        stored,
        round(seconds, 3),
        round(stored / seconds, 1),
        complete=publisher.refused == 0,
    )


async def replay(bench: Bench) -> Result:
    """--messages stored first (with confirms), then one subscriber reads
    them all from Beginning; only the reading is timed."""
    args = bench.args
    topic = bench.topic("replay")
    publisher = await bench.connect(BenchPublisher(True, args.messages))
    await publisher.ready
    await bench.burst(publisher, bench.prepare_burst(topic, args.messages))
    publisher.all_confirmed.addTimeout(args.timeout, bench.reactor)
    await publisher.all_confirmed
    stored_rss = bench.broker_rss()
    reader = BenchSubscriber(
        topic, args.messages, args.size, args.prefetch, start=StartAt.BEGINNING, timed=False
    )
    with Progress(bench, [reader]):
        started = time.perf_counter()
        await bench.connect(reader)
        await bench.wait([reader])
    result = _delivery_result("replay", bench, [reader], reader.last_at - started)
    result.extra["rss_mb_with_messages_stored"] = round(stored_rss, 1)
    return result


async def connections(bench: Bench) -> Result:
    """--subscribers idle legacy subscribers; what they cost the broker."""
    args = bench.args
    before = bench.broker_rss()
    started = time.perf_counter()
    opened: list[BenchSubscriber] = []
    for first in range(0, args.subscribers, 500):
        batch = [
            BenchSubscriber(f"bench-idle-{i % 100}", 0, args.size, timed=False)
            for i in range(first, min(args.subscribers, first + 500))
        ]
        await gatherResults([ensureDeferred(bench.connect(s)) for s in batch])
        await gatherResults([s.subscribed for s in batch])
        opened += batch
    seconds = time.perf_counter() - started
    after = bench.broker_rss()
    result = Result(
        "connections", 0, 0, round(seconds, 3), complete=len(opened) == args.subscribers
    )
    result.broker_rss_mb = round(after, 1)
    result.extra.update(
        connections=len(opened),
        rss_mb_before=round(before, 1),
        kb_per_connection=round((after - before) * 1024 / max(1, len(opened)), 2),
    )
    return result


class _NullTransport:
    """A do-nothing peer: whatever is written to it is dropped."""

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: list[bytes]) -> None:
        pass

    def loseConnection(self) -> None:
        pass


def ceiling(args: argparse.Namespace) -> Result:
    """How fast the bench's own publisher and subscriber go against a
    do-nothing peer: the most any broker could be measured at."""
    count, size, topic = args.messages, args.size, "ceiling"
    subscriber = BenchSubscriber(topic, count, size, args.prefetch, timed=True)
    subscriber.transport = _NullTransport()
    if args.prefetch > 1:
        subscriber.decoder.expect_hello()
        subscriber.decoder.feed(wire.encode_hello({"version": wire.EXTENSIONS_VERSION}))
        prefix = wire.extended_delivery_prefix(topic)
        frames = [
            prefix
            + wire.encode_delivery_tail(n, 1, n, size)
            + make_payload(n, size, time.perf_counter())
            for n in range(count)
        ]
    else:
        frames = [
            wire.encode_delivery(topic, make_payload(n, size, time.perf_counter()))
            for n in range(count)
        ]
    stream = b"".join(frames)
    started = time.perf_counter()
    for position in range(0, len(stream), 65536):  # as TCP would hand it over
        subscriber.dataReceived(stream[position : position + 65536])
    receive_seconds = time.perf_counter() - started
    publisher = BenchPublisher()
    publisher.transport = _NullTransport()
    started = time.perf_counter()
    for first in range(0, count, 2000):
        publisher.publish_range(topic, first, min(count, first + 2000), size)
    publish_seconds = time.perf_counter() - started
    return Result(
        "ceiling",
        count,
        subscriber.received,
        round(receive_seconds, 3),
        round(subscriber.received / receive_seconds, 1),
        complete=subscriber.received == count,
        out_of_order=subscriber.out_of_order,
        corrupt=subscriber.corrupt,
        extra={"publish_msgs_per_sec": round(count / publish_seconds, 1)},
    )


SCENARIOS: dict[str, Callable[[Bench], Awaitable[Result]]] = {
    "fanout": fanout,
    "latency": latency,
    "ingest": ingest,
    "replay": replay,
    "connections": connections,
}


class Progress:
    """A progress bar on stderr while messages arrive, if stderr is a terminal."""

    def __init__(self, bench: Bench, subscribers: list[BenchSubscriber]) -> None:
        self._subscribers = subscribers
        self._total = sum(s.expected for s in subscribers)
        self._loop = LoopingCall(self._show)
        self._loop.clock = bench.reactor
        self._started = time.perf_counter()
        self._on = sys.stderr.isatty() and self._total > 0

    def __enter__(self) -> Progress:
        if self._on:
            self._loop.start(0.25)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._on:
            self._loop.stop()
            self._show()
            sys.stderr.write("\n")

    def _show(self) -> None:
        done = sum(s.received for s in self._subscribers)
        fraction = done / self._total
        rate = done / max(1e-9, time.perf_counter() - self._started)
        bar = "#" * int(fraction * 30)
        sys.stderr.write(f"\r[{bar:<30}] {fraction:6.1%} {done}/{self._total} {rate:,.0f} msg/s")
        sys.stderr.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="broker-bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[*sorted(SCENARIOS), "ceiling"])
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
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.size < _HEADER.size:
        parser.error(f"--size must be at least {_HEADER.size}")
    return args


def run(args: argparse.Namespace) -> Result:
    """Run one scenario, starting a broker unless --broker names one."""
    if args.scenario == "ceiling":
        return ceiling(args)
    from twisted.internet import reactor

    process = None
    data_dir = None
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        host, port = host or "127.0.0.1", int(port_text)
    else:
        options = ["--ack-timeout", "60", "--max-prefetch", str(max(1024, args.prefetch))]
        if args.store == "file":
            data_dir = tempfile.mkdtemp(prefix="broker-bench-")
            options += ["--data-dir", data_dir, "--fsync", args.fsync]
        process = BrokerProcess(options)
        host, port = "127.0.0.1", process.port
    bench = Bench(reactor, host, port, args, process.rss_mb if process else (lambda: float("nan")))
    outcome: list[Any] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.perf_counter()
    try:

        def start() -> None:
            done = ensureDeferred(SCENARIOS[args.scenario](bench))
            done.addBoth(outcome.append)
            done.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(start)  # a scenario that fails at once must still stop it
        reactor.run()
        rss = bench.broker_rss()
    finally:
        if process is not None:
            process.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    result = outcome[0]
    if not isinstance(result, Result):
        result.raiseException()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    result.bench_cpu_percent = round(100 * cpu / (time.perf_counter() - wall_before), 1)
    if math.isnan(result.broker_rss_mb):
        result.broker_rss_mb = round(rss, 1)
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
                print(f"{key:>18}: {value}")
    if result.corrupt or result.out_of_order or not result.complete:
        sys.exit(1)


if __name__ == "__main__":
    main()

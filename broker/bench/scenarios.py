"""The scenarios: fanout, latency, ingest, replay, connections, and the
bench's own ceiling."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from broker import wire
from broker.bench.payloads import Histogram, Result, make_payload
from broker.bench.progress import Progress
from broker.bench.protocols import BenchPublisher, BenchSubscriber, GroupTally, publish_frames
from broker.client.protocols import SubscriberProtocol
from broker.wire import StartAt


@dataclass
class Bench:
    """What a scenario works with."""

    reactor: Any
    host: str
    port: int
    args: argparse.Namespace
    broker_rss: Callable[[], float]

    subscribe_port: int | None = None
    """Where subscribers connect, if not to `port` (another node on a shared store)."""

    def topic(self, kind: str) -> str:
        return f"bench-{kind}-{os.getpid()}-{time.monotonic_ns()}"

    async def connect(self, protocol: Protocol) -> Any:
        port = self.port
        if self.subscribe_port is not None and not isinstance(protocol, BenchPublisher):
            port = self.subscribe_port  # publish on one node, read on the other
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, port)
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

    def prepare_burst(self, topic: str, count: int, topics: int = 1) -> list[bytes]:
        """The frames of a burst, built before the clock starts, in chunks: a
        bench that built them while its subscribers wait for their acks to go
        out would slow the round trips it measures. With `topics` > 1, the
        chunks go round topics `<topic>.0`, `<topic>.1`, … (created as they come)."""
        size = self.args.size
        return [
            publish_frames(
                topic if topics == 1 else f"{topic}.{index % topics}",
                first,
                min(count, first + 2000),
                size,
            )
            for index, first in enumerate(range(0, count, 2000))
        ]

    async def hold_patterns(self, count: int) -> SubscriberProtocol:
        """A subscriber holding `count` patterns that match no bench topic."""
        holder = await self.connect(SubscriberProtocol(lambda message: True, prefetch=1))
        server = await holder.negotiated
        if not (server or {}).get("patterns"):
            raise RuntimeError("the broker does not take patterns")
        for first in range(0, count, 1000):
            names = [f"nomatch-{n}.*.>" for n in range(first, min(count, first + 1000))]
            await holder.subscribe(names, StartAt.CURRENT)
        return holder

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
    name: str, bench: Bench, subscribers: Sequence[BenchSubscriber | _PartTally], seconds: float
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


async def group(bench: Bench) -> Result:
    """A burst of --messages shared by --subscribers members of one consumer
    group: aggregate msg/s, each message once."""
    args = bench.args
    topic = bench.topic("group")
    tally = GroupTally(args.messages)
    members = await bench.subscribers(topic, args.subscribers, group=tally)
    publisher = await bench.connect(BenchPublisher())
    chunks = bench.prepare_burst(topic, args.messages)
    started = time.perf_counter()
    await bench.burst(publisher, chunks)
    tally.done.addTimeout(args.timeout, bench.reactor)
    await tally.done
    result = _delivery_result("group", bench, members, tally.last_at - started)
    result.complete = tally.received == args.messages and not tally.duplicates
    result.extra = {"shares": [m.received for m in members], "duplicates": tally.duplicates}
    return result


class _Part(ProcessProtocol):
    """A subscriber process of `fanout --processes`: ready, then its summary."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[dict[str, Any]] = Deferred()
        self._output = b""
        self._errors = b""

    def outReceived(self, data: bytes) -> None:
        self._output += data
        if not self.ready.called and b"ready\n" in self._output:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self._errors = (self._errors + data)[-4096:]

    def processEnded(self, reason: Failure) -> None:
        lines = self._output.decode("utf-8", "replace").splitlines()
        failed = RuntimeError(
            f"a subscriber process failed: {self._errors.decode(errors='replace')}"
        )
        if not self.ready.called:
            self.ready.errback(failed)
        if lines and lines[-1].startswith("{"):
            self.ended.callback(json.loads(lines[-1]))
        else:
            self.ended.errback(failed)


@dataclass
class _PartTally:
    """A subscriber process's summary, read as a BenchSubscriber is."""

    received: int
    expected: int
    out_of_order: int
    corrupt: int
    last_at: float
    latencies: Histogram


async def _fanout_in_processes(bench: Bench, topic: str) -> Result:
    args = bench.args
    shares = [len(range(n, args.subscribers, args.processes)) for n in range(args.processes)]
    port = bench.subscribe_port or bench.port
    parts = []
    for share in (share for share in shares if share):
        part = _Part()
        command = [sys.executable, "-m", "broker.bench.part", bench.host, str(port), topic]
        command += [str(share), str(args.messages), str(args.size), str(args.prefetch)]
        command += [str(args.timeout)]
        bench.reactor.spawnProcess(part, sys.executable, command, env=os.environ.copy())
        parts.append(part)
    for part in parts:
        part.ready.addTimeout(args.timeout, bench.reactor)
        await part.ready
    publisher = await bench.connect(BenchPublisher())
    chunks = bench.prepare_burst(topic, args.messages)
    started = time.perf_counter()
    await bench.burst(publisher, chunks)
    tallies = []
    for part in parts:
        got = await part.ended
        latencies = Histogram.from_counts({int(k): n for k, n in got["latencies"].items()})
        tallies.append(
            _PartTally(
                got["received"],
                got["expected"],
                got["out_of_order"],
                got["corrupt"],
                got["last_at"],
                latencies,
            )
        )
    seconds = max(t.last_at for t in tallies) - started
    return _delivery_result("fanout", bench, tallies, seconds)


async def fanout(bench: Bench) -> Result:
    """A burst of --messages to --subscribers subscribers of one topic (spread
    over --processes subscriber processes, if more than one)."""
    topic = bench.topic("fanout")
    if bench.args.processes > 1:
        return await _fanout_in_processes(bench, topic)
    subscribers = await bench.subscribers(topic, bench.args.subscribers)
    publisher = await bench.connect(BenchPublisher())
    chunks = bench.prepare_burst(topic, bench.args.messages)
    with Progress(bench.reactor, subscribers):
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
    with Progress(bench.reactor, subscribers):
        await loop.start(0.001)  # whatever is due each millisecond
        await bench.wait(subscribers)
    return _delivery_result("latency", bench, subscribers, time.perf_counter() - started)


async def ingest(bench: Bench) -> Result:
    """--messages published with no subscriber, timed until the broker has
    stored them all (with --confirms: until the last is confirmed)."""
    args = bench.args
    topic = bench.topic("ingest")
    if args.patterns:
        await bench.hold_patterns(args.patterns)
    publisher = await bench.connect(BenchPublisher(args.confirms, args.messages))
    await publisher.ready
    chunks = bench.prepare_burst(topic, args.messages, args.topics)
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
    with Progress(bench.reactor, [reader]):
        started = time.perf_counter()
        await bench.connect(reader)
        await bench.wait([reader])
    result = _delivery_result("replay", bench, [reader], reader.last_at - started)
    result.extra["rss_mb_with_messages_stored"] = round(stored_rss, 1)
    return result


async def connections(bench: Bench) -> Result:
    """--subscribers idle plain subscribers; what they cost the broker."""
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
    subscriber.transport = _NullTransport()  # type: ignore[assignment]  # writes nowhere
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
    publisher.transport = _NullTransport()  # type: ignore[assignment]  # writes nowhere
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


SCENARIOS: dict[str, Callable[[Bench], Coroutine[Any, Any, Result]]] = {
    "fanout": fanout,
    "group": group,
    "latency": latency,
    "ingest": ingest,
    "replay": replay,
    "connections": connections,
}

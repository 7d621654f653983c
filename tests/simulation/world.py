"""A deterministic world for the whole broker: one seed decides everything.

The broker's real TCP door and core, and the project's real Twisted
clients, run on one fake clock (`MemoryReactorClock`), joined by in-memory
links that this module pumps itself: each turn it hands each side a random
prefix of what the other wrote (so writes split at any byte, and arrive
late, but never out of order within a link), and now and then cuts a link
(dropping what was in flight both ways). The clients do random work:
publishers publish with confirms (and message ids, the clients' default);
plain subscribers read every topic from the beginning; members of a group
and a durable consumer share one topic; each delivery is acked, nacked, or
held and answered later. After the faults stop, the world heals until every
confirmed message is delivered.

Checked at every step and at the end (`violations`): every confirm's offset
holds that message; no message is stored twice (message ids); every stored
message reaches every plain subscriber, and each message of the group's
topic reaches the group; no unhandled error is logged. A failing run is
replayed exactly from its seed (`python -m tests.simulation --seed N`).

With `files`, the broker keeps its messages in a file store over a
simulated disk (tests/simulation/disk.py) and its process dies now and
then (`crash`: the kernel keeps what it was handed) or the whole machine
(`power`: only what was fsynced, and what writeback happened to do); the
disk's writes and fsyncs fail too. A new broker starts from what the disk
kept, as after a SIGKILL or a power cut, and an operator restarts one
whose disk failed an fsync. Out of scope (said in docs/durability.md):
the Redis store (it has its real-server chaos test).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from zope.interface import implementer

from broker.client import BrokerClient
from broker.client.protocols import Message
from broker.core.delivery import DeliverySettings
from broker.log import FileStore, FileStoreSettings, FsyncPolicy, StoreError
from broker.server import BrokerFactory, BrokerSettings
from broker.wire import StartAt
from tests.simulation.disk import DiskCounts, DiskFaults, Later, SimulatedDisk

DATA_DIR = Path("/simulated/data")

TOPICS = ("t0", "t1", "t2")
GROUP_TOPIC = "t0"
DURABLE_TOPIC = "t1"


@dataclass
class Faults:
    """How often each fault is injected, per step (0 turns it off)."""

    cut: float = 0.02
    split: float = 0.5
    """Share of link turns that deliver only part of what is waiting."""
    stall: float = 0.2
    """Share of link turns that deliver nothing."""
    hold: float = 0.05
    """Share of deliveries a subscriber answers later."""
    crash: float = 0.0
    """Chance per step that the broker process dies (with files: it is
    rebuilt from what the disk holds, as after a SIGKILL)."""
    power: float = 0.0
    """Chance per step that the machine loses power (with files: the disk
    keeps only what was fsynced, and what writeback did)."""
    nack: float = 0.05
    """Share of deliveries a subscriber nacks."""
    disk: DiskFaults = field(default_factory=DiskFaults)


@dataclass
class Counts(DiskCounts):
    """What a run did: steps, and faults injected by kind."""

    steps: int = 0
    publishes: int = 0
    confirmed: int = 0
    deliveries: int = 0
    cuts: int = 0
    splits: int = 0
    stalls: int = 0
    holds: int = 0
    nacks: int = 0
    restarts: int = 0
    """Broker restarts after an fsync failed (an operator's)."""
    refused_starts: int = 0
    durable_restarts: int = 0
    """Starts the broker refused (a disk fault then), and was started again."""


class _Link:
    """One connection in memory: what each side wrote and the other has not
    read yet, moved by `turn` a random piece at a time."""

    def __init__(self, client: FakeTransport, server: FakeTransport) -> None:
        self.client = client
        self.server = server
        self.to_server = bytearray()
        self.to_client = bytearray()

    @property
    def closed(self) -> bool:
        return self.client.disconnected and self.server.disconnected

    def turn(self, world: World) -> bool:
        rng = world.rng
        written = self.client.getOutBuffer()
        if written:
            self.to_server += written
        written = self.server.getOutBuffer()
        if written:
            self.to_client += written
        self.client._checkProducer()
        self.server._checkProducer()
        moved = False
        for waiting, reader in ((self.to_server, self.server), (self.to_client, self.client)):
            if not waiting or reader.disconnected:
                continue
            if world.faulty and rng.random() < world.faults.stall:
                world.counts.stalls += 1
                continue
            size = len(waiting)
            if world.faulty and rng.random() < world.faults.split:
                size = rng.randint(1, size)
                world.counts.splits += 1
            piece = bytes(waiting[:size])
            del waiting[:size]
            reader.bufferReceived(piece)
            moved = True
        if moved or self.to_server or self.to_client:
            return moved
        for closing, other in ((self.server, self.client), (self.client, self.server)):
            if closing.disconnecting and not closing.disconnected:
                closing.disconnected = True
                other.disconnecting = True
                other.reportDisconnect()
                return True
        return False

    def cut(self) -> None:
        """Lose the connection at once: what was in flight is gone."""
        self.to_server.clear()
        self.to_client.clear()
        self.client.stream = []
        self.server.stream = []
        for side in (self.client, self.server):
            if not side.disconnected:
                side.disconnecting = side.disconnected = True
                side.reportDisconnect()


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, world: World) -> None:
        self._world = world

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return succeed(self._world.connect(factory))


@dataclass
class _Subscriber:
    name: str
    client: BrokerClient
    kind: str  # "plain", "group"
    seen: dict[str, set[int]] = field(default_factory=dict)
    held: list[Deferred[bool]] = field(default_factory=list)
    newest: dict[str, int] = field(default_factory=dict)
    """Per topic, the highest offset first delivered to it."""


class World:
    """One run of the simulation (see the module)."""

    def __init__(
        self,
        seed: int,
        faults: Faults | None = None,
        files: bool = False,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.faulty = True
        self.counts = Counts()
        self.clock = MemoryReactorClock()
        self.disk = SimulatedDisk(self.rng, self.faults.disk, self.counts) if files else None
        self.fsync = fsync
        self._later: Later | None = None
        self.refused_starts: list[str] = []
        self.disorder: list[str] = []
        """First deliveries out of their topic's order."""
        self.settings = BrokerSettings(
            max_message_size=64 * 1024,
            # (nothing is given up: every message must come, at least once)
            delivery=DeliverySettings(ack_delay=0.2, ack_timeout=1.0, max_deliveries=1_000_000),
        )
        self._start_broker()
        self.links: list[_Link] = []
        self.errors: list[str] = []
        self._ports = 40000
        self.sent: dict[bytes, str] = {}
        self.confirmed: dict[bytes, int] = {}
        self.refused: list[str] = []
        self._unchecked: list[bytes] = []
        """Confirmed since the last look (each is checked once)."""
        self._scanned: dict[str, int] = {}
        self._stored: dict[str, dict[bytes, int]] = {}
        """Per topic, each payload stored and its offset (read as the log grows)."""
        self._gaps: dict[str, set[int]] = {}
        """Per topic, the offsets that read as a gap (nobody is owed them)."""
        self.plain_sent = 0
        """Publishes of the plain publisher (no confirms: at most once)."""
        self.publishers = [self._client() for _ in range(2)]
        self.plain_publisher = self._client(extensions=False)
        """A client of the plain protocol, as the seed's Go clients are."""
        self.subscribers: list[_Subscriber] = []
        for index in range(2):
            subscriber = _Subscriber(f"plain{index}", self._client(), "plain")
            subscriber.client.subscribe(
                list(TOPICS), self._handler(subscriber), start=StartAt.BEGINNING
            )
            self.subscribers.append(subscriber)
        # A subscriber of the plain protocol (the seed's: no offsets, no ids;
        # after a reconnect it starts at Current): what it gets must be
        # what was stored, and nothing else.
        self.seed_subscriber = self._client(extensions=False)
        self.seed_received: list[tuple[str, bytes]] = []
        self.seed_subscriber.subscribe(
            list(TOPICS), self._seed_handler, start=StartAt.BEGINNING
        ).addErrback(lambda failure: failure.trap(ConnectionDone))
        # A subscriber by pattern ("*": every one-token topic, the three).
        subscriber = _Subscriber("pattern", self._client(), "plain")
        subscriber.client.subscribe(["*"], self._handler(subscriber), start=StartAt.BEGINNING)
        self.subscribers.append(subscriber)
        self.group: list[_Subscriber] = []
        for index in range(2):
            member = _Subscriber(f"member{index}", self._client(), "group")
            member.client.subscribe(
                [GROUP_TOPIC], self._handler(member), start=StartAt.BEGINNING, group="g"
            )
            self.group.append(member)
        self.durable = _Subscriber("durable", self._client(), "durable")
        self._subscribe_durable()
        globalLogPublisher.addObserver(self._observe)

    # The world's parts.

    def _start_broker(self) -> None:
        """The broker process: in memory, or over files on the simulated
        disk (small segments, so that they roll, are indexed and recovered;
        its blocking work, the group fsync, done later on the clock)."""
        store = None
        if self.disk is not None:
            self._later = Later(self.clock, self.rng)
            store = FileStore(
                DATA_DIR,
                FileStoreSettings(segment_bytes=4096, fsync=self.fsync),
                self.clock,
                disk=self.disk,
                blocking=self._later,
            )
        self.factory = BrokerFactory(self.settings, clock=self.clock, store=store)
        self.core = self.factory.broker
        try:
            self.core.start()
        except StoreError as error:
            # A disk fault at start (an fsync that failed): the broker says
            # so and exits; the operator restarts the machine (what its
            # cache holds cannot be trusted), then the broker.
            assert self.disk is not None, error
            self.refused_starts.append(str(error))
            self.counts.refused_starts += 1
            if self.counts.refused_starts > 100:
                raise
            self.core.stop()
            self.disk.crash_machine()
            self._start_broker()

    def crash(self, machine: bool = False) -> None:
        """The broker process dies (or the machine: see the module): its
        connections drop, its memory and the work it had not done are gone;
        a new process starts from what the disk kept."""
        for link in self.links:
            link.cut()
        self.links = []
        self.core.stop()
        assert self.disk is not None and self._later is not None
        self._later.cancel()
        if machine:
            self.disk.crash_machine()
        else:
            self.disk.crash_process()
        self._start_broker()
        # What the logs hold is read again: a machine crash may have taken
        # what was never confirmed, and its offsets hold other messages now.
        self._scanned.clear()
        self._stored.clear()
        self._gaps.clear()
        self._unchecked = list(self.confirmed)

    def _failed_topics(self) -> list[str]:
        store = self.core.store
        return store.status().get("failed_topics", []) if isinstance(store, FileStore) else []

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.errors.append(str(event["log_failure"].getTraceback())[-1500:])

    def _client(self, extensions: bool = True) -> BrokerClient:
        return BrokerClient(
            _Endpoint(self),
            self.clock,
            extensions=extensions,
            retry_policy=lambda attempt: 0.1,
            where="the simulated broker",
        )

    def connect(self, factory: IProtocolFactory) -> IProtocol:
        self._ports += 1
        client_address = IPv4Address("TCP", "127.0.0.1", self._ports)
        server_address = IPv4Address("TCP", "127.0.0.1", 3000)
        client = factory.buildProtocol(server_address)
        server = self.factory.buildProtocol(client_address)
        assert client is not None and server is not None
        client_side = FakeTransport(client, False, client_address, server_address)
        server_side = FakeTransport(server, True, server_address, client_address)
        client.makeConnection(client_side)
        server.makeConnection(server_side)
        self.links.append(_Link(client_side, server_side))
        return client

    def _seed_handler(self, message: Message) -> bool:
        self.seed_received.append((message.topic, message.payload))
        return True

    def _handler(self, subscriber: _Subscriber) -> Callable[[Message], Any]:
        def handle(message: Message) -> Any:
            self.counts.deliveries += 1
            assert message.offset is not None
            seen = subscriber.seen.setdefault(message.topic, set())
            if message.offset not in seen and subscriber.kind == "plain":
                # A subscriber of its own gets each topic's messages for the
                # first time in their order (again, any order: redeliveries).
                newest = subscriber.newest.get(message.topic, -1)
                if message.offset < newest:
                    self.disorder.append(
                        f"{subscriber.name} got {message.topic}:{message.offset} for the "
                        f"first time after {newest}"
                    )
                subscriber.newest[message.topic] = message.offset
            seen.add(message.offset)
            roll = self.rng.random()
            if self.faulty and roll < self.faults.nack:
                self.counts.nacks += 1
                return False
            if self.faulty and roll < self.faults.nack + self.faults.hold:
                self.counts.holds += 1
                later: Deferred[bool] = Deferred()
                subscriber.held.append(later)
                return later
            return True

        return handle

    def _subscribe_durable(self) -> None:
        subscribed = self.durable.client.subscribe(
            [DURABLE_TOPIC], self._handler(self.durable), start=StartAt.BEGINNING, durable="d"
        )
        # (a process that goes before the broker answered: nothing to say)
        subscribed.addErrback(lambda failure: failure.trap(ConnectionDone))

    def _restart_durable(self) -> None:
        """The durable consumer's process goes (what it held unanswered with
        it) and a new one subscribes with its name: it must resume at the
        first message not acked, and so in the end have had every one."""
        self.counts.durable_restarts += 1
        self.durable.client.close().addErrback(lambda failure: failure.trap(ConnectionDone))
        self.durable.held = []
        self.durable.client = self._client()
        self._subscribe_durable()

    # Steps.

    def step(self) -> None:
        """One random thing happens, then the network and the clock move."""
        self.counts.steps += 1
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            self._publish()
        elif roll < 0.4 + self.faults.cut and self.faulty and self.links:
            link = rng.choice([link for link in self.links if not link.closed] or self.links)
            link.cut()
            self.counts.cuts += 1
        elif roll < 0.6:
            self._answer_held()
        elif self.disk is not None and self.faulty and roll < 0.6 + self.faults.crash:
            self.crash()
        elif (
            self.disk is not None
            and self.faulty
            and roll < 0.6 + self.faults.crash + self.faults.power
        ):
            self.crash(machine=True)
        elif roll > 0.99 and self.faulty:
            self._restart_durable()
        elif self.disk is not None and roll > 0.95 and self._failed_topics():
            self.counts.restarts += 1  # an operator answers the critical log line
            self.crash()
        for link in list(self.links):
            link.turn(self)
        self.links = [link for link in self.links if not link.closed]
        self.clock.advance(rng.choice((0, 0, 0.01, 0.05, 0.2)))

    def _publish(self) -> None:
        number = self.counts.publishes
        self.counts.publishes += 1
        # (some large enough to cross pages, and roll the 4 KiB segments)
        padding = self.rng.choice((0, 0, 0, 10, 700, 2500))
        payload = b"m%d-" % number + b"x" * padding
        topic = self.rng.choice(TOPICS)
        if self.rng.random() < 0.2:
            # Without confirms: handed to a live connection, or lost with it.
            self.plain_sent += 1
            self.plain_publisher.publish(topic, payload).addErrback(lambda failure: None)
            return
        self.sent[payload] = topic
        publisher = self.rng.choice(self.publishers)
        sent = publisher.publish(topic, payload)
        sent.addCallbacks(self._confirmed, self._not_confirmed, callbackArgs=(payload,))

    def _confirmed(self, offset: Any, payload: bytes) -> None:
        if isinstance(offset, int):
            self.counts.confirmed += 1
            self.confirmed[payload] = offset
            self._unchecked.append(payload)

    def _not_confirmed(self, failure: Failure) -> None:
        self.refused.append(failure.getErrorMessage())

    def _answer_held(self) -> None:
        for subscriber in (*self.subscribers, *self.group, self.durable):
            if subscriber.held:
                held = subscriber.held.pop(0)
                held.callback(self.rng.random() < 0.8)

    def heal(self, seconds: float = 120.0) -> None:
        """No more faults: answer what is held and let time pass until
        every confirmed message is delivered (or `seconds` of it)."""
        self.faulty = False
        if self.disk is not None:
            self.disk.faulty = False
            if self._failed_topics():
                self.counts.restarts += 1
                self.crash()
        deadline = self.clock.seconds() + seconds
        while self.clock.seconds() < deadline:
            for subscriber in (*self.subscribers, *self.group, self.durable):
                while subscriber.held:
                    subscriber.held.pop(0).callback(True)
            for _ in range(20):
                for link in list(self.links):
                    link.turn(self)
                self.links = [link for link in self.links if not link.closed]
            if not self._undelivered() and len(self.confirmed) + len(self.refused) >= len(
                self.sent
            ):
                return
            self.clock.advance(0.1)

    # Invariants.

    def violations(self, final: bool = False) -> list[str]:
        """What is wrong now (every step: what was confirmed or stored
        since the last look), and at the end, what never came."""
        found: list[str] = []
        registry = self.core.registry
        for topic in TOPICS:
            if topic not in registry:
                continue
            log_ = registry.get(topic).log
            scanned = max(self._scanned.get(topic, 0), log_.first_offset)
            held = (
                log_.read(scanned, log_.next_offset - scanned) if log_.next_offset > scanned else []
            )
            seen = self._stored.setdefault(topic, {})
            gaps = self._gaps.setdefault(topic, set())
            for offset, payload in enumerate(held if isinstance(held, list) else [], scanned):
                if payload is None:
                    gaps.add(offset)  # set aside at a start, or dropped: never delivered
                if payload is not None and payload in seen:
                    found.append(
                        f"{payload[:12]!r} stored twice in {topic} "
                        f"(at {seen[payload]} and {offset})"
                    )
                if payload is not None:
                    seen[payload] = offset
            self._scanned[topic] = scanned + len(held)
        unchecked, self._unchecked = self._unchecked, []
        for payload in unchecked:
            topic, offset = self.sent[payload], self.confirmed[payload]
            where = self._stored.get(topic, {}).get(payload)
            if where != offset:
                found.append(f"confirmed {payload[:12]!r} at {topic}:{offset}, stored at {where}")
        found += self._groups_share_nothing()
        found += [f"unhandled error logged: {error}" for error in self.errors]
        found += self.disorder
        for topic, payload in self.seed_received:
            if payload not in self._stored.get(topic, {}):
                found.append(f"the plain subscriber got {payload[:12]!r} of {topic}, never stored")
        self.seed_received.clear()
        found += [
            f"a start refused without naming what: {refusal}"
            for refusal in self.refused_starts
            if str(DATA_DIR) not in refusal
        ]
        if final:
            found += self._undelivered()
            unanswered = len(self.sent) - len(self.confirmed) - len(self.refused)
            if unanswered:
                found.append(f"{unanswered} publish(es) never answered")
        return found

    def _groups_share_nothing(self) -> list[str]:
        """A group hands each message to one member at a time: no offset is
        in flight (sent, not answered, not timed out) with two members."""
        found = []
        for group in self.core.groups.of_topic(GROUP_TOPIC):
            holders: dict[int, int] = {}
            for number, member in enumerate(group.members):
                for delivery in member.window._slots.values():
                    if delivery.subscription is not member or delivery.held:
                        continue
                    if delivery.offset in holders:
                        found.append(
                            f"group {group.name}: {GROUP_TOPIC}:{delivery.offset} in flight "
                            f"with two members at once"
                        )
                    holders[delivery.offset] = number
        return found

    def _undelivered(self) -> list[str]:
        registry = self.core.registry
        ends = {topic: registry.get(topic).log.next_offset for topic in TOPICS if topic in registry}
        missing: list[str] = []
        for subscriber in self.subscribers:
            for topic, end in ends.items():
                lost = (
                    set(range(end))
                    - subscriber.seen.get(topic, set())
                    - self._gaps.get(topic, set())
                )
                if lost:
                    missing.append(
                        f"{subscriber.name} never got {topic} offsets {sorted(lost)[:5]}"
                    )
        group_seen: set[int] = set()
        for member in self.group:
            group_seen |= member.seen.get(GROUP_TOPIC, set())
        lost = (
            set(range(ends.get(GROUP_TOPIC, 0))) - group_seen - self._gaps.get(GROUP_TOPIC, set())
        )
        if lost:
            missing.append(f"group g never got {GROUP_TOPIC} offsets {sorted(lost)[:5]}")
        lost = (
            set(range(ends.get(DURABLE_TOPIC, 0)))
            - self.durable.seen.get(DURABLE_TOPIC, set())
            - self._gaps.get(DURABLE_TOPIC, set())
        )
        if lost:
            missing.append(f"durable d never got {DURABLE_TOPIC} offsets {sorted(lost)[:5]}")
        return missing

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._observe)


@dataclass
class Outcome:
    seed: int
    steps: int
    counts: Counts
    violations: list[str]


def run(
    seed: int,
    steps: int,
    faults: Faults | None = None,
    files: bool = False,
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
) -> Outcome:
    """Run `steps` random steps from `seed`, checking as it goes, then heal
    and check the end (over a file store on the simulated disk, if `files`)."""
    world = World(seed, faults, files, fsync)
    try:
        for _ in range(steps):
            world.step()
            found = world.violations()
            if found:
                return Outcome(seed, world.counts.steps, world.counts, found)
        world.heal()
        return Outcome(seed, world.counts.steps, world.counts, world.violations(final=True))
    finally:
        world.close()


def shortest_failing(
    seed: int,
    steps: int,
    faults: Faults | None = None,
    files: bool = False,
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
) -> Outcome:
    """The fewest steps from `seed` that still fail (a failure found at
    `steps` steps): a binary search over the run's length, each length
    replayed exactly."""

    def replay(length: int) -> Outcome:
        return run(seed, length, faults, files, fsync)

    failing = replay(steps)
    if not failing.violations:
        return failing
    low, high = 0, failing.steps
    while low + 1 < high:
        middle = (low + high) // 2
        attempt = replay(middle)
        if attempt.violations:
            high, failing = middle, attempt
        else:
            low = middle
    return failing

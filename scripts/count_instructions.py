"""Count the CPU instructions the broker's own code spends per message, under
valgrind's callgrind: a figure that the machine's noise does not move (the
hash seed is fixed, so the same code, inputs and interpreter give about the
same count every run), for before-and-after comparisons of changes too small
for a timed benchmark to see.

    python scripts/count_instructions.py [WORKLOAD ...] [--repeat N]

Workloads (each one 1,000 messages, in one process, no sockets; the script
carries them itself, so that it counts older commits' code as well, and the
micro-benchmarks time its `window`):

- `broker`: published in reads of 100 and delivered with prefetch 256 to an
  extended subscriber that acks each by id: protocols, sessions, decoder,
  topic, window and encoder, over in-memory transports.
- `plain`: 1,000 round trips of the plain protocol (publish, delivery, ack).
- `decode`: publish frames decoded.
- `acks`: acks by id decoded.
- `window`: deliveries and acks through one window (prefetch 256).

Each is run N times and zero times under callgrind; the difference over N is
printed per 1,000 messages. Needs Debian's `valgrind`. Measures the broker of
the tree the script is in (so a worktree of an older commit measures that),
compiled if `python setup.py build_ext --inplace` built it there (it says which).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from twisted.internet import address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import broker
from broker import wire
from broker.core.delivery import DeliverySettings, DeliveryTimers, DeliveryWindow
from broker.core.topics import TopicRegistry
from broker.server import BrokerFactory, BrokerProtocol, BrokerSettings
from broker.server.subscriber import SubscriberSession
from broker.wire import ServerDecoder, StartAt

try:
    from broker.compiled import describe
except ImportError:  # a tree from before the compiled build

    def describe() -> str:
        return "hot paths in pure Python"


PAYLOAD = b"x" * 100
PUBLISH_READS = [wire.encode_publish("bench", PAYLOAD) * 100] * 10
BURST = wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_publish("bench", PAYLOAD) * 1000
ACKS = b"".join(wire.encode_ack_id(i) for i in range(1000))
ACK_FRAMES = [wire.encode_ack_id(i) for i in range(1 << 16)]


class Ignored:
    """Decoder events, all ignored."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


def connect(factory: BrokerFactory) -> tuple[BrokerProtocol, StringTransport]:
    peer = address.IPv4Address("TCP", "127.0.0.1", 40000 + len(factory.connections))
    protocol = factory.buildProtocol(peer)
    assert isinstance(protocol, BrokerProtocol)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


class ExtendedFlow:
    """A broker, a publisher and an extended subscriber with prefetch 256."""

    def __init__(self) -> None:
        factory = BrokerFactory(BrokerSettings(), clock=Clock())
        self.publisher, _ = connect(factory)
        self.publisher.dataReceived(wire.encode_u16(wire.ACTION_PUBLISH))
        self.subscriber, self.output = connect(factory)
        self.subscriber.dataReceived(wire.encode_client_hello(prefetch=256))
        self.subscriber.dataReceived(wire.encode_subscribe(["bench"], StartAt.CURRENT))
        session = self.subscriber.session
        assert isinstance(session, SubscriberSession)
        self.window = session.window
        self.acked = 0

    def run(self) -> None:
        window = self.window
        for chunk in PUBLISH_READS:
            self.publisher.dataReceived(chunk)
            while window.in_flight:  # ids are given in order: ack what is in flight
                self.output.clear()
                count = window.in_flight
                first = self.acked
                acks = b"".join(ACK_FRAMES[(first + i) % (1 << 16)] for i in range(count))
                self.subscriber.dataReceived(acks)
                self.acked += count


class PlainFlow:
    """A broker, a publisher and a subscriber of the plain protocol."""

    def __init__(self) -> None:
        self.clock = Clock()
        factory = BrokerFactory(BrokerSettings(), clock=self.clock)
        self.publisher, _ = connect(factory)
        self.publisher.dataReceived(wire.encode_u16(wire.ACTION_PUBLISH))
        self.subscriber, self.output = connect(factory)
        self.subscriber.dataReceived(wire.encode_subscribe(["plain"], StartAt.CURRENT))
        self.frame = wire.encode_publish("plain", PAYLOAD)
        self.ack = wire.encode_u16(wire.ACK)

    def run(self) -> None:
        for _ in range(1000):
            self.publisher.dataReceived(self.frame)
            self.output.clear()
            self.subscriber.dataReceived(self.ack)
            self.clock.advance(0.0001)  # 10,000 round trips a second: timers come due


def decode() -> None:
    decoder = ServerDecoder(Ignored(), 1 << 20)
    for start in range(0, len(BURST), 65536):
        decoder.feed(BURST[start : start + 65536])


def acks() -> None:
    decoder = ServerDecoder(Ignored(), 1 << 20)
    decoder.feed(wire.encode_subscribe(["bench"], StartAt.CURRENT))
    decoder.extended = True  # as after an agreed Hello
    decoder.feed(ACKS)


def window() -> int:
    """Deliveries and acks through one window, one by one; how many went."""
    registry = TopicRegistry()
    sent: list = []
    timers = DeliveryTimers(Clock(), DeliverySettings())
    window = DeliveryWindow(timers, sent.append, lambda d, r: None, capacity=256)
    registry.publish("bench", [PAYLOAD] * 1000)
    window.subscribe(registry.get("bench"), StartAt.BEGINNING)
    while len(sent) < 1000:
        window.ack_many([d.id for d in sent[-256:]])
        window.pump()
    window.ack_many([d.id for d in sent[-256:]])
    return len(sent)


def workloads() -> dict[str, Callable[[], Callable[[], object]]]:
    """Each workload's setup, which returns what runs it once."""
    return {
        "broker": lambda: ExtendedFlow().run,
        "plain": lambda: PlainFlow().run,
        "decode": lambda: decode,
        "acks": lambda: acks,
        "window": lambda: window,
    }


def run_inside(name: str, repeat: int) -> None:
    """What runs under callgrind: set up, once to warm up, then `repeat` times."""
    once = workloads()[name]()
    once()
    for _ in range(repeat):
        once()


def instructions(name: str, repeat: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--inside",
            name,
            "--repeat",
            str(repeat),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind said no count: {done.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", nargs="*", default=["broker", "plain"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inside:
        run_inside(options.inside, options.repeat)
        return 0
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    print(f"{describe()} (the build of {Path(broker.__file__).parent})")
    for name in options.workload:
        if name not in workloads():
            parser.error(f"unknown workload {name!r}: one of {', '.join(workloads())}")
        per_run = (instructions(name, options.repeat) - instructions(name, 0)) / options.repeat
        print(f"{name}: {per_run / 1e6:.2f}M instructions per 1,000 messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every confirmed offset holds its own message, whatever byte a connection
dies at: a proxy between client and broker cuts the first connection at
each point of a publish/confirm exchange (before a frame, inside it, after
it was stored, inside or before its confirm), while the caller publishes
more during the outage; each fired offset is checked against the store."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from broker.client import connect
from broker.testing import RunningBroker, start_broker


class _Upstream(Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        self.downstream.from_broker(data)

    def connectionLost(self, reason=None) -> None:
        self.downstream.transport.loseConnection()


class _Downstream(Protocol):
    """The client's side of one proxied connection."""

    factory: CuttingProxy

    def connectionMade(self) -> None:
        self.upstream: _Upstream | None = None
        self.pending = b""
        self.cut = self.factory.take_plan()
        self.severed = False  # once cut, nothing more passes either way
        self.sent_up = self.sent_down = 0
        connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.factory.port), _Upstream(self)
        ).addCallback(self._up)

    def _up(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if self.pending:
            data, self.pending = self.pending, b""
            self.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self.severed:
            return
        if self.upstream is None:
            self.pending += data
            return
        limit = self.cut.get("up")
        if limit is not None and self.sent_up + len(data) >= limit:
            self.upstream.transport.write(data[: limit - self.sent_up])
            self.upstream.transport.loseConnection()  # the broker gets those bytes
            self._cut()
            return
        self.sent_up += len(data)
        self.upstream.transport.write(data)

    def from_broker(self, data: bytes) -> None:
        if self.severed:
            return
        limit = self.cut.get("down")
        if limit is not None and self.sent_down + len(data) >= limit:
            self.transport.write(data[: limit - self.sent_down])
            self.transport.loseConnection()  # the client gets those bytes
            assert self.upstream is not None
            self.upstream.transport.abortConnection()
            self._cut()
            return
        self.sent_down += len(data)
        self.transport.write(data)

    def _cut(self) -> None:
        self.cut = {}
        self.severed = True
        self.factory.cut_port = self.transport.getPeer().port
        self.factory.cut.callback(None)

    def connectionLost(self, reason=None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class CuttingProxy(Factory):
    """Forwards to a broker; cuts the first connection after `up` bytes from
    the client or `down` bytes from the broker."""

    protocol = _Downstream

    def __init__(self, port: int, up: int | None = None, down: int | None = None) -> None:
        self.port = port
        self._plan = {"up": up, "down": down}
        self.cut: Deferred[None] = Deferred()
        self.cut_port = 0  # the client's port on the connection that was cut

    def take_plan(self) -> dict[str, int | None]:
        plan, self._plan = self._plan, {}
        return {k: v for k, v in plan.items() if v is not None}


async def exchange(broker: RunningBroker, topic: str, **cut: int) -> bool:
    """Publish three messages, and two more while the cut connection is down;
    check each offset. True if the cut happened."""
    proxy = CuttingProxy(broker.port, **cut)
    listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    client = connect(
        reactor,
        f"tcp:127.0.0.1:{listening.getHost().port}",
        extensions=True,
        retry_policy=lambda attempt: 0.01,
    )
    try:
        payloads = [b"%s-%d" % (topic.encode(), n) for n in range(5)]
        sent = [client.publish(topic, payload) for payload in payloads[:3]]
        first_three = gatherResults(sent)
        first_link = client.publisher_connected()
        done = await _first_of(proxy.cut, first_three)
        if done == "cut":
            protocol = await first_link
            if protocol.transport.getHost().port == proxy.cut_port:
                await protocol.lost  # the client has seen it: now it is an outage
        sent += [client.publish(topic, payload) for payload in payloads[3:]]
        offsets = await gatherResults(sent)
        log = broker.core.registry.get(topic).log
        for offset, payload in zip(offsets, payloads, strict=True):
            assert log.read(offset, 1) == [payload], (cut, offset, payload)
        assert len(set(offsets)) == 5
        stored = log.read(log.first_offset, log.next_offset - log.first_offset)
        # What was written on the cut connection may be stored twice (at least
        # once); what was published after the cut goes on the next one only.
        counts = [stored.count(payload) for payload in payloads]
        assert all(1 <= n <= 2 for n in counts), (cut, counts)
        if done == "cut":
            assert counts[3:] == [1, 1], (cut, counts)
        return done == "cut"
    finally:
        await client.close()
        await listening.stopListening()


def _first_of(cut: Deferred[None], published: Deferred[list]) -> Deferred[str]:
    first: Deferred[str] = Deferred()
    cut.addCallback(lambda _: first.called or first.callback("cut"))
    published.addCallback(lambda _: first.called or first.callback("published"))
    return first


@pytest_twisted.ensureDeferred
async def test_every_cut_of_a_publish_confirm_exchange_keeps_offsets_right(logged_failures):
    broker = start_broker()
    try:
        cuts = 0
        for direction in ("up", "down"):
            at = 0
            while True:
                if not await exchange(broker, f"{direction}{at}", **{direction: at}):
                    break  # past the end of the exchange: nothing left to cut
                cuts += 1
                # Every byte of the publishes and their confirms; the broker's
                # Hello answer (about 280 bytes, before any confirm) every eighth.
                at += 8 if direction == "down" and at < 256 else 1
        assert cuts > 100, cuts
        logged_failures.assert_none()
    finally:
        await broker.stop()

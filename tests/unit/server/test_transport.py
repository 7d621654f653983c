"""Writing at once on a TCP connection with nothing queued, over real
loopback connections: what the socket takes is sent then, the rest (and
everything behind queued data) goes the reactor's way, in order."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from broker.server.transport import direct_writer


class Collect(Protocol):
    """Gathers what arrives; `until(n)` fires once n bytes did."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.waiting: list[tuple[int, Deferred[None]]] = []
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for wait in [w for w in self.waiting if len(self.data) >= w[0]]:
            self.waiting.remove(wait)
            wait[1].callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)

    def until(self, size: int) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        if len(self.data) >= size:
            waiting.callback(None)
        else:
            self.waiting.append((size, waiting))
            waiting.addTimeout(10, reactor)
        return waiting


async def connected_pair() -> tuple[Protocol, Collect, object]:
    """A server-side protocol (whose transport the test writes to) and the
    client that reads, on loopback."""
    accepted: Deferred[Protocol] = Deferred()

    class Server(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Server)
    )
    reader = Collect()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), reader)
    server = await accepted
    return server, reader, port


@pytest_twisted.async_yield_fixture
async def pair():
    """(server-side protocol, reading client) on loopback, closed after."""
    server, reader, port = await connected_pair()
    yield server, reader
    server.transport.loseConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_go_at_once_when_nothing_is_queued(pair):
    server, reader = pair
    write = direct_writer(server.transport)
    write(b"first")
    # Sent in the call: nothing was left for the reactor to write.
    assert not server.transport._tempDataBuffer
    assert not server.transport.dataBuffer
    await reader.until(5)
    assert bytes(reader.data) == b"first"


@pytest_twisted.ensureDeferred
async def test_behind_queued_data_and_past_a_full_socket_order_is_kept(pair):
    server, reader = pair
    write = direct_writer(server.transport)
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reader.transport.pauseProducing()  # the peer reads nothing for now
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
    write(big)
    assert server.transport._tempDataBuffer  # the rest waits for the reactor
    write(b"after")  # queued behind it, not sent ahead
    reader.transport.resumeProducing()
    await reader.until(len(big) + 5)
    assert bytes(reader.data) == big + b"after"


@pytest_twisted.ensureDeferred
async def test_a_peer_that_is_gone_is_found_the_reactor_s_way(pair):
    server, reader = pair
    lost: Deferred[object] = Deferred()
    server.connectionLost = lambda reason: lost.callback(reason.value)  # type: ignore[method-assign]
    reader.transport.abortConnection()
    await reader.lost
    write = direct_writer(server.transport)
    for _ in range(50):  # a reset arrives; writing must not raise
        write(b"x" * 1000)
    reason = await lost.addTimeout(10, reactor)
    assert isinstance(reason, Exception)  # the connection ended, as the reactor found


def test_other_transports_are_written_as_they_are():
    transport = StringTransport()
    write = direct_writer(transport)
    write(b"one")
    write(b"two")
    assert transport.value() == b"onetwo"

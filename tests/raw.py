"""A byte-level client for tests: send bytes, read exactly what comes back."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


class RawConnection(Protocol):
    """Collects every byte the server sends, and reads them on request."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()
        self._wanted = 0
        self._waiter: Deferred[bytes] | None = None

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._serve()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(ConnectionError(f"closed with {bytes(self.received)!r} unread"))
        self.closed.callback(None)

    def read(self, count: int, timeout: float = 5.0) -> Deferred[bytes]:
        """The next `count` bytes, once they have all arrived."""
        assert self._waiter is None, "one read at a time"
        self._wanted = count
        self._waiter = Deferred()
        self._waiter.addTimeout(timeout, reactor)
        waiter = self._waiter
        self._serve()
        return waiter

    def _serve(self) -> None:
        if self._waiter is not None and len(self.received) >= self._wanted:
            data = bytes(self.received[: self._wanted])
            del self.received[: self._wanted]
            waiter, self._waiter = self._waiter, None
            waiter.callback(data)

    async def assert_silent(self, seconds: float) -> None:
        """Nothing arrives within `seconds` (the transcripts' empty expect)."""
        await deferLater(reactor, seconds, lambda: None)
        assert bytes(self.received) == b"", f"unexpected bytes {bytes(self.received).hex()}"


async def connect_raw(port: int) -> RawConnection:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, RawConnection())

"""Publishes between a client's `publish()` and the broker's answer, without
I/O: queued while no connection is up (a bounded number), written on the
connection that is, and, with confirms, kept until answered. A connection
lost before its answers came gives its unanswered publishes back to the
front of the queue, and the next connection sends them first: a publish is
resent until it is confirmed or refused.

Each publish carries the client's own handle for its caller (a Deferred, an
asyncio Future); the `Outbox` settles it through the two functions the
client gives: `settle(handle, offset)` (None: written, no confirm to wait
for) and `fail(handle, error)`. They must ignore a handle already settled
(a caller may cancel).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from broker.sansio.connection import PublisherConnection, Unanswered
from broker.sansio.messages import BrokerError, QueueFull, refusal
from broker.wire.headers import Headered, message_id, message_id_block, with_message_id

ERR_NO_HEADERS = "this broker does not take headers (it did not agree them in Hello)"

H = TypeVar("H")


class Pending(Generic[H]):
    """One publish: its message, and the handle its caller holds."""

    __slots__ = ("handle", "id_block", "identified", "original", "payload", "topic")

    def __init__(self, topic: str, payload: bytes, handle: H) -> None:
        self.topic = topic
        self.payload = payload
        self.handle = handle
        self.identified = False
        """Whether its payload carries a message id (given at its first write)."""
        self.original: bytes | None = None
        """The payload as published, where the client gave it an id among its headers."""
        self.id_block = b""
        """The header block of the id the client gave a payload without headers."""


class Outbox(Generic[H]):
    """The client's publishes not yet answered, and the connection (if one
    is up) that carries them."""

    def __init__(
        self,
        settle: Callable[[H, int | None], None],
        fail: Callable[[H, Exception], None],
        max_queued: int,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._settle = settle
        self._fail = fail
        self.max_queued = max_queued
        self._on_error = on_error
        self.queue: deque[Pending[H]] = deque()
        """Publishes not yet written to a live connection, in publish order."""
        self.connection: PublisherConnection | None = None
        self.unanswered: Unanswered[Pending[H]] = Unanswered()
        """Publishes written on `connection` and not yet answered."""
        self._id_prefix = secrets.token_urlsafe(12) + "."
        """This client's message ids: the prefix, then a count."""
        self._ids_given = 0
        self._identifying = False
        """Whether `connection` stores a message id once (publishes get one)."""

    def __len__(self) -> int:
        """Publishes not yet answered: queued, or written and unanswered."""
        return len(self.queue) + len(self.unanswered)

    def add(self, pending: Pending[H]) -> None:
        """Write a publish now, or queue it for the next connection; QueueFull
        if `max_queued` already wait."""
        if self.connection is not None:
            self._write(pending)
        elif len(self.queue) >= self.max_queued:
            raise QueueFull(f"{len(self.queue)} messages already wait for a connection")
        else:
            self.queue.append(pending)

    def withdraw(self, pending: Pending[H]) -> None:
        """A cancelled publish still queued is never sent; a written one is
        answered by the broker and the answer ignored."""
        if pending in self.queue:
            self.queue.remove(pending)

    def withdraw_handle(self, handle: H) -> None:
        """Withdraw the queued publish whose handle is `handle` (a canceller
        told of its Deferred alone: no reference cycle per publish)."""
        for pending in self.queue:
            if pending.handle is handle:
                self.queue.remove(pending)
                return

    def withdraw_where(self, chosen: Callable[[H], bool]) -> None:
        """Withdraw every queued publish whose handle is `chosen`."""
        self.queue = deque(pending for pending in self.queue if not chosen(pending.handle))

    def adopt(self, connection: PublisherConnection) -> int:
        """A new connection has negotiated: it carries every publish from now
        on, starting with those queued, in order (what the last connection
        left unanswered comes first). Returns how many it sent at once."""
        if self.connection is not None:
            self.lost(self.connection)
        self.connection = connection
        self._identifying = connection.deduplicates
        self.unanswered = Unanswered()
        connection.on_confirmed = self._confirmed
        connection.on_publish_refused = self._refused
        queue, self.queue = self.queue, deque()
        for pending in queue:
            self._write(pending)
        return len(queue)

    def lost(self, connection: PublisherConnection) -> None:
        """`connection` is gone: its unanswered publishes go again, before
        anything published since."""
        if self.connection is not connection:
            return
        self.connection = None
        self.queue.extendleft(reversed(self.unanswered))
        self.unanswered = Unanswered()

    def fail_all(self, error: Exception) -> None:
        """Fail every publish queued (the client is closed or refused)."""
        queue, self.queue = self.queue, deque()
        for pending in queue:
            self._fail(pending.handle, error)

    def _write(self, pending: Pending[H]) -> None:
        connection = self.connection
        assert connection is not None
        if self._identifying:
            if not pending.identified:
                self._identify(pending)
            connection.publish(pending.topic, pending.payload, pending.id_block)
        elif type(pending.payload) is Headered and not connection.takes_headers:
            if pending.original is None or type(pending.original) is Headered:
                self._fail(pending.handle, BrokerError(ERR_NO_HEADERS))
                return
            # Its headers were only the id the client gave it.
            pending.payload = pending.original
            connection.publish(pending.topic, pending.payload)
        else:
            connection.publish(pending.topic, pending.payload)
        if connection.confirming:
            self.unanswered.append(pending)
        else:
            self._settle(pending.handle, None)

    def _identify(self, pending: Pending[H]) -> None:
        """Give a publish a message id before its first write to a broker
        that stores an id once: sent again after a lost connection, it is
        then stored once however many copies arrive. An id of the caller's
        own (a Msg-Id header) is kept. A payload without headers keeps its
        plain bytes; the id's block goes beside it."""
        pending.identified = True
        payload = pending.payload
        self._ids_given += 1
        given = self._id_prefix + format(self._ids_given, "x")
        if type(payload) is not Headered:
            pending.id_block = message_id_block(given)
        elif message_id(payload) is None:
            pending.original = payload
            pending.payload = with_message_id(payload, given)

    def _confirmed(self, count: int, first_offset: int, sequence: int | None) -> None:
        pendings = self.unanswered.take(sequence, count)
        if pendings is None:
            at = "" if sequence is None else f" from publish {sequence}"
            assert self.connection is not None
            self.connection.protocol_error(
                f"{count} confirms{at} for {len(self.unanswered)} unanswered publishes"
            )
            return
        settle = self._settle
        for offset, pending in enumerate(pendings, first_offset):
            settle(pending.handle, offset)

    def _refused(self, text: str, sequence: int | None) -> None:
        pendings = self.unanswered.take(sequence, 1)
        if pendings is None:
            assert self.connection is not None
            self.connection.protocol_error(f"an error answers no publish: {text}")
            return
        if self._on_error is not None:
            self._on_error(text)
        (pending,) = pendings
        self._fail(pending.handle, refusal(text))

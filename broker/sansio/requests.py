"""Request and reply in a client, without I/O: the client's inbox (a topic
of its own that only it reads, kept in the broker's memory), the requests
waiting for their replies by correlation id, and the reply a responder
sends for a request. The Twisted and asyncio clients put their own handles
(a Deferred, a Future) in `Requests`."""

from __future__ import annotations

import secrets
from typing import Generic, TypeVar

from broker.names import INBOX_PREFIX
from broker.sansio.messages import BrokerError, Message, header_pairs, payload_with_headers
from broker.wire.headers import (
    CORRELATION_ID,
    NO_RESPONDERS,
    REPLY_TO,
    STATUS,
    HeaderPairs,
    Headers,
)

H = TypeVar("H")

DEFAULT_RESPONDERS = "responders"
"""The consumer group `reply()` joins unless told another: each request then
goes to one responder, whichever node it is connected to."""


class NoResponders(BrokerError):
    """Nobody reads the topic a request went to: the broker said so at once."""


class RequestTimedOut(TimeoutError):
    """No reply came within the request's timeout."""


class Requests(Generic[H]):
    """A client's inbox, and its requests waiting for a reply."""

    def __init__(self) -> None:
        self.inbox = INBOX_PREFIX + secrets.token_urlsafe(16)
        """Its replies' topic: 128 random bits, so that no one else reads them."""
        self._made = 0
        self._waiting: dict[str, H] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def prepare(self, data: bytes, headers: HeaderPairs | None, handle: H) -> tuple[str, bytes]:
        """A request's correlation id and payload (its headers with Reply-To
        and Correlation-Id); `handle` waits for its reply."""
        self._made += 1
        correlation = format(self._made, "x")
        pairs = header_pairs(headers)
        pairs += [(REPLY_TO, self.inbox), (CORRELATION_ID, correlation)]
        self._waiting[correlation] = handle
        return correlation, payload_with_headers(data, pairs)

    def forget(self, correlation: str) -> H | None:
        """Stop waiting for a reply (timed out, cancelled, or not sent)."""
        return self._waiting.pop(correlation, None)

    def answered(self, reply: Message) -> tuple[H, Message | Exception] | None:
        """The handle a reply settles and what it settles it with (the
        reply, or NoResponders); None for a reply no request waits for."""
        headers = reply.headers
        correlation = headers.get(CORRELATION_ID)
        handle = None if correlation is None else self._waiting.pop(correlation, None)
        if handle is None:
            return None
        if headers.get(STATUS) == NO_RESPONDERS:
            return handle, NoResponders(f"no responders on {reply.topic!r}")
        return handle, reply

    def fail_all(self, error: Exception) -> list[H]:
        """Every handle still waiting (the client is closing)."""
        waiting = list(self._waiting.values())
        self._waiting.clear()
        return waiting


Reply = bytes | tuple[bytes, "HeaderPairs | None"] | None
"""What a responder's handler gives: the reply's data, or (data, headers),
or None to send no reply."""


def reply_to_request(request: Message, reply: Reply) -> tuple[str, bytes] | None:
    """The (inbox, payload) that answers `request` with `reply`, carrying the
    request's Correlation-Id; None if the request asks for no reply or the
    handler gave none."""
    request_headers: Headers = request.headers
    inbox = request_headers.get(REPLY_TO)
    if inbox is None or reply is None:
        return None
    data, headers = (reply, None) if isinstance(reply, bytes) else reply
    pairs = header_pairs(headers)
    correlation = request_headers.get(CORRELATION_ID)
    if correlation is not None:
        pairs.append((CORRELATION_ID, correlation))
    return inbox, payload_with_headers(data, pairs)

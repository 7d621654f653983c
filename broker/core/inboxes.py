"""Request and reply, as the broker sees it: a request is a message whose
headers name a Reply-To inbox; an inbox is a topic (`_INBOX.` and a name
the requester made) kept in memory only, on the node its requester is
connected to, and dropped once nobody has read or written it for a while.
A reply sent through another node of a shared store goes to the inbox's
node through the store (broker.log.redis: a channel per inbox). A request
to a topic nobody reads is answered at once by the broker itself: a reply
with `Status: 503` (no responders), as NATS answers."""

from __future__ import annotations

from broker.log import Retention
from broker.wire.headers import (
    CORRELATION_ID,
    NO_RESPONDERS,
    STATUS,
    Headers,
    encode_headers,
    with_headers,
)

INBOX_RETENTION = Retention(max_messages=10_000, max_bytes=16 * 1024 * 1024)
"""What an inbox holds at most: replies its requester has not taken yet."""
INBOX_IDLE = 60.0
"""Seconds an inbox nobody waits on and nobody writes to is kept."""
NO_RESPONDERS_TEXT = b"no responders"


def no_responders_reply(request: bytes) -> bytes:
    """The broker's reply to a request nobody can answer: `Status: 503`,
    with the request's Correlation-Id."""
    pairs = [(STATUS, NO_RESPONDERS)]
    correlation = Headers.of(request).get(CORRELATION_ID)
    if correlation is not None:
        pairs.append((CORRELATION_ID, correlation))
    return with_headers(NO_RESPONDERS_TEXT, encode_headers(pairs))

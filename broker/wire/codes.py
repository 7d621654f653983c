"""The plain protocol's numbers and words: actions, statuses, frame codes of
the extensions, where a subscription starts, and the Error texts.
"""

from __future__ import annotations

from enum import IntEnum

# Actions, client -> server.
ACTION_SUBSCRIBE = 1
ACTION_UNSUBSCRIBE = 2
ACTION_PUBLISH = 3
ACK = 4
NACK = 5

# Statuses, server -> client.
STATUS_SUBSCRIBED = 1
STATUS_UNSUBSCRIBED = 2
STATUS_ERROR = 3

# Extensions, negotiated by Hello; a client that never sends it never sees them.
HELLO = 16
"""Client -> server as the first action, and the server's answer: u16 | u32 n | JSON."""
CONFIRMED = 17
"""Server -> publisher: u16 | u32 count | u64 first offset."""
DELIVERY = 18
"""Server -> subscriber: u16 | u16 t | topic | u64 offset | u16 attempt | u32 id | u32 n | data."""
ACK_ID = 20
"""Subscriber -> server: u16 | u32 delivery id."""
NACK_ID = 21
"""Subscriber -> server: u16 | u32 delivery id."""
CONFIRMED_AT = 22
"""Server -> publisher with "confirm_order": "topic": u16 | u64 sequence |
u32 count | u64 first offset (publishes sequence .. sequence + count - 1)."""
REFUSED_AT = 23
"""Server -> publisher with "confirm_order": "topic": u16 | u64 sequence |
u16 n | text (publish `sequence` refused)."""
HEADERS = 0xFFFE
"""With "headers" agreed, before a message frame (a publish, or a Delivery):
u16 | u32 h | header block (broker.wire.headers). No topic length is as
long, so a publisher's stream tells it from a publish frame."""
CONFIRM_ORDER_TOPIC = "topic"
"""Hello's "confirm_order" asking for answers per topic, each naming its publish."""
EXTENSIONS_VERSION = 1


class StartAt(IntEnum):
    """Where a new subscription starts in its topic's log."""

    BEGINNING = 0
    CURRENT = 1
    FROM = 2
    FROM64 = 3
    """An extension: a u64 offset follows (the seed's From takes a u16)."""


TOPIC_PREFIX = b"topic:"
MAX_TOPIC_BYTES = 255
MAX_U16 = 0xFFFF

# Error texts the seed sends; clients may match on them.
ERR_UNKNOWN_ACTION = "unknown action"
ERR_NO_TOPIC_PREFIX = "topic data does not contain 'topic:' prefix"
ERR_INVALID_TOPIC_DATA = "invalid topic data provided"
ERR_EMPTY_TOPIC_DATA = "data length of topics is 0"
ERR_INVALID_START = "invalid start up type provided"
# Error texts of our own, for what the seed did not check.
ERR_MESSAGE_TOO_LARGE = "message too large"
ERR_TOPIC_LIST_TOO_LARGE = "topic list too large"
ERR_NOTHING_TO_ACK = "nothing to acknowledge"
ERR_TOO_MANY_TOPICS = "too many topics"
ERR_HANDSHAKE_TIMEOUT = "handshake timed out"
ERR_FRAME_TIMEOUT = "frame timed out"
ERR_INVALID_HELLO = "invalid hello"
ERR_EMPTY_MESSAGE = "empty message"
# With a users file: the connection is closed after each of these three.
ERR_AUTH_FAILED = "authentication failed"
ERR_AUTH_REVOKED = "authentication revoked"
ERR_TOO_MANY_CONNECTIONS = "too many connections for this user"
# Followed by ": " and what was refused, e.g. "permission denied: publish to 'a.b'".
ERR_PERMISSION_DENIED = "permission denied"
ERR_PERMISSION_WITHDRAWN = "permission withdrawn"
# With "patterns" agreed in Hello.
ERR_INVALID_PATTERN = "invalid topic pattern"
ERR_PATTERN_OFFSET = "a pattern starts at Beginning or Current, not at an offset"
# With "groups" agreed in Hello.
ERR_INVALID_GROUP = "invalid group"
ERR_TOO_MANY_DURABLES = "too many durable consumers"
# Unsolicited, then ": $durable/NAME/TOPIC": a durable consumer subscribed to a
# topic that did not exist could not join it when it came (or a durable
# pattern one it matched): its user's max_durables was reached by then.
ERR_DURABLE_NOT_JOINED = "durable consumer not joined, its user's max_durables reached"

# Errors that answer something other than a subscribe or unsubscribe request.
UNSOLICITED_ERRORS = frozenset(
    {
        ERR_UNKNOWN_ACTION,
        ERR_NOTHING_TO_ACK,
        ERR_HANDSHAKE_TIMEOUT,
        ERR_FRAME_TIMEOUT,
        ERR_AUTH_REVOKED,
        ERR_TOO_MANY_CONNECTIONS,
    }
)


def is_unsolicited(text: str) -> bool:
    """Whether an Error answers no subscribe or unsubscribe request."""
    return (
        text in UNSOLICITED_ERRORS
        or text.startswith(ERR_PERMISSION_WITHDRAWN)
        or text.startswith(ERR_DURABLE_NOT_JOINED)
    )


class ProtocolError(ValueError):
    """A frame that is well delimited but whose content is refused.

    Its text is what the peer is told; `detail` (for the log) may say more.
    """

    def __init__(self, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.detail = detail or text

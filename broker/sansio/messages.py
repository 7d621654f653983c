"""What every client hands its user: a delivered `Message`, the errors a
call fails with, and the checks a call's arguments pass before anything is
sent (so that a wrong call fails at once, in the caller's frame)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from broker.wire import topic_name_problem
from broker.wire.headers import (
    EXPIRES,
    NOT_BEFORE,
    HeaderPairs,
    Headers,
    encode_headers,
    with_headers,
)

OUTCOME_UNKNOWN = "outcome unknown"
"""How the broker's Error text starts when a publish may have been stored."""


class BrokerError(Exception):
    """The broker answered with an Error status."""


class OutcomeUnknown(BrokerError):
    """The broker could not confirm a publish, but may have stored it (its
    store lost the connection mid-call, or too few replicas acknowledged
    it): unlike a plain BrokerError, the message may yet be delivered, so
    publishing it again may deliver it twice."""


class AuthenticationFailed(BrokerError):
    """The broker refused the client's credentials (or its certificate's
    user), or that user has all the connections it may have."""


class ExtensionsRefused(BrokerError):
    """The broker answered Hello with an Error: it speaks only the seed's
    protocol (the Go broker then stops reading that connection)."""


class QueueFull(BrokerError):
    """publish() while `max_queued` messages already wait for a connection."""


class BrokerUnreachable(Exception):
    """No connection to the broker came up in time; the message says why."""


class ConnectionLost(ConnectionError):
    """The connection closed before the broker answered (the client may try
    again on the next one), or the client was closed."""


def refusal(text: str) -> BrokerError:
    """The exception for an Error answering a publish."""
    if text.startswith(OUTCOME_UNKNOWN):
        return OutcomeUnknown(text)
    return BrokerError(text)


class Message(NamedTuple):
    """One delivery. With extensions, also its offset and which delivery this
    is, and its `headers`. A named tuple: made for every delivery, and a
    third cheaper to make than a frozen dataclass."""

    topic: str
    payload: bytes
    offset: int | None = None
    attempt: int = 1

    @property
    def headers(self) -> Headers:
        """Its headers (case-insensitive names; empty if it has none)."""
        return Headers.of(self.payload)


Publish = tuple[str, bytes] | tuple[str, bytes, "HeaderPairs | None"]
"""One message of a publish_many: (topic, data) or (topic, data, headers)."""


def prepared(messages: Iterable[Publish]) -> list[tuple[str, bytes]]:
    """The (topic, payload) of each message of a publish_many, checked whole
    before any is sent, each payload carrying its headers if it has any."""
    batch = []
    for message in messages:
        topic, data = message[0], message[1]
        headers = message[2] if len(message) > 2 else None
        check_publish(topic, data, headers)
        batch.append((topic, payload_with_headers(data, headers)))
    return batch


def prepared_one(
    topic: str,
    data: bytes,
    headers: HeaderPairs | None,
    delay: float | None = None,
    ttl: float | None = None,
) -> bytes:
    """What a client's publish() sends of a message: checked (TypeError or
    ValueError), carrying its headers and its delay and TTL as headers."""
    check_publish(topic, data, headers)
    headers = timed(headers, delay, ttl)
    return payload_with_headers(data, headers) if headers else data


def timed(
    headers: HeaderPairs | None, delay: float | None, ttl: float | None
) -> HeaderPairs | None:
    """`headers` with the Not-Before of a `delay` and the Expires of a `ttl`
    (seconds from now, by this machine's clock) if given."""
    if delay is None and ttl is None:
        return headers
    now = time.time()
    pairs = header_pairs(headers)
    if delay is not None:
        pairs.append((NOT_BEFORE, f"{now + delay:.3f}"))
    if ttl is not None:
        pairs.append((EXPIRES, f"{now + ttl:.3f}"))
    return pairs


def payload_with_headers(data: bytes, headers: HeaderPairs | None) -> bytes:
    """What a client publishes: `data`, carrying `headers` if any (checked:
    ValueError or TypeError for a bad name or value)."""
    if not headers:
        return data
    pairs = tuple(headers.items() if type(headers) is dict else header_pairs(headers))
    block = _BLOCKS.get(pairs)
    if block is None:
        block = encode_headers(pairs)
        if len(_BLOCKS) >= _BLOCKS_KEPT:
            _BLOCKS.clear()
        _BLOCKS[pairs] = block
    return with_headers(data, block)


# The blocks of the headers published lately: most programs send a few
# sets of headers over and over.
_BLOCKS: dict[tuple[tuple[str, str], ...], bytes] = {}
_BLOCKS_KEPT = 256


def check_topics(topics: Iterable[str]) -> list[str]:
    """The names, once each, in order; ValueError if none or one is invalid."""
    if isinstance(topics, str):
        raise TypeError("topics is a list of names, not one name")
    names = list(dict.fromkeys(topics))
    if not names:
        raise ValueError("name at least one topic")
    for name in names:
        problem = topic_name_problem(name)
        if problem:
            raise ValueError(f"{name!r}: {problem}")
    return names


def check_publish(topic: str, payload: bytes, headers: HeaderPairs | None = None) -> None:
    """TypeError or ValueError for a publish no broker would take (an empty
    one is a deletion if its headers name a Key)."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    if not isinstance(payload, bytes):
        hint = " (encode it first)" if isinstance(payload, str) else ""
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}{hint}")
    problem = topic_name_problem(topic)
    if problem:
        raise ValueError(f"{topic!r}: {problem}")
    if not payload and not _names_key(headers):
        raise ValueError("the broker does not take empty messages (but a keyed deletion)")


def _names_key(headers: HeaderPairs | None) -> bool:
    if not headers:
        return False
    return any(name.lower() == "key" for name, _ in header_pairs(headers))


def header_pairs(headers: HeaderPairs | None) -> list[tuple[str, str]]:
    """What a caller gave as headers (pairs, a mapping, or None), as pairs."""
    if headers is None:
        return []
    if type(headers) is dict or isinstance(headers, Mapping):  # (dict first: quick)
        return list(headers.items())
    return list(headers)


def credentials_of(
    user: str | None = None, password: str | None = None, token: str | None = None
) -> dict[str, str] | None:
    """What Hello carries to sign in, checked; None for no credentials."""
    if (user is None) != (password is None):
        raise ValueError("give user and password together")
    if token is not None and user is not None:
        raise ValueError("give a token or a user and password, not both")
    if user is not None and password is not None:
        return {"user": user, "password": password}
    return {"token": token} if token is not None else None

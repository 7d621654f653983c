"""What MQTT keeps beyond a connection, kept in the broker's own compacted
topics, so that every store holds it (memory, files across restarts, Redis
across nodes):

- `$mqtt.retained`: a topic's retained message, keyed by the topic's name
  here; an empty one deletes it (MQTT 3.3.1.3);
- `$mqtt.sessions`: a persistent session's subscriptions (JSON), keyed by
  its client identifier; its undelivered messages are the durable
  consumers it subscribed through, named in it.

Both start with `$`, so no MQTT wildcard reaches them (MQTT 4.7.2).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from broker.core import Appended, Broker
from broker.subjects import matches
from broker.wire.headers import (
    KEY,
    Headers,
    decode_headers,
    encode_headers,
    header_block,
    with_headers,
)

RETAINED_TOPIC = "$mqtt.retained"
SESSIONS_TOPIC = "$mqtt.sessions"
STATE_TOPICS = (RETAINED_TOPIC, SESSIONS_TOPIC)
WRITER = "the MQTT door"


def keep_compacted(broker: Broker) -> None:
    """Have the broker compact the state topics (before it opens its store)."""
    broker.compaction.on.update(STATE_TOPICS)


def _keyed(key: str, payload: bytes, block: bytes = b"") -> bytes:
    pairs = [(KEY, key), *(decode_headers(block) if block else [])]
    return with_headers(payload, encode_headers(pairs))


def _write(broker: Broker, topic: str, key: str, payload: bytes, block: bytes = b"") -> Appended:
    # (Not as a publish: no request in it is answered, no id looked at.)
    return broker.append(
        topic,
        [_keyed(key, payload, block)],
        None,
        WRITER,
        commit=True,
        headered=True,
        deduplicate=False,
    )


# Retained messages.


def retain(broker: Broker, topic: str, payload: bytes) -> Appended:
    """Keep `payload` (with its headers) as `topic`'s retained message, or
    forget the one kept if it is empty."""
    return _write(broker, RETAINED_TOPIC, topic, bytes(payload), header_block(payload))


def retained_matching(broker: Broker, names: list[str]) -> Deferred[list[tuple[str, bytes]]]:
    """(topic, payload with its headers, the Key left out) of each retained
    message a topic or pattern of `names` matches, in topic order."""

    def chosen(values: dict[str, bytes]) -> list[tuple[str, bytes]]:
        found = []
        for topic in sorted(values):
            if any(name == topic or matches(name, topic) for name in names):
                found.append((topic, _without_key(values[topic])))
        return found

    return broker.latest_values(RETAINED_TOPIC).addCallback(chosen)


def _without_key(payload: bytes) -> bytes:
    pairs = [pair for pair in Headers.of(payload).pairs() if pair[0].lower() != "key"]
    return with_headers(bytes(payload), encode_headers(pairs) if pairs else b"")


# Persistent sessions.


@dataclass
class StoredSession:
    """A persistent session: the durable name its subscriptions read
    through (new for each new session, so that an old one's positions are
    never taken up again), and its filters with their QoS."""

    durable: str = field(default_factory=lambda: "mqtt-" + uuid.uuid4().hex[:16])
    filters: dict[str, int] = field(default_factory=dict)
    expiry: int | None = None
    """Seconds it outlives its connection (MQTT 5); None: for ever (3.1.1)."""
    ended_at: float | None = None
    """When its last connection ended (None: connected, or never said)."""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "durable": self.durable,
                "filters": self.filters,
                "expiry": self.expiry,
                "ended_at": self.ended_at,
            }
        ).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> StoredSession | None:
        try:
            data: Any = json.loads(raw)
            return cls(
                str(data["durable"]),
                {str(k): int(v) for k, v in data["filters"].items()},
                None if data.get("expiry") is None else int(data["expiry"]),
                None if data.get("ended_at") is None else float(data["ended_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def expired(self, now: float) -> bool:
        return (
            self.expiry is not None
            and self.ended_at is not None
            and now - self.ended_at >= self.expiry
        )


def load_session(broker: Broker, client_id: str) -> Deferred[StoredSession | None]:
    def found(values: dict[str, bytes]) -> StoredSession | None:
        raw = values.get(client_id)
        return None if raw is None else StoredSession.decode(raw)

    return broker.latest_values(SESSIONS_TOPIC, client_id).addCallback(found)


def save_session(broker: Broker, client_id: str, session: StoredSession) -> Appended:
    return _write(broker, SESSIONS_TOPIC, client_id, session.encode())


def forget_session(broker: Broker, client_id: str) -> Appended:
    return _write(broker, SESSIONS_TOPIC, client_id, b"")

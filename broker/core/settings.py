"""The limits and timers of one broker, with their defaults (the single
source of the command line's defaults too)."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.core.dead_letters import DEFAULT_TEMPLATE
from broker.core.dedup import DEFAULT_DEDUP_MAX_IDS, DEFAULT_DEDUP_WINDOW
from broker.core.delivery import DEFAULT_MAX_INFLIGHT_BYTES, DeliverySettings
from broker.core.keys import DEFAULT_TOMBSTONE_RETENTION, KV_PATTERN
from broker.log import DEFAULT_MEMORY_RETENTION, Retention
from broker.wire.headers import DEFAULT_MAX_HEADER_BYTES


@dataclass(frozen=True)
class BrokerSettings:
    """Limits and timers of one broker."""

    max_message_size: int = 1 << 20
    """Largest payload (and topic list) accepted, in bytes."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Largest header block a message may carry beside its payload, in bytes."""
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    """Seconds a topic remembers a message id (Msg-Id), so that the same id
    published again is stored once; 0: ids are not looked at."""
    dedup_max_ids: int = DEFAULT_DEDUP_MAX_IDS
    """Message ids a topic remembers at most (the oldest go first)."""
    compact: tuple[str, ...] = (KV_PATTERN,)
    """Patterns of the topics compacted: the latest message of each key kept."""
    tombstone_retention: float = DEFAULT_TOMBSTONE_RETENTION
    """Seconds a deletion (a keyed message with no payload) is kept in a
    compacted topic before compaction drops it and forgets its key."""
    handshake_timeout: float = 10.0
    """Seconds a new connection has to send its first valid action."""
    max_topics: int = 100_000
    """Topics the broker will hold; creating one more is refused."""
    max_anonymous_connections: int = 1000
    """With a users file: connections of the user `anonymous` at most, unless
    its table sets max_connections."""
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    retention: Retention = DEFAULT_MEMORY_RETENTION
    """What each topic's log keeps."""
    max_prefetch: int = 1024
    """Deliveries in flight per connection an extended subscriber may ask for."""
    dead_letter_topic: str | None = DEFAULT_TEMPLATE
    """Where given-up messages go ("{topic}" is replaced); None: dropped."""
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    """Payload bytes in flight per connection (one larger message still goes alone)."""
    slow_consumer_lag: int = 100_000
    """Messages a subscription may fall behind its topic before it is logged."""
    slow_consumer_timeout: float = 30.0
    """Seconds a subscriber's output may stay full before it is called slow."""
    disconnect_slow_consumers: bool = False
    """Close a slow consumer (its deliveries go back to its topics' logs)."""
    max_pending_input: int = 256 << 20
    """Bytes held in incomplete frames across all connections, at most."""
    frame_timeout: float = 30.0
    """Seconds a frame may stay incomplete before its connection is closed."""
    tls_identity: str = "cn"
    """With a users file and --tls-ca: which name of a client certificate is
    its user (cn, dns, email), or none (certificates then name no user)."""
    durable_idle: float = 7 * 24 * 3600.0
    """Seconds a durable consumer's position is kept with no activity."""
    drain_timeout: float = 5.0
    """Seconds a stopping broker lets deliveries in flight be acked."""
    close_grace: float = 5.0
    """Seconds a connection closed for misbehaving (or a TLS connection that
    never completed its handshake) has before it is cut off."""

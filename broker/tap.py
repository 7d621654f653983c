"""`twistd broker`: command-line options and the service they make."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from broker.delivery import DEFAULT_MAX_INFLIGHT_BYTES, DeliverySettings
from broker.log import DEFAULT_MEMORY_RETENTION, FileStoreSettings, FsyncPolicy, Retention
from broker.server import BrokerSettings
from broker.service import BrokerService


def endpoint_description(port: str) -> str:
    """A plain port number means TCP on every interface, with a listen
    backlog fit for crowds of clients (Twisted's default is 50); anything
    else is taken as a Twisted server endpoint string (tcp:, unix:, ssl:, ...)."""
    return f"tcp:{port}:backlog=1024" if port.isdigit() else port


def _positive(kind: type[int] | type[float]):
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be positive, not {text}")
        return value

    parse.coerceDoc = f"A positive {'whole number' if kind is int else 'number'}."  # type: ignore[attr-defined]
    return parse


def _fsync_policy(text: str) -> FsyncPolicy:
    return FsyncPolicy(text)


_fsync_policy.coerceDoc = "One of: always, interval, never."  # type: ignore[attr-defined]


class Options(usage.Options):
    """Options of `twistd broker`."""

    synopsis = "[options]"
    longdesc = (
        "Runs a pub/sub message broker that speaks the seed's wire protocol. "
        "Publishers' messages fan out to every subscriber of their topic, and "
        "each topic keeps a replay log that subscribers can start from."
    )

    optFlags = [
        [
            "disconnect-slow-consumers",
            None,
            "Close a slow consumer's connection (its deliveries go back to their topics).",
        ],
    ]

    optParameters = [
        [
            "port",
            "p",
            "3000",
            "Port number, or a Twisted server endpoint string such as "
            "tcp:3000:interface=127.0.0.1, unix:/run/broker.sock or ssl:3001:privateKey=...",
        ],
        [
            "max-message-size",
            None,
            1 << 20,
            "Largest message (and topic list) accepted, in bytes.",
            _positive(int),
        ],
        [
            "ack-delay",
            None,
            1.0,
            "Seconds before a nacked message is delivered again.",
            _positive(float),
        ],
        [
            "ack-timeout",
            None,
            2.0,
            "Seconds to wait for an ack before treating it as a nack.",
            _positive(float),
        ],
        [
            "max-deliveries",
            None,
            5,
            "Deliveries of one message to one subscriber, then it is dropped.",
            _positive(int),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new connection has to send its first action before it is closed.",
            _positive(float),
        ],
        ["max-topics", None, 100_000, "Topics the broker holds at most.", _positive(int)],
        [
            "max-prefetch",
            None,
            1024,
            "Deliveries in flight per connection that a subscriber "
            "using the extensions may ask for.",
            _positive(int),
        ],
        [
            "max-inflight-bytes",
            None,
            DEFAULT_MAX_INFLIGHT_BYTES,
            "Payload bytes in flight per connection (a larger message still goes alone).",
            _positive(int),
        ],
        [
            "slow-consumer-timeout",
            None,
            30.0,
            "Seconds a subscriber may leave its deliveries unread before it is logged "
            "as a slow consumer (and disconnected, with --disconnect-slow-consumers).",
            _positive(float),
        ],
        [
            "max-pending-input",
            None,
            256 << 20,
            "Bytes held in incomplete frames across all connections; past it the broker "
            "stops reading from the connections holding the largest ones.",
            _positive(int),
        ],
        [
            "frame-timeout",
            None,
            30.0,
            "Seconds a frame may stay incomplete before its connection is closed.",
            _positive(float),
        ],
        [
            "dead-letter-topic",
            None,
            "{topic}.dead-letter",
            "Where a message goes once a "
            "subscriber has had it --max-deliveries times ({topic} is replaced by its topic); "
            "'' drops it instead.",
        ],
        [
            "data-dir",
            "d",
            None,
            "Keep topics in files in this directory, and recover them at "
            "start. Without it, topics live in memory and are lost when the broker stops.",
        ],
        [
            "segment-bytes",
            None,
            64 * 1024 * 1024,
            "With --data-dir: roll a topic's segment file at this size.",
            _positive(int),
        ],
        [
            "fsync",
            None,
            "interval",
            "With --data-dir: always (a message is on disk before it "
            "is delivered), interval (every --fsync-interval) or never (left to the OS).",
            _fsync_policy,
        ],
        [
            "fsync-interval",
            None,
            1.0,
            "Seconds between fsyncs under --fsync interval.",
            _positive(float),
        ],
        [
            "retention-messages",
            None,
            None,
            "Messages kept per topic (default: no limit).",
            _positive(int),
        ],
        [
            "retention-bytes",
            None,
            None,
            "Bytes kept per topic (default: 256 MiB of payloads in memory, no limit on disk).",
            _positive(int),
        ],
        [
            "retention-age",
            None,
            None,
            "Seconds a message is kept (default: no limit).",
            _positive(float),
        ],
    ]

    def postOptions(self) -> None:
        # usage.Options coerces what is given, never the defaults.
        self["fsync"] = FsyncPolicy(self["fsync"])
        if self["data-dir"] is None and self["fsync"] is not FsyncPolicy.INTERVAL:
            raise usage.UsageError("--fsync needs --data-dir")

    def retention(self) -> Retention:
        on_disk = self["data-dir"] is not None
        default_bytes = None if on_disk else DEFAULT_MEMORY_RETENTION.max_bytes
        return Retention(
            max_messages=self["retention-messages"],
            max_bytes=self["retention-bytes"] or default_bytes,
            max_age=self["retention-age"],
        )

    def file_settings(self) -> FileStoreSettings:
        return FileStoreSettings(
            segment_bytes=self["segment-bytes"],
            fsync=self["fsync"],
            fsync_interval=self["fsync-interval"],
            retention=self.retention(),
        )

    def settings(self) -> BrokerSettings:
        return BrokerSettings(
            max_message_size=self["max-message-size"],
            handshake_timeout=self["handshake-timeout"],
            max_topics=self["max-topics"],
            retention=self.retention(),
            max_prefetch=self["max-prefetch"],
            dead_letter_topic=self["dead-letter-topic"] or None,
            max_inflight_bytes=self["max-inflight-bytes"],
            slow_consumer_timeout=self["slow-consumer-timeout"],
            disconnect_slow_consumers=bool(self["disconnect-slow-consumers"]),
            max_pending_input=self["max-pending-input"],
            frame_timeout=self["frame-timeout"],
            delivery=DeliverySettings(
                ack_delay=self["ack-delay"],
                ack_timeout=self["ack-timeout"],
                max_deliveries=self["max-deliveries"],
            ),
        )


def makeService(options: Options) -> IService:
    """The broker listening where --port says, its topics where --data-dir says."""
    data_dir = options["data-dir"]
    return BrokerService(
        endpoint_description(options["port"]),
        options.settings(),
        data_dir=Path(data_dir) if data_dir else None,
        file_settings=options.file_settings(),
    )

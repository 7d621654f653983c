"""`twistd broker`: command-line options and the service they make."""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import IService
from twisted.python import usage

from broker.delivery import DeliverySettings
from broker.server import BrokerFactory, BrokerSettings


def endpoint_description(port: str) -> str:
    """A plain port number means TCP on every interface; anything else is
    taken as a Twisted server endpoint string (tcp:, unix:, ssl:, ...)."""
    return f"tcp:{port}" if port.isdigit() else port


def _positive(kind: type[int] | type[float]):
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be positive, not {text}")
        return value

    parse.coerceDoc = f"A positive {'whole number' if kind is int else 'number'}."  # type: ignore[attr-defined]
    return parse


class Options(usage.Options):
    """Options of `twistd broker`."""

    synopsis = "[options]"
    longdesc = (
        "Runs a pub/sub message broker that speaks the seed's wire protocol. "
        "Publishers' messages fan out to every subscriber of their topic, and "
        "each topic keeps a replay log that subscribers can start from."
    )

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
    ]

    def settings(self) -> BrokerSettings:
        return BrokerSettings(
            max_message_size=self["max-message-size"],
            handshake_timeout=self["handshake-timeout"],
            max_topics=self["max-topics"],
            delivery=DeliverySettings(
                ack_delay=self["ack-delay"],
                ack_timeout=self["ack-timeout"],
                max_deliveries=self["max-deliveries"],
            ),
        )


def makeService(options: Options) -> IService:
    """The broker listening where --port says."""
    factory = BrokerFactory(options.settings())
    return strports.service(endpoint_description(options["port"]), factory)

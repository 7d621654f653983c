"""An asyncio client for the broker; it imports no Twisted.

    import broker.aio

    client = await broker.aio.connect("tcp://localhost:3000")
    offset = await client.publish("orders", b"...")
    async with client.subscribe(["orders.>"], start=broker.aio.StartAt.BEGINNING) as sub:
        async for message in sub:
            print(message.topic, message.offset, message.data)
            await message.ack()
    await client.close()

The same protocol logic as the Twisted client (broker.sansio): extensions
negotiated, with the plain protocol for a broker without them (the seed's
Go broker); publishes confirmed with their offsets and resent after a
reconnect until confirmed; subscriptions resumed after a reconnect from
the first message not acked; consumer groups, durable consumers, patterns.
"""

import logging

from broker.aio.client import (
    DEFAULT_MAX_QUEUED,
    Client,
    Delivery,
    Subscription,
    backoff,
    connect,
    parse_url,
)
from broker.sansio.kv import Entry, KeyChanged
from broker.sansio.messages import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    ExtensionsRefused,
    Message,
    OutcomeUnknown,
    QueueFull,
)
from broker.sansio.requests import NoResponders, RequestTimedOut
from broker.wire import StartAt

# A library logs, its program decides where to: nothing by default.
logging.getLogger("broker.aio").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "AuthenticationFailed",
    "BrokerError",
    "BrokerUnreachable",
    "Client",
    "ConnectionLost",
    "Delivery",
    "Entry",
    "ExtensionsRefused",
    "KeyChanged",
    "Message",
    "NoResponders",
    "OutcomeUnknown",
    "QueueFull",
    "RequestTimedOut",
    "StartAt",
    "Subscription",
    "backoff",
    "connect",
    "parse_url",
]

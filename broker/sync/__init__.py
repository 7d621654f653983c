"""A blocking client for the broker, for scripts and notebooks; it imports
no Twisted.

    import broker.sync

    with broker.sync.connect("tcp://localhost:3000") as client:
        offset = client.publish("orders", b"...")
        for message in client.subscribe(["orders"], start=broker.sync.StartAt.BEGINNING,
                                        timeout=5):
            print(message.topic, message.offset, message.data)
            message.ack()

It is the asyncio client (broker.aio) on an event loop of its own in a
background thread: the same guarantees, behind plain calls.
"""

from broker.sansio.kv import Entry, KeyChanged
from broker.sansio.messages import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    ExtensionsRefused,
    OutcomeUnknown,
    QueueFull,
)
from broker.sansio.requests import NoResponders, RequestTimedOut
from broker.sync.client import (
    Message,
    Responder,
    SyncClient,
    SyncKeyValue,
    SyncSubscription,
    connect,
)
from broker.wire import StartAt

__all__ = [
    "AuthenticationFailed",
    "BrokerError",
    "BrokerUnreachable",
    "ConnectionLost",
    "Entry",
    "ExtensionsRefused",
    "KeyChanged",
    "Message",
    "NoResponders",
    "OutcomeUnknown",
    "QueueFull",
    "RequestTimedOut",
    "Responder",
    "StartAt",
    "SyncClient",
    "SyncKeyValue",
    "SyncSubscription",
    "connect",
]

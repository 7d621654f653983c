"""A Twisted client for the broker.

    client = connect(reactor, "tcp:localhost:3000")
    await client.connected(timeout=5)       # optional: fail fast if unreachable
    await client.subscribe(["orders"], handle, start=StartAt.BEGINNING)
    offset = await client.publish("orders", b"...")
    await client.close()

A handler gets a `Message`; its result acks the message, unless it is False
or a failure (also through a Deferred), which nack it.

By default the client asks the broker for its extensions (a broker that
refuses them, like the seed's Go broker, is detected and spoken to
plainly): `publish` fires with the offset the message was stored at, or
fails with the broker's reason, and is retried after a reconnect until it
is confirmed; a subscriber handles up to `prefetch` messages at a time, acks
them by id, and after a reconnect resumes from its lowest offset not yet
answered, so that nothing is missed. `extensions=False` chooses the seed's
protocol, in which a publish cannot tell whether it was stored.

A broker with a users file wants `user=` and `password=` (or `token=`), or
a client certificate (`certificate=` with tls:).

`broker.client.protocols` holds the two connections as plain Twisted
protocols; `broker.client.reconnecting` the client that drives them.
"""

from broker.client.protocols import (
    AuthenticationFailed,
    BrokerError,
    ExtensionsRefused,
    Handler,
    Message,
    OutcomeUnknown,
    PublisherProtocol,
    SubscriberProtocol,
)
from broker.client.reconnecting import (
    DEFAULT_MAX_QUEUED,
    BrokerClient,
    BrokerUnreachable,
    QueueFull,
    connect,
)
from broker.sansio.kv import Entry, KeyChanged
from broker.sansio.requests import NoResponders, RequestTimedOut
from broker.wire import StartAt

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "AuthenticationFailed",
    "BrokerClient",
    "BrokerError",
    "BrokerUnreachable",
    "Entry",
    "ExtensionsRefused",
    "Handler",
    "KeyChanged",
    "Message",
    "NoResponders",
    "OutcomeUnknown",
    "PublisherProtocol",
    "QueueFull",
    "RequestTimedOut",
    "StartAt",
    "SubscriberProtocol",
    "connect",
]

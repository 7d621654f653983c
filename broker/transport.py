"""What the broker's and the client's protocols need of their transport, as
one interface: a stream that can be written, closed, aborted, paused, and
given a producer. Twisted's TCP, UNIX and TLS transports all provide it."""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connection's transport as the protocols use it."""

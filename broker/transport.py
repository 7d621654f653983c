"""What every front door needs of its connections' transport, as one
interface: a stream that can be written, closed, aborted, paused, and given
a producer. Twisted's TCP, UNIX and TLS transports all provide it."""

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connection's transport as the doors use it."""

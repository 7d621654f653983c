"""What every front door needs of its connections' transport, as one
interface: a stream that can be written, closed, aborted, paused, and given
a producer. Twisted's TCP, UNIX and TLS transports all provide it. And the
producer a door registers to hear when its writes pile up."""

from typing import Protocol

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from zope.interface import implementer


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connection's transport as the doors use it."""


class OutputListener(Protocol):
    """A connection that wants to know when its output piles up."""

    def output_full(self) -> None: ...

    def output_drained(self) -> None: ...


@implementer(IPushProducer)
class OutputBackpressure:
    """Registered as the producer of a connection's own transport: told when
    what we wrote piles up unread, and when it has drained.

    While it is full the connection sends no new deliveries and is not read
    from (so a peer cannot make us answer requests it never reads), which
    bounds the memory any peer can make us spend on its output.
    """

    def __init__(self, connection: OutputListener) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.output_full()

    def resumeProducing(self) -> None:
        self._connection.output_drained()

    def stopProducing(self) -> None:
        pass

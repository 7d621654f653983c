"""What the broker's and the client's protocols need of their transport, as
one interface: a stream that can be written, closed, aborted, paused, and
given a producer. Twisted's TCP, UNIX and TLS transports all provide it.

And `direct_writer`: writing a reply the moment it is made. A transport
queues what it is given and asks the reactor to say when the socket can
take it: two `epoll_ctl` calls and a turn of the reactor per write, which
is most of what a one-message-at-a-time subscriber costs. When nothing is
queued, the socket almost always takes the bytes at once, so they are sent
then; whatever it does not take (a short send, EAGAIN, an error) is handed
to the transport's own `write`, and the reactor deals with it as always.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import tcp

from broker.transport import IStreamTransport

__all__ = ["IStreamTransport", "direct_writer"]


def direct_writer(transport: object) -> Callable[[bytes], None]:
    """A function that writes bytes to `transport`: at once on a TCP (or
    UNIX) connection with nothing queued, else through its `write`."""
    if not isinstance(transport, tcp.Connection) or not hasattr(transport, "_tempDataBuffer"):
        # TLS, test doubles: written as they are, through
        # whatever `write` they have when it is called.
        return lambda data: transport.write(data)  # type: ignore[attr-defined]
    connection = transport
    write = connection.write

    def write_now(data: bytes) -> None:
        if (
            connection.connected
            and not connection.disconnecting
            and not connection._tempDataBuffer
            and connection.offset == len(connection.dataBuffer)
        ):
            sent = connection.writeSomeData(data)
            if not isinstance(sent, Exception):
                if sent == len(data):
                    return
                data = data[sent:]
        write(data)  # the rest, or on an error: the reactor's way

    return write_now

"""What a session may ask of the connection it runs on: the seam between a
role's loop (broker.server.publisher, .subscriber) and the TCP protocol
(broker.server.protocol), named so that neither imports the other's module
for its types."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from broker.core import Broker
    from broker.server.transport import IStreamTransport


class Connection(Protocol):
    """One client connection, as its session sees it
    (broker.server.protocol.BrokerProtocol)."""

    @property
    def peer(self) -> str:
        """The client's address, for logs."""

    @property
    def broker(self) -> Broker:
        """The broker the connection is to."""

    @property
    def transport(self) -> IStreamTransport:
        """Where the session writes its frames."""

    def refused(self, reason: str, detail: str | None = None) -> None:
        """Answer Error `reason` (logging `detail`, or the reason)."""

    def log_refusal(self, reason: str) -> None:
        """Log a refusal answered otherwise (counted past the first few)."""

    def unknown_action(self, code: int) -> None:
        """A frame this role has no use for."""

    def hold_input_until(self, ready: Deferred[Any], then: Callable[[], None]) -> None:
        """Read nothing more until `ready` fires, then call `then` first."""

    def close(self, grace: float | None = None) -> None:
        """Close once what is written has gone (cut off after `grace`)."""

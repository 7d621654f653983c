"""What a connection does once it has chosen its role: the base of the
publisher and subscriber sessions.

Once the first action names a role, the protocol makes a session and points
its decoder at it, so that each publish, ack or subscribe reaches the
session directly, with no call through the protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from broker.security.users import User
    from broker.server.connection import Connection

log = Logger()


def cancel_call(call: IDelayedCall | None) -> None:
    """Cancel a delayed call unless it is gone or has run."""
    if call is not None and call.active():
        call.cancel()


class Session:
    """One role's loop on one connection. Events every role shares go back
    to the protocol; a session adds its role's own."""

    role = "?"

    def __init__(self, protocol: Connection) -> None:
        self.protocol = protocol
        self.broker = protocol.broker
        self.peer = protocol.peer

    # Decoder events every role may see.

    def unknown_action(self, code: int) -> None:
        self.protocol.unknown_action(code)

    def refused(self, reason: str, detail: str | None = None) -> None:
        self.protocol.refused(reason, detail)

    # Hooks of the protocol.

    def end_of_read(self) -> None:
        """Called once per read, after its frames are decoded."""

    def output_full(self) -> None:
        """The connection's output piles up unread."""

    def output_drained(self) -> None:
        """The connection's output has drained."""

    def permissions_changed(self, user: User) -> None:
        """The users file was re-read: `user` is what it says now."""

    def halt(self) -> None:
        """The connection is being closed: start nothing new."""

    def close(self) -> None:
        """The connection is gone."""

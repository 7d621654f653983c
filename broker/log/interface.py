"""The interface every message store implements."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMessageLog(Interface):
    """An append-only log of one topic's messages, addressed by dense offsets.

    Offsets are given out synchronously by `append`, so that order is fixed
    the moment a publish is accepted; durability is separate (`flush`), so
    that a store on disk can batch its syncs and a networked store can answer
    later. `read` may answer with a Deferred for the same reason.
    """

    first_offset = Attribute("Offset of the oldest message still held.")
    next_offset = Attribute("Offset the next appended message will get.")

    def append(payloads):
        """Append a batch of payloads (a sequence of bytes, in order).

        Return the offset of the first. Raise an exception if none of them
        could be stored.
        """

    def read(offset, max_messages):
        """Return up to `max_messages` payloads starting at `offset`.

        `first_offset <= offset < next_offset`. The answer is a list, or a
        Deferred that fires with one.
        """

    def flush():
        """Return a Deferred that fires once everything appended so far is durable."""

    def close():
        """Release what the log holds open."""

"""Dead letters: where a message goes once a subscriber has had it delivered
the maximum number of times, instead of vanishing.

A dead letter's payload is `u32 n | n bytes of JSON metadata | the original
payload`. The metadata says where it came from: topic, offset, deliveries,
why it was given up (nacked or timed out), the subscriber, and when. A
client that agreed headers also finds, in the dead letter's headers, the
original message's headers and then the broker's: `Dead-Letter-Reason`,
`Dead-Letter-Topic`, `Dead-Letter-Offset`, `Dead-Letter-Deliveries`.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from broker.subjects import matches
from broker.wire import topic_name_problem
from broker.wire.headers import Headers, encode_headers, with_headers

if TYPE_CHECKING:
    from broker.security.permissions import Rules

DEFAULT_TEMPLATE = "{topic}.dead-letter"
_LENGTH = struct.Struct(">I")


class DeadLetterPolicy:
    """Names the dead-letter topic of a topic from a template.

    "{topic}.dead-letter" gives each topic its own; a template without
    "{topic}" sends all to one topic; None turns dead letters off. Messages
    given up on a dead-letter topic itself are dropped, never re-lettered.
    """

    def __init__(self, template: str | None = DEFAULT_TEMPLATE) -> None:
        self.template = template or None
        self._prefix: str | None = None
        self._suffix: str | None = None
        if self.template is not None and "{topic}" in self.template:
            self._prefix, _, self._suffix = self.template.partition("{topic}")

    def topic_for(self, topic: str) -> str | None:
        """The dead-letter topic for `topic`, or None (off, or `topic` is one)."""
        if self.template is None or self.is_dead_letter_topic(topic):
            return None
        name = self.template.replace("{topic}", topic)
        return None if topic_name_problem(name) else name

    def is_dead_letter_topic(self, topic: str) -> bool:
        if self.template is None:
            return False
        if self._prefix is None or self._suffix is None:
            return topic == self.template
        return (
            topic.startswith(self._prefix)
            and topic.endswith(self._suffix)
            and len(topic) > len(self._prefix) + len(self._suffix)
        )

    def parent_of(self, topic: str) -> str | None:
        """The topic whose dead letters `topic` holds, or None (not a
        dead-letter topic, or one topic for every topic's dead letters)."""
        if self._prefix is None or self._suffix is None or not self.is_dead_letter_topic(topic):
            return None
        return topic[len(self._prefix) : len(topic) - len(self._suffix)]

    def may_read(self, topic: str, rules: Rules) -> bool:
        """Whether `rules` let a user read `topic` (a name, or a pattern as
        its own name). A dead-letter topic holds another topic's messages:
        reading it needs the right to read that topic too, or an allow
        pattern that spells out the dead-letter part (`orders.*.dead-letter`),
        not one that matches it by chance (`orders.eu.*`)."""
        if not rules.permits(topic):
            return False
        if not self.is_dead_letter_topic(topic):
            return True
        parent = self.parent_of(topic)
        if parent is not None and rules.permits(parent):
            return True
        return any(self.is_dead_letter_topic(p) and matches(p, topic) for p in rules.allow)


_NOT_KEPT = frozenset(("expires", "not-before", "msg-id"))


def encode_dead_letter(metadata: dict[str, Any], payload: bytes) -> bytes:
    data = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    letter = _LENGTH.pack(len(data)) + data + payload
    headers = [
        # The original's, but for its timing (an expired message's letter
        # would expire too) and its id (a letter is a message of its own).
        *(pair for pair in Headers.of(payload).pairs() if pair[0].lower() not in _NOT_KEPT),
        ("Dead-Letter-Reason", str(metadata["reason"])),
        ("Dead-Letter-Topic", str(metadata["topic"])),
        ("Dead-Letter-Offset", str(metadata["offset"])),
        ("Dead-Letter-Deliveries", str(metadata["deliveries"])),
    ]
    return with_headers(letter, encode_headers(headers))


def decode_dead_letter(letter: bytes) -> tuple[dict[str, Any], bytes]:
    """(metadata, original payload) of a dead letter."""
    (length,) = _LENGTH.unpack_from(letter)
    end = _LENGTH.size + length
    return json.loads(letter[_LENGTH.size : end]), letter[end:]

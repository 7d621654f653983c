"""The key-value view in a client, without I/O (see broker.core.kv for the
broker's side): a bucket is the compacted topic `kv.BUCKET`; `put` publishes
with a `Key` header, `update` adds `Expected-Revision`, `delete` publishes
no payload; `get`, `keys` and `history` are requests the broker answers
from its key index; `watch` asks for each key's latest revision, then
replays the topic from its start skipping what those superseded, and goes
on with the changes."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from broker.sansio.messages import BrokerError, Message
from broker.wire.headers import EXPECTED_REVISION, KEY, STATUS

BUCKET_PREFIX = "kv."
REQUEST_DATA = b"?"
"""What a request to the key-value view carries (its headers say it all)."""


class KeyChanged(BrokerError):
    """An update's key had moved on from the revision it named."""


@dataclass(frozen=True)
class Entry:
    """A key's value at one revision (the offset of its message + 1, so
    that 0 means none); a deletion has `deleted` and no value."""

    key: str
    value: bytes
    revision: int
    deleted: bool = False


def bucket_topic(bucket: str) -> str:
    if not bucket or "." in bucket or any(c in bucket for c in "*> "):
        raise ValueError(f"{bucket!r}: a bucket name is one token (no '.', '*', '>' or space)")
    return BUCKET_PREFIX + bucket


def request_topic(operation: str, bucket: str) -> str:
    return f"$KV.{operation}.{bucket}"


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError("a key is a non-empty str")
    return key


def put_headers(key: str, revision: int | None = None) -> list[tuple[str, str]]:
    pairs = [(KEY, check_key(key))]
    if revision is not None:
        pairs.append((EXPECTED_REVISION, str(revision)))
    return pairs


def revision_of(offset: int | None) -> int | None:
    """The revision a write's confirmed offset gives."""
    return None if offset is None else offset + 1


def update_refused(error: BrokerError) -> BrokerError:
    """The error an update raises: KeyChanged if the key moved on."""
    if str(error).startswith("wrong last revision"):
        return KeyChanged(str(error))
    return error


def entry_of_reply(key: str, reply: Message) -> Entry | None:
    if reply.headers.get(STATUS) == "404":
        return None
    return Entry(key, bytes(reply.payload), int(reply.headers.get("Revision", "0")))


def keys_of_reply(reply: Message) -> list[str]:
    return [str(key) for key in json.loads(bytes(reply.payload))]


def history_of_reply(key: str, reply: Message) -> list[Entry]:
    return [
        Entry(key, base64.b64decode(item["value"]), int(item["revision"]), bool(item["deleted"]))
        for item in json.loads(bytes(reply.payload))
    ]


class WatchFilter:
    """What a watcher passes on: from the topic's start, a key's message
    only if it is that key's latest (as the broker said when the watch
    began), then every change."""

    def __init__(self, prefix: str, revisions_reply: Message) -> None:
        said: dict[str, Any] = json.loads(bytes(revisions_reply.payload))
        self.prefix = prefix
        self.next = int(said["next"])
        self.latest: dict[str, int] = {key: int(rev) for key, rev in said["revisions"].items()}

    def entry(self, message: Message) -> Entry | None:
        """The entry a delivery of the bucket's topic shows, or None."""
        key = message.headers.get(KEY)
        offset = message.offset
        if key is None or offset is None or not key.startswith(self.prefix):
            return None
        if offset < self.next and self.latest.get(key) != offset:
            return None  # superseded before the watch began
        payload = bytes(message.payload)
        if offset < self.next and not payload:
            return None  # deleted before the watch began: not a current value
        return Entry(key, payload, offset + 1, not payload)

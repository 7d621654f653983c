"""The key-value view, as the broker answers it: a bucket is the compacted
topic `kv.BUCKET`; writing is publishing to it (a `Key` header, the value
as payload; no payload deletes; `Expected-Revision` makes it a
compare-and-set), and reading is a request (broker.core.inboxes) to
`$KV.<OP>.<BUCKET>` that the broker answers itself from the topic's key
index, storing nothing and replaying nothing:

- `GET` (header `Key`): the value, with `Key` and `Revision` (its
  message's offset + 1, so that 0 means none); or `Status: 404`.
- `KEYS` (header `Prefix`, optional): a JSON list of the keys.
- `HISTORY` (header `Key`): a JSON list of what the log still holds of the
  key, oldest first: `{"revision", "deleted", "value"}` (base64).
- `REVISIONS` (header `Prefix`, optional): JSON `{"next": the topic's next
  offset, "revisions": {key: the offset of its latest message}}`, what a
  watcher needs to replay only the current values.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from broker.core.keys import KeyIndex
from broker.wire.headers import (
    CORRELATION_ID,
    KEY,
    STATUS,
    Headers,
    encode_headers,
    with_headers,
)

KV_REQUEST_PREFIX = "$KV."
BUCKET_PREFIX = "kv."
PREFIX = "Prefix"
REVISION = "Revision"
OPERATIONS = ("GET", "KEYS", "HISTORY", "REVISIONS")


def is_kv_request(topic: str) -> bool:
    return topic.startswith(KV_REQUEST_PREFIX)


def parse_request(topic: str) -> tuple[str, str] | None:
    """(operation, bucket topic) of a `$KV.<OP>.<BUCKET>` name, or None."""
    operation, dot, bucket = topic[len(KV_REQUEST_PREFIX) :].partition(".")
    if not dot or not bucket or operation not in OPERATIONS:
        return None
    return operation, BUCKET_PREFIX + bucket


def asked_key(operation: str, request: bytes) -> str:
    """The one key a request is about ('' if it is about every key)."""
    if operation in ("GET", "HISTORY"):
        return Headers.of(request).get(KEY, "")
    return ""


def offsets_to_read(operation: str, request: bytes, index: KeyIndex) -> list[int]:
    """The messages `answer` reads to answer a request."""
    key = asked_key(operation, request)
    if operation == "GET":
        latest = index.latest(key)
        return [] if latest is None else [latest]
    if operation == "HISTORY":
        return index.history(key)
    return []


def answer(
    operation: str,
    request: bytes,
    index: KeyIndex,
    read: Callable[[int], bytes | None],
) -> bytes:
    """The reply to one request (`read(offset)` gives a message the log holds)."""
    asked = Headers.of(request)
    pairs: list[tuple[str, str]] = []
    correlation = asked.get(CORRELATION_ID)
    if correlation is not None:
        pairs.append((CORRELATION_ID, correlation))
    if operation == "GET":
        key = asked.get(KEY, "")
        offset = index.latest(key)
        value = read(offset) if offset is not None else None
        if offset is None or not value:
            return with_headers(b"not found", encode_headers([*pairs, (KEY, key), (STATUS, "404")]))
        return with_headers(
            bytes(value), encode_headers([*pairs, (KEY, key), (REVISION, str(offset + 1))])
        )
    if operation == "KEYS":
        data: object = index.names(asked.get(PREFIX, ""))
    elif operation == "HISTORY":
        history = []
        for offset in index.history(asked.get(KEY, "")):
            value = read(offset)
            if value is not None:
                history.append(
                    {
                        "revision": offset + 1,
                        "deleted": not value,
                        "value": base64.b64encode(bytes(value)).decode("ascii"),
                    }
                )
        data = history
    else:  # REVISIONS
        data = {
            "next": index.next_offset,
            "revisions": index.latest_revisions(asked.get(PREFIX, "")),
        }
    return with_headers(json.dumps(data).encode("utf-8"), encode_headers(pairs))

"""The key-value view for the Twisted client (`client.kv("config")`): see
broker.sansio.kv for what each call sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from broker.sansio.kv import (
    REQUEST_DATA,
    Entry,
    WatchFilter,
    bucket_topic,
    check_key,
    entry_of_reply,
    history_of_reply,
    keys_of_reply,
    put_headers,
    request_topic,
    revision_of,
    update_refused,
)
from broker.sansio.messages import BrokerError, Message
from broker.wire import StartAt
from broker.wire.headers import KEY as KEY_HEADER
from broker.wire.headers import HeaderPairs


class _Client(Protocol):
    """What the view needs of broker.client's BrokerClient."""

    def publish(
        self, topic: str, payload: bytes, headers: HeaderPairs | None = None
    ) -> Deferred[int | None]: ...

    def request(
        self, topic: str, data: bytes, headers: HeaderPairs | None = None, timeout: float = 5.0
    ) -> Deferred[Message]: ...

    def subscribe(self, topics: Any, handler: Any, start: StartAt = StartAt.CURRENT) -> Any: ...


class KeyValue:
    """One bucket: the compacted topic `kv.BUCKET`. Every call answers with
    a Deferred; revisions are the offsets of the keys' messages."""

    def __init__(self, client: _Client, bucket: str, timeout: float = 5.0) -> None:
        self._client = client
        self.bucket = bucket
        self.topic = bucket_topic(bucket)
        self.timeout = timeout

    def put(self, key: str, value: bytes) -> Deferred[int | None]:
        """Store `value` under `key`; fires with its revision."""
        return self._client.publish(self.topic, value, put_headers(key)).addCallback(revision_of)

    def update(self, key: str, value: bytes, revision: int) -> Deferred[int | None]:
        """`put`, if `key` is still at `revision` (0: if it has none);
        fails with KeyChanged if it moved on."""

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, BrokerError):
                return Failure(update_refused(failure.value))
            return failure

        written = self._client.publish(self.topic, value, put_headers(key, revision))
        return written.addCallbacks(revision_of, refused)

    def create(self, key: str, value: bytes) -> Deferred[int | None]:
        """`put`, if `key` has no value (KeyChanged if it has)."""
        return self.update(key, value, 0)

    def delete(self, key: str) -> Deferred[int | None]:
        """Delete `key` (a message with no payload); fires with its revision."""
        return self._client.publish(self.topic, b"", put_headers(key)).addCallback(revision_of)

    def get(self, key: str) -> Deferred[Entry | None]:
        """The key's latest value (None if it has none), from the broker's
        index: nothing is replayed."""
        check_key(key)
        return self._ask("GET", [(KEY_HEADER, key)]).addCallback(
            lambda reply: entry_of_reply(key, reply)
        )

    def keys(self, prefix: str = "") -> Deferred[list[str]]:
        """The keys that have a value, sorted (those starting with `prefix`)."""
        return self._ask("KEYS", [("Prefix", prefix)]).addCallback(keys_of_reply)

    def history(self, key: str) -> Deferred[list[Entry]]:
        """What the bucket still holds of `key`, oldest first (compaction
        keeps at least the latest)."""
        check_key(key)
        return self._ask("HISTORY", [(KEY_HEADER, key)]).addCallback(
            lambda reply: history_of_reply(key, reply)
        )

    def watch(self, handler: Callable[[Entry], Any], prefix: str = "") -> Deferred[None]:
        """Call `handler` with each key's current value (those starting
        with `prefix`), then with every change (a deletion as an Entry with
        `deleted`); fires once the watch is under way."""

        def watching(reply: Message) -> Deferred[None]:
            seen = WatchFilter(prefix, reply)

            def on_message(message: Message) -> Any:
                entry = seen.entry(message)
                return True if entry is None else handler(entry)

            result: Deferred[None] = self._client.subscribe(
                [self.topic], on_message, start=StartAt.BEGINNING
            )
            return result

        return self._ask("REVISIONS", [("Prefix", prefix)]).addCallback(watching)

    def _ask(self, operation: str, headers: list[tuple[str, str]]) -> Deferred[Message]:
        return self._client.request(
            request_topic(operation, self.bucket), REQUEST_DATA, headers, self.timeout
        )

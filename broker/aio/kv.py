"""The key-value view for the asyncio client (`client.kv("config")`): see
broker.sansio.kv for what each call sends."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

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
from broker.sansio.messages import BrokerError
from broker.wire import StartAt
from broker.wire.headers import KEY


class Client(Protocol):
    """What the view needs of broker.aio's Client."""

    async def publish(
        self, topic: str, data: bytes, headers: Any = None, *, delay: Any = None, ttl: Any = None
    ) -> int | None: ...

    async def request(
        self, topic: str, data: bytes, *, headers: Any = None, timeout: float = 5.0
    ) -> Any: ...

    def subscribe(self, topics: Any, *, start: StartAt = StartAt.CURRENT) -> Any: ...


class KeyValue:
    """One bucket: the compacted topic `kv.BUCKET`; revisions are the
    offsets of the keys' messages."""

    def __init__(self, client: Client, bucket: str, timeout: float = 5.0) -> None:
        self._client = client
        self.bucket = bucket
        self.topic = bucket_topic(bucket)
        self.timeout = timeout

    async def put(self, key: str, value: bytes) -> int | None:
        """Store `value` under `key`; its revision."""
        return revision_of(await self._client.publish(self.topic, value, put_headers(key)))

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        """`put`, if `key` is still at `revision` (0: if it has none);
        KeyChanged if it moved on."""
        try:
            written = await self._client.publish(self.topic, value, put_headers(key, revision))
        except BrokerError as error:
            raise update_refused(error) from None
        return revision_of(written)

    async def create(self, key: str, value: bytes) -> int | None:
        """`put`, if `key` has no value (KeyChanged if it has)."""
        return await self.update(key, value, 0)

    async def delete(self, key: str) -> int | None:
        """Delete `key` (a message with no payload); its revision."""
        return revision_of(await self._client.publish(self.topic, b"", put_headers(key)))

    async def get(self, key: str) -> Entry | None:
        """The key's latest value (None if it has none), from the broker's index."""
        check_key(key)
        return entry_of_reply(key, (await self._ask("GET", [(KEY, key)])).message)

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys that have a value, sorted (those starting with `prefix`)."""
        return keys_of_reply((await self._ask("KEYS", [("Prefix", prefix)])).message)

    async def history(self, key: str) -> list[Entry]:
        """What the bucket still holds of `key`, oldest first."""
        check_key(key)
        return history_of_reply(key, (await self._ask("HISTORY", [(KEY, key)])).message)

    async def watch(self, prefix: str = "") -> AsyncGenerator[Entry, None]:
        """Each key's current value (those starting with `prefix`), then
        every change (a deletion as an Entry with `deleted`), for ever."""
        seen = WatchFilter(prefix, (await self._ask("REVISIONS", [("Prefix", prefix)])).message)
        async with self._client.subscribe([self.topic], start=StartAt.BEGINNING) as changes:
            async for delivery in changes:
                await delivery.ack()
                entry = seen.entry(delivery.message)
                if entry is not None:
                    yield entry

    async def _ask(self, operation: str, headers: list[tuple[str, str]]) -> Any:  # a Delivery
        return await self._client.request(
            request_topic(operation, self.bucket),
            REQUEST_DATA,
            headers=headers,
            timeout=self.timeout,
        )

"""Topics' logs in Redis Streams, shared by every broker node on one Redis or
one Redis Cluster; the nodes themselves keep no state.

Each topic is a stream with one entry per appended batch (see
redis_functions.lua). A Redis Function, loaded by every node at start,
appends a batch in one round trip: it gives out the topic's next offsets
(dense from 0, so offsets mean the same on every node), applies retention
by count and bytes, and announces the topic's new end on a sharded pub/sub
channel. A node listens, on one connection per Redis primary, to the
channels of the topics its own subscribers read, and reads new ranges with
another function. With `replicas`, an append is followed on the same
connection by `WAIT` and only then announced, so nobody reads (and no
publisher is confirmed) what fewer replicas hold.

redis-py's asyncio client runs this, so the broker must run on Twisted's
asyncio reactor (`twistd -r asyncio broker --store redis://...`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib.resources import files
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from broker.log.batch_cache import BatchCache
from broker.log.interface import (
    OUTCOME_UNKNOWN,
    ISharedGroupLog,
    ISharedStore,
    SharedConsumer,
    StoreError,
    StoreOutcomeUnknown,
    TopicState,
)
from broker.log.positions import PositionStore
from broker.log.redis_groups import GroupedLog, GrowingTopic, RedisGroupCursor, entry_first
from broker.log.redis_settings import (
    RedisStoreSettings,
    TopicKeys,
    pack_batch,
    topic_keys,
    unpack_batch,
)
from broker.wire.headers import (
    Headered,
    expected_revision,
    message_id,
    message_key,
    wrong_revision,
)

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11 and later


def _deadline(seconds: float) -> Any:
    """asyncio.timeout, or on Python 3.10 async_timeout's equivalent."""
    if _timeout is not None:
        return _timeout(seconds)
    from async_timeout import timeout  # type: ignore[import-not-found]  # redis-py's, on 3.10

    return timeout(seconds)


log = Logger()

T = TypeVar("T")

FUNCTIONS = files("broker.log").joinpath("redis_functions.lua").read_text(encoding="utf-8")
APPEND, EXPIRE, PURGE = "broker_append_v1", "broker_expire_v1", "broker_purge_v1"
DELETE, RESET_GROUP = "broker_delete_v1", "broker_reset_group_v1"
APPEND_ONCE = "broker_append_once_v1"
APPEND_KEYED, KEY_REVISIONS = "broker_append_keyed_v1", "broker_key_revisions_v1"
# On the directory's channel, before a name: the topic was deleted (a name
# holds no NUL; without the mark, a message is a new topic's name).
DELETED_MARK = "\x00deleted:"

# One call appends at most this many payload bytes; the rest waits its turn.
MAX_CALL_BYTES = 256 * 1024
# Batches up to this size travel in the announcement of the topic's new end,
# so that nodes following it need not read them.
ANNOUNCED_BATCH_BYTES = 64 * 1024
# A fetch from Redis reads the batch holding the offset asked and at most
# this many after it.
FETCH_BATCHES = 16
# Recent batches a node holds per topic: at most this many bytes, and at most
# CACHE_BYTES over all topics (shared out evenly, never under the minimum).
CACHE_BYTES_PER_TOPIC = 4 * 1024 * 1024
CACHE_BYTES = 256 * 1024 * 1024
MIN_CACHE_BYTES_PER_TOPIC = 256 * 1024
# Redis commands in flight at once, over all topics.
MAX_CONCURRENT_CALLS = 64
# Reconnection backoff after Redis is lost (seconds).
FIRST_RETRY = 0.1
LAST_RETRY = 5.0
# A lost shard is retried at least this often: it is back once its replica
# is promoted, in about the cluster's node timeout.
LAST_SHARD_RETRY = 0.5
# The cluster's topology is read again at most this often (seconds).
TOPOLOGY_REFRESH = 0.2


class _TryAgain(Exception):
    """Redis refused a call for a reason the store has dealt with."""


async def _disconnect(pinned: Redis) -> None:
    """Drop a connection whose replies are not all read: never reused."""
    if pinned.connection is not None:
        await pinned.connection.disconnect(nowait=True)


def layout_refusal(error: redis_errors.ResponseError) -> str | None:
    """What a refusal meaning the cluster's layout changed says (a slot moved,
    the cluster is down, a replica answered a write), or None. redis-py
    parses these into classes of their own whose text drops the code: MOVED
    reads as "16013 127.0.0.1:7001"."""
    if isinstance(error, redis_errors.AskError):  # and MovedError
        kind = "MOVED" if isinstance(error, redis_errors.MovedError) else "ASK"
        return f"{kind}: slot {error.slot_id} is served by {error.host}:{error.port}"
    if isinstance(
        error,
        redis_errors.ClusterDownError | redis_errors.ReadOnlyError | redis_errors.TryAgainError,
    ):
        return f"{type(error).__name__}: {error}"
    text = str(error)
    if text.startswith(("MOVED", "ASK", "CLUSTERDOWN", "READONLY", "TRYAGAIN")):
        return text
    return None


OnceAnswer = tuple[list[Any], tuple[int, int, int, list[bytes]] | None]
"""Each payload's offset (or, for a keyed append, its refusal), and if
some were appended (first offset, end, oldest held, those appended)."""
"""What an append with message ids did: each payload's offset, and, if any
was new, (first offset, next offset, oldest held, the payloads appended)."""


def _has_ids(payloads: Sequence[bytes]) -> bool:
    return any(type(payload) is Headered and message_id(payload) for payload in payloads)


def store_error(failure: Failure, timeout: float) -> StoreError:
    """What to tell a publisher about a failed Redis call."""
    error = failure.value
    if isinstance(error, StoreError):
        return error
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return StoreError(f"could not store message: Redis did not answer within {timeout:g} s")
    if isinstance(error, redis_errors.AuthenticationError):
        return StoreError(f"could not store message: Redis refused the broker: {error}")
    if isinstance(error, redis_errors.ConnectionError | OSError):
        return StoreError("could not store message: Redis is unreachable")
    return StoreError(f"could not store message: Redis: {error}")


@implementer(ISharedGroupLog)
class RedisLog:
    """One topic's log in Redis, as one node sees it.

    Offsets known here (`first_offset`, `next_offset`) are what Redis said
    last: its answers to this node's appends and reads, and the ends other
    nodes announce once this log is watched. Appends are sent one call at a
    time per topic, so a publisher's order holds; what arrives meanwhile
    goes in the next call, as one batch.
    """

    def __init__(self, store: RedisStore, name: str) -> None:
        self.store = store
        self.name = name
        self.keys: TopicKeys = topic_keys(store.settings.prefix, name)
        self.first_offset = 0
        self.next_offset = 0
        self.bytes_held = 0
        self.headered = True
        """(Other nodes may append messages with headers at any time.)"""
        """Not tracked per node: Redis holds the bytes."""
        self.keyed = False
        """A compacted topic's (the broker says): each append checks and notes
        its keys' revisions in Redis, in the call that appends."""
        self.keep_from: int | None = None
        self.opening: Deferred[None] | None = Deferred()
        """Fires once the offsets are known (Redis answered once)."""
        self._grew: Callable[[], None] | None = None
        self._queue: list[tuple[Sequence[bytes], int, Deferred[Any]]] = []
        self._sending = False
        self._flushes: list[Deferred[None]] = []
        self._expiring = False
        self._last_expiry = 0.0
        self._cache = BatchCache(store.cache_bytes_per_topic())
        self._readers: list[tuple[int, int, Deferred[list[bytes]]]] = []
        self._fetching = False

    @property
    def committed_offset(self) -> int:
        return self.next_offset

    # Appending.

    def append(self, payloads: Sequence[bytes], headered: bool = True) -> Deferred[Any]:
        """The first offset, once Redis stored the batch; or, where message
        ids are looked at and some were stored already (by any node), the
        list of each payload's offset (their first copies' for those)."""
        size = sum(map(len, payloads))
        store = self.store
        if store.pending_bytes + size > store.settings.max_pending_bytes and store.pending_bytes:
            raise StoreError(
                "could not store message: Redis is not keeping up "
                f"({store.pending_bytes // 1024} KiB waiting)"
            )
        store.pending_bytes += size
        appended: Deferred[Any] = Deferred()
        self._queue.append((payloads, size, appended))
        if not self._sending:
            self._send()
        return appended

    def _send(self) -> None:
        queue = self._queue
        size = queue[0][1]
        self._sending = True
        keyed = self.keyed
        if keyed or (self.store.settings.dedup_window > 0 and _has_ids(queue[0][0])):
            # Checked and appended in one call of its own: its message ids,
            # and in a compacted topic its keys' revisions.
            batches, self._queue = queue[:1], queue[1:]
            append = self.store.append_keyed if keyed else self.store.append_once
            once = append(self, list(batches[0][0]), size)
            once.addCallbacks(
                self._appended_once,
                self._append_failed,
                callbackArgs=(batches[0][2],),
                errbackArgs=(batches,),
            )
            once.addBoth(self._sent, size)
            return
        taken = 1
        while (
            taken < len(queue)
            and size + queue[taken][1] <= MAX_CALL_BYTES
            and not (self.store.settings.dedup_window > 0 and _has_ids(queue[taken][0]))
        ):
            size += queue[taken][1]
            taken += 1
        batches, self._queue = queue[:taken], queue[taken:]
        payloads = [payload for batch, _, _ in batches for payload in batch]
        call = self.store.append(self, payloads, size)
        call.addCallbacks(
            self._appended, self._append_failed, callbackArgs=(batches,), errbackArgs=(batches,)
        )
        call.addBoth(self._sent, size)

    def _appended(self, ends: tuple[int, int, int], batches: list) -> None:
        first, end, held = ends
        self._stored(first, end, held, [payload for batch, _, _ in batches for payload in batch])
        offset = first
        for batch, _, appended in batches:
            appended.callback(offset)
            offset += len(batch)

    def _appended_once(self, answer: OnceAnswer, appended: Deferred[Any]) -> None:
        offsets, stored = answer
        if stored is None:  # every one was stored already (or refused)
            appended.callback(offsets)
            return
        first, end, held, payloads = stored
        self._stored(first, end, held, payloads)
        consecutive = offsets == list(range(first, first + len(offsets)))
        appended.callback(first if consecutive else offsets)

    def _stored(self, first: int, end: int, held: int, payloads: list[bytes]) -> None:
        self.store.register_topic(self.name)
        self.learn_start(held)
        # Readers on this node take it from here, not from Redis.
        self._cache.add(first, payloads)
        self.learn_end(end)

    def _append_failed(self, failure: Failure, batches: list) -> None:
        error = store_error(failure, self.store.settings.timeout)
        for _, _, appended in batches:
            appended.errback(error)

    def _sent(self, _: object, size: int) -> None:
        self.store.pending_bytes -= size
        self._sending = False
        if self._queue:
            self._send()
        elif self._flushes:
            flushes, self._flushes = self._flushes, []
            for flushed in flushes:
                flushed.callback(None)

    def flush(self) -> Deferred[None]:
        if not self._sending:
            return succeed(None)
        flushed: Deferred[None] = Deferred()
        self._flushes.append(flushed)
        return flushed

    # What this node learns of the log.

    def learn_end(self, end: int) -> None:
        """Redis says the log reaches at least `end`: wake readers if it grew."""
        if end > self.next_offset:
            self.next_offset = end
            if self._grew is not None:
                self._grew()

    def learn_start(self, first: int) -> None:
        """Redis holds nothing before `first` now (retention)."""
        if first > self.first_offset:
            self.first_offset = first
            self._cache.drop_before(first)

    def learn_batch(self, first: int, payloads: list[bytes]) -> None:
        """Another node appended `payloads` at `first`: hold them for readers."""
        self._cache.add(first, payloads)
        self.learn_end(first + len(payloads))

    def learn_state(self, first: int, end: int, known_end: int) -> None:
        """Redis's answer to a state request sent when this node knew the log
        reached `known_end`. An end below that means Redis lost its tail (a
        failover before replication): the offsets will be given out again."""
        if end < known_end:
            log.warn(
                "topic {topic!r}: Redis holds offsets up to {end} only, not {known} "
                "(messages lost before they were replicated): reading on from {end}",
                topic=self.name,
                end=end,
                known=known_end,
            )
            self.next_offset = end
            self._cache.forget_from(end)
        self.learn_start(min(first, end))
        self.learn_end(end)
        opening, self.opening = self.opening, None
        if opening is not None:
            opening.callback(None)

    def watch(self, grew: Callable[[], None]) -> None:
        """Call `grew` whenever any node appends: follow the topic's channel."""
        self._grew = grew
        self.store.follow(self)

    # Reading.

    def read(self, offset: int, max_messages: int) -> list[bytes] | Deferred[list[bytes]]:
        """From the batches held here if they have `offset`, else from Redis:
        one fetch at a time per topic, which every reader waiting shares."""
        cached = self._cache.read(offset, max_messages)
        if cached is not None:
            return cached
        waiting: Deferred[list[bytes]] = Deferred()
        self._readers.append((offset, max_messages, waiting))
        if not self._fetching:
            self._fetch(offset)
        return waiting

    def _fetch(self, offset: int) -> None:
        self._fetching = True
        known = self.next_offset
        fetched = self.store.read(self, offset)
        fetched.addCallbacks(self._fetched, self._fetch_failed, callbackArgs=(offset, known))

    def _fetched(self, answer: list, asked: int, known: int) -> None:
        self._fetching = False
        first, end, entries = answer[0], answer[1], answer[2:]
        for index in range(0, len(entries), 3):
            entry_first = int(entries[index].split(b"-", 1)[0]) - 1
            count = int(entries[index + 1])
            self._cache.add(entry_first, unpack_batch(count, entries[index + 2]), evict=False)
        self.learn_start(min(first, end))
        readers, self._readers = self._readers, []
        for offset, max_messages, waiting in readers:
            cached = self._cache.read(offset, max_messages)
            if cached is not None:
                waiting.callback(cached)
            elif offset == asked or offset < first or offset >= end:
                # Gone (retention, or lost in a failover): the cursor moves on.
                waiting.callback([])
            else:
                self._readers.append((offset, max_messages, waiting))
        self._cache.evict()  # once every reader has what it waited for
        if self._readers and not self._fetching:
            self._fetch(self._readers[0][0])
        if self.store.settings.replicas:
            # The end Redis holds may not be replicated yet: readers wait for
            # its announcement, which comes once it is.
            self.learn_start(min(first, end))
        else:
            self.learn_state(first, end, known)

    def _fetch_failed(self, failure: Failure) -> None:
        self._fetching = False
        readers, self._readers = self._readers, []
        for _, _, waiting in readers:
            waiting.errback(failure)

    # Consumer groups.

    def group_cursor(
        self,
        topic: GrowingTopic,
        group: str,
        start: tuple[str, int],
        wake: Callable[[], None],
        clock: IReactorTime,
    ) -> RedisGroupCursor:
        """The cursor of `group` (a Redis consumer group on this log, shared by
        every node), for this node's members; `start` says where a new group
        begins: ("beginning", 0), ("current", 0) or ("from", offset)."""
        return RedisGroupCursor(topic, self, group, start, wake, clock)

    # Retention and closing.

    def apply_retention(self, now: float) -> int:
        """Drop by age (count and bytes are applied by every append). Redis
        does it; the dropped count shows in `first_offset` later."""
        max_age = self.store.settings.retention.max_age
        if max_age is None or self._expiring or now - self._last_expiry < min(max_age / 10, 10):
            return 0
        self._expiring = True
        self._last_expiry = now
        expiring = self.store.expire(self, max_age)
        expiring.addCallbacks(
            self._expired,
            lambda failure: None,  # tried again at the next sweep
        )
        expiring.addBoth(lambda _: setattr(self, "_expiring", False))
        return 0

    def _expired(self, first: int) -> None:
        self.learn_start(first)

    def purge(self) -> Deferred[int]:
        """Redis drops every batch, for every node; each learns the new start
        as it learns of retention."""
        before = self.first_offset

        def purged(first: int) -> int:
            self.learn_start(first)
            return max(0, first - before)

        return self.store.purge(self).addCallback(purged)

    def offset_at(self, when: float) -> Deferred[int]:
        return self.store.offset_at(self, when)

    def compact(self, dropped: Sequence[int], now: bool = False) -> list[int]:
        """Redis keeps a topic's batches whole: compaction drops nothing here
        (the key index answers the key-value view; retention still applies)."""
        return []

    def close(self) -> None:
        self._cache.clear()
        self.store.forget(self)


class _ShardListener:
    """One connection to one Redis primary that hears the topics' ends
    announced on the channels it is subscribed to."""

    def __init__(self, store: RedisStore, host: str, port: int) -> None:
        self.address = (host, port)
        # No retries inside redis-py: a lost connection ends the listening,
        # and the store reconnects and catches up on what it missed.
        self.client: Redis = Redis(
            host=host, port=port, retry=Retry(NoBackoff(), 0), **store.connection_options()
        )
        self.pubsub = self.client.pubsub()
        self.channels: set[str] = set()
        self.leaving: set[str] = set()
        """Channels unsubscribed from on purpose (not a slot that moved)."""
        self._task: asyncio.Task[None] | None = None
        self._store = store

    async def subscribe(self, channels: Sequence[str]) -> None:
        await self.pubsub.ssubscribe(*channels)
        self.channels.update(channels)
        if self._task is None:
            self._task = asyncio.ensure_future(self._listen())

    async def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.leaving.add(channel)
            await self.pubsub.sunsubscribe(channel)

    async def _listen(self) -> None:
        announced = self._store.announced
        try:
            while True:
                message = await self.pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    announced(message["channel"], message["data"])
                elif kind == "sunsubscribe":
                    channel = _text(message["channel"])
                    if channel in self.leaving:
                        self.leaving.discard(channel)
                        continue
                    raise redis_errors.ConnectionError("a slot moved to another primary")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._task = None
            self._store.shard_lost(self, str(error))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self.pubsub.aclose()
            await self.client.aclose()
        except Exception:
            pass


@implementer(ISharedStore)
class RedisStore:
    """The connection to Redis (or a Redis Cluster) and every topic this
    node has opened in it. Durable consumers live in Redis's own consumer
    groups (see broker.log.redis_groups): the positions here stay in memory."""

    kind = "redis"

    def __init__(self, settings: RedisStoreSettings) -> None:
        self.settings = settings
        self.positions = PositionStore()
        self.pending_bytes = 0
        self._logs: dict[str, RedisLog] = {}
        self._followed: dict[str, RedisLog] = {}  # channel -> log
        self._inboxes: dict[str, Callable[[list[bytes]], None]] = {}
        """Channel -> what hears the replies other nodes send to an inbox here."""
        self._listeners: dict[tuple[str, int], _ShardListener] = {}
        self._calls = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self._closed = False
        self._unheard: dict[str, RedisLog | None] = {}
        """Channels to subscribe to again (a topic's, or None: the directory's)
        since the listener of their shard was lost."""
        self._down: set[tuple[str, int]] = set()
        """Primaries whose listener failed and is not back yet."""
        self._recovering = False
        self._primaries: dict[tuple[str, int], Redis] = {}
        """Clients of each cluster primary, for appends (FCALL and WAIT on one connection)."""
        self._topology_read: asyncio.Future[None] | None = None
        self._last_refresh = -TOPOLOGY_REFRESH
        prefix = settings.prefix
        self._directory = f"{prefix}:{{directory}}:topics"
        self._directory_channel = f"{prefix}:{{directory}}:created"
        self.topic_names: set[str] = set()
        """Every topic in Redis, whichever node made it (the directory)."""
        self.on_new_topic: Callable[[str], None] = lambda name: None
        """Told of each topic another node makes (patterns here may match it)."""
        self.on_deleted_topic: Callable[[str], None] = lambda name: None
        """Told of each topic an operator deleted, through any node."""
        self.ready: Deferred[None] = Deferred()
        """Fires once Redis answered and the functions are loaded."""
        target = settings.target
        self.client: Redis | RedisCluster
        if target.cluster:
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
                **self.connection_options(),
            )
        else:
            host, port = target.seeds[0]
            # No retries inside redis-py: a call fails at once, and the store
            # says so (and reconnects with its own backoff).
            self.client = Redis(
                host=host,
                port=port,
                db=target.db,
                retry=Retry(NoBackoff(), 0),
                **self.connection_options(),
            )

    def status(self) -> dict[str, Any]:
        """What monitoring shows of the store."""
        return {
            "kind": "redis",
            "where": self.settings.target.describe(),
            "node_name": self.settings.node_name,
            "connected": self.connected,
            "shards_reconnecting": len(self._down),
            "replicas": self.settings.replicas,
            "pending_bytes": self.pending_bytes,
            "followed_topics": len(self._followed),
            "directory_topics": len(self.topic_names),
            "cached_bytes": sum(log._cache.bytes for log in self._logs.values()),
        }

    def held_topics(self) -> Iterable[str]:
        return ()  # opened when asked for: the directory says which exist

    def shared_topics(self) -> Iterable[str]:
        return self.topic_names

    def follow_new_topics(self, told: Callable[[str], None]) -> None:
        self.on_new_topic = told

    def follow_deleted_topics(self, told: Callable[[str], None]) -> None:
        self.on_deleted_topic = told

    def waiting_for(self) -> str | None:
        return None if self.connected else "Redis"

    def sync(self) -> None:
        pass  # Redis persists as it is configured to

    @property
    def connected(self) -> bool:
        """Whether Redis answered and nothing since says it is gone."""
        if not self.ready.called:
            return False
        if not isinstance(self.client, RedisCluster):
            return not self._down
        # One shard down is not the store down: the other shards serve on.
        return len(self._down) < max(len(self.client.get_primaries()), 1)

    def connection_options(self) -> dict[str, Any]:
        target = self.settings.target
        options: dict[str, Any] = {
            "username": target.username,
            "password": target.password,
            "socket_timeout": None,
            "socket_connect_timeout": self.settings.timeout,
        }
        if target.tls:
            options["ssl"] = True
            if target.ca_file is not None:
                options["ssl_ca_certs"] = target.ca_file
        return options

    # Starting and stopping.

    def start(self) -> Deferred[None]:
        """Connect and load the functions, retrying until Redis answers."""
        self._background(self._start())
        return self.ready

    async def _start(self) -> None:
        delay = FIRST_RETRY
        warned = False
        while not self._closed:
            try:
                await self._load_functions()
            except Exception as error:
                if not warned:
                    log.warn(
                        "cannot reach Redis at {where}: {error}; retrying",
                        where=self.settings.target.describe(),
                        error=error,
                    )
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)
                continue
            log.info("connected to Redis at {where}", where=self.settings.target.describe())
            self.ready.callback(None)
            try:
                await self._follow_directory()
            except Exception as error:
                log.warn("cannot follow the topic directory yet: {error}", error=error)
                self._hear_again(self._directory_channel, None)
            return

    async def _load_functions(self) -> None:
        async with self._calls:
            await asyncio.wait_for(
                self.client.function_load(FUNCTIONS, replace=True), self.settings.timeout
            )

    def close(self) -> Deferred[None]:
        self._closed = True
        return self._deferred(self._close())

    async def _close(self) -> None:
        for listener in list(self._listeners.values()):
            await listener.close()
        self._listeners.clear()
        for primary in self._primaries.values():
            await primary.aclose()
        await self.client.aclose()

    # Topics.

    def open(self, name: str) -> RedisLog:
        """The topic's log; its `opening` fires once Redis told its offsets."""
        topic_log = self._logs.get(name)
        if topic_log is None:
            topic_log = self._logs[name] = RedisLog(self, name)
            self._background(self._open(topic_log))
        return topic_log

    async def _open(self, topic_log: RedisLog) -> None:
        delay = FIRST_RETRY
        while topic_log.opening is not None and not self._closed:
            try:
                await self.ready_now()
                known = topic_log.next_offset
                first, end = await self._state(topic_log.keys)
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)
                continue
            topic_log.learn_state(int(first), int(end), known)

    async def ready_now(self) -> None:
        if not self.ready.called:
            await self.ready.asFuture(asyncio.get_event_loop())

    def cache_bytes_per_topic(self) -> int:
        shared = CACHE_BYTES // (len(self._logs) + 1)
        return max(MIN_CACHE_BYTES_PER_TOPIC, min(CACHE_BYTES_PER_TOPIC, shared))

    def forget(self, topic_log: RedisLog) -> None:
        self._logs.pop(topic_log.name, None)
        self._followed.pop(topic_log.keys.channel, None)

    # Calls, each bounded in time and in how many run at once.

    async def _call(self, call: Awaitable[T]) -> T:
        async with self._calls:
            if _timeout is None:  # Python 3.10
                return await asyncio.wait_for(call, self.settings.timeout)
            # asyncio.timeout runs the call in this task: no task of its own,
            # no extra turns of the loop (it is on the path of every publish).
            async with _timeout(self.settings.timeout):
                return await call

    def _deferred(self, call: Awaitable[T]) -> Deferred[T]:
        return Deferred.fromFuture(asyncio.ensure_future(call))

    def _background(self, call: Awaitable[Any]) -> None:
        self._deferred(call).addErrback(lambda failure: log.failure("Redis store", failure))

    def append(
        self, topic_log: RedisLog, payloads: list[bytes], size: int
    ) -> Deferred[tuple[int, int, int]]:
        return self._deferred(self._append(topic_log.keys, payloads, size))

    async def _append(
        self, keys: TopicKeys, payloads: list[bytes], size: int
    ) -> tuple[int, int, int]:
        settings = self.settings
        retention = settings.retention
        replicas = settings.replicas
        arguments = (
            "" if replicas else keys.channel,
            len(payloads),
            size,
            pack_batch(payloads),
            retention.max_messages or 0,
            retention.max_bytes or 0,
            0 if replicas else ANNOUNCED_BATCH_BYTES,
        )
        async with self._calls:
            first, end, held = await self._append_trying_again(keys, APPEND, arguments)
        if replicas:
            announcement = arguments[3] if len(arguments[3]) <= ANNOUNCED_BATCH_BYTES else None
            self._background(self._announce(keys, first, len(payloads), announcement))
        return first, end, held

    async def _append_trying_again(
        self, keys: TopicKeys, function: str, arguments: tuple[Any, ...]
    ) -> list[int]:
        for last_try in (False, True):
            try:
                return await self._append_on_primary(keys, function, arguments)
            except _TryAgain as again:
                if last_try:
                    raise StoreError(f"could not store message: Redis: {again}") from None
        raise AssertionError("unreachable")

    def append_once(
        self, topic_log: RedisLog, payloads: list[bytes], size: int
    ) -> Deferred[OnceAnswer]:
        """Append the payloads whose message ids Redis has not stored lately
        (for any node), in one call that checks and appends; each payload's
        offset, its first copy's for the others."""
        return self._deferred(self._append_checked(topic_log.keys, payloads, keyed=False))

    def append_keyed(
        self, topic_log: RedisLog, payloads: list[bytes], size: int
    ) -> Deferred[OnceAnswer]:
        """Append to a compacted topic, in one call that checks each
        publish's Expected-Revision against its key's revision (as every
        node's appends left it) and its message id (within the dedup
        window), then appends and notes the keys' new revisions: each
        payload's offset, its refusal, or its first copy's offset."""
        return self._deferred(self._append_checked(topic_log.keys, payloads, keyed=True))

    async def _append_checked(
        self, keys: TopicKeys, payloads: list[bytes], keyed: bool
    ) -> OnceAnswer:
        """`append_once` or `append_keyed`: the function checks, and if some
        publishes may not be appended (an id stored already, a revision
        moved on) appends nothing and says which; they are answered so and
        the rest sent again, until a call appends."""
        settings = self.settings
        replicas = settings.replicas
        window = int(settings.dedup_window * 1000)
        outcomes: list[int | str | None] = [None] * len(payloads)
        remaining = list(range(len(payloads)))
        async with self._calls:
            while True:
                batch = [payloads[index] for index in remaining]
                packed = pack_batch(batch)
                arguments: tuple[Any, ...] = (
                    "" if replicas else keys.channel,
                    len(batch),
                    sum(map(len, batch)),
                    packed,
                    settings.retention.max_messages or 0,
                    settings.retention.max_bytes or 0,
                    0 if replicas else ANNOUNCED_BATCH_BYTES,
                    window,
                    settings.dedup_max_ids,
                )
                if keyed:
                    described: list[bytes | str] = []
                    for payload in batch:
                        described += (
                            (message_id(payload) or b"") if window else b"",
                            message_key(payload) or "",
                            expected_revision(payload),
                            "0" if payload else "1",
                        )
                    arguments += (len(batch), *described)
                else:
                    arguments += tuple(message_id(payload) or b"" for payload in batch)
                function = APPEND_KEYED if keyed else APPEND_ONCE
                answer = await self._append_trying_again(keys, function, arguments)
                if answer[0] >= 0:
                    break
                for at in range(1, len(answer), 2):
                    index = remaining[answer[at]]
                    if answer[0] == -1:  # stored already, there
                        outcomes[index] = answer[at + 1]
                    else:
                        key = message_key(payloads[index]) or ""
                        revision = answer[at + 1]
                        outcomes[index] = wrong_revision(key, revision if revision >= 0 else None)
                remaining = [index for index in remaining if outcomes[index] is None]
                if not remaining:
                    return outcomes, None
        first, end, held = answer
        for position, index in enumerate(remaining):
            outcomes[index] = first + position
        if replicas:
            announcement = packed if len(packed) <= ANNOUNCED_BATCH_BYTES else None
            self._background(self._announce(keys, first, len(batch), announcement))
        return outcomes, (first, end, held, batch)

    def key_revisions(self, name: str, key: str) -> Deferred[tuple[int, dict[str, str]]]:
        return self._deferred(self._key_revisions(topic_keys(self.settings.prefix, name), key))

    async def _key_revisions(self, keys: TopicKeys, key: str) -> tuple[int, dict[str, str]]:
        answer = await self._call(
            self.client.fcall(KEY_REVISIONS, 2, keys.meta, keys.key_revisions, key)
        )
        following = int(answer[0])
        if key:
            found = answer[1]
            return following, ({key: found.decode("ascii")} if found else {})
        pairs = answer[1:]
        return following, {
            pairs[at].decode("utf-8"): pairs[at + 1].decode("ascii")
            for at in range(0, len(pairs), 2)
        }

    async def _append_on_primary(
        self, keys: TopicKeys, function: str, arguments: tuple[Any, ...]
    ) -> list[int]:
        """FCALL, then (with replicas) WAIT, on one connection to the primary
        that holds the topic: WAIT counts that connection's writes, so it is
        sent only once the append was stored, and a refusal (NOREPLICAS,
        MOVED, READONLY...) fails at once. A failure once the append may have
        been stored says so (StoreOutcomeUnknown)."""
        settings = self.settings
        replicas = settings.replicas
        primary = self._primary_client(keys.log)
        pinned = primary.client()  # one connection of the primary's pool
        phase = "connecting"
        try:
            async with _deadline(settings.timeout):
                await pinned.initialize()
                phase = "appending"
                answer = await pinned.fcall(function, 6, *keys.of_functions, *arguments)
                if replicas and int(answer[0]) != -1:  # (-1: nothing was appended)
                    phase = "waiting"
                    # WAIT gives up in half the call's time, so that its answer
                    # (how many replicas have it) is what the publisher hears.
                    wait_ms = max(int(settings.timeout * 500), 1)
                    acknowledged = await pinned.execute_command("WAIT", replicas, wait_ms)
        except redis_errors.ResponseError as error:
            if phase == "waiting":  # e.g. the primary became a replica meanwhile
                await _disconnect(pinned)
                raise StoreOutcomeUnknown(
                    f"{OUTCOME_UNKNOWN}: stored on a Redis primary, then Redis: {error}"
                ) from None
            # Refused before anything was written: nothing was stored.
            await self._refused_by_redis(error, primary)
            raise
        except (asyncio.TimeoutError, TimeoutError, redis_errors.RedisError, OSError) as error:
            await _disconnect(pinned)
            if phase == "connecting":
                self.topology_changed()
                raise
            cause = (
                f"Redis did not answer within {settings.timeout:g} s"
                if isinstance(error, asyncio.TimeoutError | TimeoutError)
                else f"Redis: {error or type(error).__name__}"
            )
            raise StoreOutcomeUnknown(
                f"{OUTCOME_UNKNOWN}: the message may have been stored: {cause}"
            ) from None
        finally:
            await pinned.aclose()
        if replicas and int(answer[0]) != -1 and int(acknowledged) < replicas:
            # Not announced: no node reads what a failover may take back. A
            # later append that is replicated announces it (replication keeps
            # order), and it may be delivered then: its fate is not known.
            raise StoreOutcomeUnknown(
                f"{OUTCOME_UNKNOWN}: stored on the Redis primary, but {acknowledged} of "
                f"{replicas} Redis replica(s) acknowledged it within {settings.timeout / 2:g} s"
            )
        return [int(value) for value in answer]

    async def _refused_by_redis(self, error: redis_errors.ResponseError, primary: Redis) -> None:
        """Redis refused a call before running it: learn why, so that the
        next call can succeed (a moved slot, functions a restart lost)."""
        moved = layout_refusal(error)
        if moved is not None:
            # The next try goes where the cluster says now, not where it was.
            await asyncio.shield(self.topology_changed())
            raise _TryAgain(moved)
        if "function not found" in str(error).lower():
            # On this primary only, and outside the bound on calls (this
            # call holds a place in it already).
            load = primary.function_load(FUNCTIONS, replace=True)
            await asyncio.wait_for(load, self.settings.timeout)
            raise _TryAgain(str(error))

    def _primary_client(self, key: str) -> Redis:
        """A client of the primary that holds `key` now (as last heard)."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return client
        node = client.get_node_from_key(key)
        if node is None:
            self.topology_changed()
            raise StoreError("could not store message: no Redis primary serves the topic now")
        address = (str(node.host), int(node.port))
        primary = self._primaries.get(address)
        if primary is None:
            primary = self._primaries[address] = Redis(
                host=address[0],
                port=address[1],
                retry=Retry(NoBackoff(), 0),
                **self.connection_options(),
            )
        return primary

    def topology_changed(self) -> asyncio.Future[None]:
        """A primary is gone or a slot moved: ask the cluster who serves what
        (one request at a time, at most every TOPOLOGY_REFRESH seconds).
        Returns the request in progress, for a caller that waits for it."""
        reading = self._topology_read
        if reading is not None and not reading.done():
            return reading
        loop = asyncio.get_event_loop()
        now = loop.time()
        if (
            not isinstance(self.client, RedisCluster)
            or self._closed
            or now - self._last_refresh < TOPOLOGY_REFRESH
        ):
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        self._last_refresh = now
        reading = self._topology_read = asyncio.ensure_future(self._read_topology())
        return reading

    async def _read_topology(self) -> None:
        assert isinstance(self.client, RedisCluster)
        try:
            await asyncio.wait_for(self.client.nodes_manager.initialize(), self.settings.timeout)
        except Exception as error:
            log.debug("Redis Cluster topology not read: {error}", error=error)

    async def _announce(self, keys: TopicKeys, first: int, count: int, batch: bytes | None) -> None:
        """What the append function does itself without replicas: tell the
        nodes following the topic of its new end, or of a small batch."""
        message = b"%d:%d:%s" % (first, count, batch) if batch is not None else first + count
        await self._call(self.client.spublish(keys.channel, message))

    def read(self, topic_log: RedisLog, offset: int) -> Deferred[list]:
        """[first offset held, next offset, then (entry ID, count, batch) for
        the batch holding `offset` and those after it]."""
        return self._deferred(self._read(topic_log.keys, offset))

    async def _read(self, keys: TopicKeys, offset: int) -> list:
        # Plain commands in one round trip: the batch holding `offset` (its
        # ID is at most offset + 1) and the batches after it. Payloads are
        # never copied through Lua.
        pipeline = self.client.pipeline(transaction=False)
        pipeline.hmget(keys.meta, "first", "next")
        pipeline.xrevrange(keys.log, offset + 1, "-", count=1)
        pipeline.xrange(keys.log, f"({offset + 1}", "+", count=FETCH_BATCHES)
        (first, end), holding, after = await self._call(pipeline.execute())
        answer: list = [int(first or 0), int(end or 0)]
        for entry_id, fields in holding + after:
            answer += (entry_id, fields[b"n"], fields[b"b"])
        return answer

    def purge(self, topic_log: RedisLog) -> Deferred[int]:
        keys = topic_log.keys
        call = self.client.fcall(PURGE, 4, keys.log, keys.meta, keys.times, keys.key_revisions)
        return self._deferred(self._call(call)).addCallback(int)

    # What an operator does, for every node.

    def delete(self, name: str) -> Deferred[None]:
        """Delete the topic's batches and consumer groups, take it out of the
        directory, and tell every node (see the delete function: offsets go
        on from where they were if the name is used again)."""
        self.topic_names.discard(name)
        return self._answer(self._delete(name))

    async def _delete(self, name: str) -> None:
        keys = topic_keys(self.settings.prefix, name)
        await self._call(self.client.fcall(DELETE, 6, *keys.of_functions))
        await self._call(self.client.srem(self._directory, name))
        await self._call(self.client.spublish(self._directory_channel, DELETED_MARK + name))

    def topic_states(self, names: Iterable[str]) -> Deferred[dict[str, TopicState]]:
        return self._answer(self._topic_states(list(names)))

    async def _topic_states(self, names: list[str]) -> dict[str, TopicState]:
        if not names:
            return {}
        pipeline = self.client.pipeline(transaction=False)
        for name in names:
            pipeline.hmget(topic_keys(self.settings.prefix, name).meta, "first", "next")
        replies = await self._call(pipeline.execute())
        return {
            name: TopicState(int(first or 0), int(end))
            for name, (first, end) in zip(names, replies, strict=True)
            if end is not None
        }

    def shared_consumers(self, name: str) -> Deferred[list[SharedConsumer]]:
        return self._answer(self._shared_consumers(name))

    async def _shared_consumers(self, name: str) -> list[SharedConsumer]:
        keys = topic_keys(self.settings.prefix, name)
        try:
            groups: Any = await self._call(self.client.xinfo_groups(keys.log))
        except redis_errors.ResponseError:  # no log: no groups
            return []
        _, end = await self._state(keys)
        # A reading node touches its groups every claim_idle / 2 seconds.
        recent = self.settings.claim_idle * 1000
        found = []
        for info in groups:
            group = _text(info["name"])
            members: Any = await self._call(self.client.xinfo_consumers(keys.log, group))
            live = tuple(
                sorted(
                    _text(member["name"])
                    for member in members
                    if _text(member["name"]) != self.settings.node_name
                    and int(member["idle"]) < recent
                )
            )
            position = await self._group_position(keys, group, info, end)
            found.append(SharedConsumer(group, position, len(members), live, int(info["pending"])))
        return found

    async def _group_position(self, keys: TopicKeys, group: str, info: Any, end: int) -> int:
        """Where the group's next reader starts: its first batch claimed and
        not done, else the batch after the last it claimed."""
        if int(info["pending"]):
            summary: Any = await self._call(self.client.xpending(keys.log, group))
            if summary["min"] is not None:  # else all were acked since
                return entry_first(_bytes(summary["min"]))
        last = _text(info["last-delivered-id"])
        after: Any = await self._call(self.client.xrange(keys.log, f"({last}", "+", count=1))
        return entry_first(_bytes(after[0][0])) if after else end

    def reset_shared_consumer(self, name: str, group: str, offset: int) -> Deferred[int | None]:
        keys = topic_keys(self.settings.prefix, name)
        call = self.client.fcall(RESET_GROUP, 2, keys.log, keys.meta, group, offset)
        return self._answer(self._call(call)).addCallback(
            lambda first: None if int(first) < 0 else int(first)
        )

    def delete_shared_consumer(self, name: str, group: str) -> Deferred[bool]:
        return self._answer(self._delete_shared_consumer(name, group))

    async def _delete_shared_consumer(self, name: str, group: str) -> bool:
        keys = topic_keys(self.settings.prefix, name)
        try:
            return bool(await self._call(self.client.xgroup_destroy(keys.log, group)))
        except redis_errors.ResponseError:  # no log: no group
            return False

    def _answer(self, call: Awaitable[T]) -> Deferred[T]:
        """An operator's call: its failure a StoreError that says what Redis said."""

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreError):
                return failure
            said = failure.getErrorMessage() or repr(failure.value)
            return Failure(StoreError(f"Redis: {said}"))

        return self._deferred(call).addErrback(failed)

    def offset_at(self, topic_log: RedisLog, when: float) -> Deferred[int]:
        """From the topic's time marks (at most one a second, each the first
        offset appended then): the offset after the marks around `when`."""
        return self._answer(self._offset_at(topic_log.keys, int(when * 1000)))

    async def _offset_at(self, keys: TopicKeys, when_ms: int) -> int:
        pipeline = self.client.pipeline(transaction=False)
        pipeline.xrevrange(keys.times, when_ms - 1, "-", count=1)
        pipeline.xrange(keys.times, when_ms, "+", count=1)
        pipeline.hmget(keys.meta, "first", "next")
        before, after, (first, end) = await self._call(pipeline.execute())
        first, end = int(first or 0), int(end or 0)
        if before:
            marked = int(before[0][0].split(b"-", 1)[0])
            if when_ms < marked + 1000:
                # Appends within a second of a mark make none: those after
                # `when` may be anywhere after the mark's offset.
                return max(first, int(before[0][1][b"o"]))
        # No append in the second before `when` went unmarked: the next mark's
        # offset is the first appended at or after it.
        return max(first, int(after[0][1][b"o"])) if after else end

    def expire(self, topic_log: RedisLog, max_age: float) -> Deferred[int]:
        keys = topic_log.keys
        call = self.client.fcall(EXPIRE, 3, keys.log, keys.meta, keys.times, int(max_age * 1000))
        return self._deferred(self._call(call)).addCallback(int)

    # Consumer groups: Redis Streams' own, one consumer per node.

    def read_group(
        self, topic_log: GroupedLog, group: str, from_id: bytes, count: int, start: tuple[str, int]
    ) -> Deferred[list]:
        """Batches of `group` for this node: its own pending ones after
        `from_id`, or new ones (`>`); the group is made if it does not exist."""
        return self._deferred(self._read_group(topic_log.keys, group, from_id, count, start))

    async def _read_group(
        self, keys: TopicKeys, group: str, from_id: bytes, count: int, start: tuple[str, int]
    ) -> list:
        consumer = self.settings.node_name
        read = self.client.xreadgroup
        try:
            reply = await self._call(read(group, consumer, {keys.log: from_id}, count=count))
        except redis_errors.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._create_group(keys, group, start)
            reply = await self._call(read(group, consumer, {keys.log: from_id}, count=count))
        return _stream_entries(reply)

    async def _create_group(self, keys: TopicKeys, group: str, start: tuple[str, int]) -> None:
        where, offset = start
        if where == "beginning":
            start_id = "0"
        elif where == "current":
            start_id = "$"
        else:  # from an offset: from the batch that holds it
            holding: Any = await self._call(
                self.client.xrevrange(keys.log, offset + 1, "-", count=1)
            )
            first = int(holding[0][0].split(b"-", 1)[0]) - 1 if holding else offset
            start_id = f"{first}-0" if first > 0 else "0"
        try:
            await self._call(self.client.xgroup_create(keys.log, group, start_id, mkstream=True))
        except redis_errors.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # another node made it first
                raise

    def ack_group(self, topic_log: GroupedLog, group: str, entry_ids: list[bytes]) -> None:
        """Every message of these batches is done (fire and forget: if it is
        lost, the batch is delivered again, at least once)."""
        self._background(self._call(self.client.xack(topic_log.keys.log, group, *entry_ids)))

    def claim_group(
        self, topic_log: GroupedLog, group: str, held: list[bytes], count: int
    ) -> Deferred[list]:
        """Keep this node's claims fresh, and take over batches another node
        left unacknowledged for claim_idle seconds."""
        return self._deferred(self._claim_group(topic_log.keys, group, held, count))

    async def _claim_group(
        self, keys: TopicKeys, group: str, held: list[bytes], count: int
    ) -> list:
        consumer = self.settings.node_name
        if held:
            ids: list[Any] = list(held)
            await self._call(self.client.xclaim(keys.log, group, consumer, 0, ids, justid=True))
        idle = int(self.settings.claim_idle * 1000)
        reply = await self._call(
            self.client.xautoclaim(keys.log, group, consumer, idle, "0-0", count=count)
        )
        return list(reply[1]) if reply else []

    # Following other nodes' appends.

    def follow(self, topic_log: RedisLog) -> None:
        channel = topic_log.keys.channel
        if channel not in self._followed:
            self._followed[channel] = topic_log
            self._background(self._follow([topic_log]))

    async def _follow(self, logs: list[RedisLog]) -> None:
        try:
            await self.ready_now()
            await self._subscribe(logs)
        except Exception as error:
            log.debug("following {n} topic(s): {error}", n=len(logs), error=error)
            for topic_log in logs:
                self._hear_again(topic_log.keys.channel, topic_log)

    async def _subscribe(self, logs: list[RedisLog]) -> None:
        by_listener: dict[tuple[str, int], list[str]] = {}
        for topic_log in logs:
            channel = topic_log.keys.channel
            by_listener.setdefault(self._owner(channel), []).append(channel)
        for address, channels in by_listener.items():
            listener = self._listener(address)
            for channel in channels:  # one slot a command, as a cluster needs
                await asyncio.wait_for(listener.subscribe([channel]), self.settings.timeout)
        # What was appended before the subscriptions took.
        await asyncio.gather(*(self._refresh(topic_log) for topic_log in logs))

    def _listener(self, address: tuple[str, int]) -> _ShardListener:
        listener = self._listeners.get(address)
        if listener is None:
            listener = self._listeners[address] = _ShardListener(self, *address)
        return listener

    def _owner(self, channel: str) -> tuple[str, int]:
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(channel)
            if node is None:
                raise redis_errors.ConnectionError(f"no Redis primary holds {channel!r} now")
            return str(node.host), int(node.port)
        return self.settings.target.seeds[0]

    async def _refresh(self, topic_log: RedisLog) -> None:
        known = topic_log.next_offset
        first, end = await self._state(topic_log.keys)
        topic_log.learn_state(first, end, known)

    async def _state(self, keys: TopicKeys) -> tuple[int, int]:
        """The offsets of the oldest message held and of the next to come."""
        first, end = await self._call(self.client.hmget(keys.meta, "first", "next"))
        return int(first or 0), int(end or 0)

    # Inboxes: the replies to a requester connected to another node.

    def _inbox_channel(self, name: str) -> str:
        return f"{self.settings.prefix}:{{i:{name}}}:inbox"

    def follow_inbox(self, name: str, told: Callable[[list[bytes]], None]) -> Deferred[None]:
        channel = self._inbox_channel(name)
        self._inboxes[channel] = told
        return self._deferred(self._follow_inbox(channel))

    async def _follow_inbox(self, channel: str) -> None:
        try:
            await self.ready_now()
            listener = self._listener(self._owner(channel))
            await asyncio.wait_for(listener.subscribe([channel]), self.settings.timeout)
        except Exception as error:
            log.debug("following an inbox: {error}", error=error)
            self._hear_again(channel, None)

    def unfollow_inbox(self, name: str) -> None:
        channel = self._inbox_channel(name)
        if self._inboxes.pop(channel, None) is None:
            return
        self._unheard.pop(channel, None)
        for listener in list(self._listeners.values()):
            if channel in listener.channels:
                self._background(listener.unsubscribe(channel))

    def send_to_inbox(self, name: str, payloads: list[bytes]) -> Deferred[int]:
        message = b"%d:" % len(payloads) + pack_batch(payloads)
        return self._deferred(
            self._call(self.client.spublish(self._inbox_channel(name), message))
        ).addCallback(int)

    # The directory of topics, for patterns that match topics other nodes made.

    def register_topic(self, name: str) -> None:
        """This node appended to `name`: make sure the directory has it."""
        if name not in self.topic_names:
            self.topic_names.add(name)
            self._background(self._register_topic(name))

    async def _register_topic(self, name: str) -> None:
        if await self._call(self.client.sadd(self._directory, name)):
            await self._call(self.client.spublish(self._directory_channel, name))

    async def _follow_directory(self) -> None:
        listener = self._listener(self._owner(self._directory_channel))
        await asyncio.wait_for(listener.subscribe([self._directory_channel]), self.settings.timeout)
        names: Any = await self._call(self.client.smembers(self._directory))
        for name in names:
            self._discovered(name.decode("utf-8", "surrogateescape"))

    def _discovered(self, name: str) -> None:
        if name not in self.topic_names:
            self.topic_names.add(name)
            self.on_new_topic(name)

    def _deleted(self, name: str) -> None:
        self.topic_names.discard(name)
        self.on_deleted_topic(name)
        topic_log = self._logs.get(name)
        if topic_log is not None:  # still read here: its batches are gone
            topic_log._cache.clear()
            self._background(self._refresh(topic_log))

    def announced(self, channel: bytes, message: bytes) -> None:
        """A topic grew: `message` is its new end, or "first:count:batch"
        (or, on the directory's channel, a new topic's name)."""
        name = channel.decode("utf-8", "surrogateescape")
        topic_log = self._followed.get(name)
        if topic_log is None:
            inbox = self._inboxes.get(name)
            if inbox is not None:
                count, batch = message.split(b":", 1)
                inbox(unpack_batch(int(count), batch))
            elif name == self._directory_channel:
                told = message.decode("utf-8", "surrogateescape")
                if told.startswith(DELETED_MARK):
                    self._deleted(told[len(DELETED_MARK) :])
                else:
                    self._discovered(told)
            return
        if b":" not in message:
            topic_log.learn_end(int(message))
            return
        first, count, batch = message.split(b":", 2)
        topic_log.learn_batch(int(first), unpack_batch(int(count), batch))

    def shard_lost(self, listener: _ShardListener, why: str) -> None:
        """The listener of one primary failed: only its channels are
        subscribed again (on whichever primary holds them then), with
        backoff; the other shards' listeners go on."""
        if self._closed:
            return
        address = listener.address
        if self._listeners.get(address) is listener:
            del self._listeners[address]
        self._background(listener.close())
        self._down.add(address)
        log.warn(
            "lost Redis at {host}:{port} ({why}); following its {n} channel(s) again",
            host=address[0],
            port=address[1],
            why=why,
            n=len(listener.channels),
        )
        for channel in listener.channels:
            if channel == self._directory_channel or channel in self._inboxes:
                self._hear_again(channel, None)
            elif channel in self._followed:
                self._hear_again(channel, self._followed[channel])
        self.topology_changed()

    def _hear_again(self, channel: str, topic_log: RedisLog | None) -> None:
        self._unheard[channel] = topic_log
        if not self._recovering and not self._closed:
            self._recovering = True
            self._background(self._recover())

    async def _recover(self) -> None:
        """Subscribe the unheard channels again, shard by shard, until all
        are back; each shard's channels as soon as their primary answers."""
        delay = FIRST_RETRY
        try:
            while self._unheard and not self._closed:
                await asyncio.shield(self.topology_changed())
                failed = await self._subscribe_unheard()
                self._down = failed
                if not self._unheard:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_SHARD_RETRY)
        finally:
            self._recovering = False
        if not self._closed:
            self._down.clear()
            log.info("Redis reconnected: following {n} topic(s)", n=len(self._followed))

    async def _subscribe_unheard(self) -> set[tuple[str, int]]:
        """One round: the primaries that failed this time."""
        by_owner: dict[tuple[str, int], list[str]] = {}
        for channel in list(self._unheard):
            try:
                owner = self._owner(channel)
            except redis_errors.RedisError:
                continue
            by_owner.setdefault(owner, []).append(channel)
        failed: set[tuple[str, int]] = set()
        for owner, channels in by_owner.items():
            try:
                listener = self._listener(owner)
                for channel in channels:  # one slot a command, as a cluster needs
                    await asyncio.wait_for(listener.subscribe([channel]), self.settings.timeout)
                for channel in channels:
                    topic_log = self._unheard[channel]
                    if channel == self._directory_channel:
                        await self._follow_directory()
                    elif topic_log is not None and self._followed.get(channel) is topic_log:
                        await self._refresh(topic_log)  # what it missed meanwhile
                    del self._unheard[channel]
            except Exception as error:
                log.debug("Redis at {owner} still unreachable: {error}", owner=owner, error=error)
                failed.add(owner)
                lost = self._listeners.pop(owner, None)
                if lost is not None:
                    await lost.close()
        return failed


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _stream_entries(reply: Any) -> list:
    """The (entry ID, fields) of an XREADGROUP reply of one stream, in
    RESP2's or RESP3's shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        return list(entries[0]) if entries and isinstance(entries[0], list) else list(entries)
    return list(reply[0][1])

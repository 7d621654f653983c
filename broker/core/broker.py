"""One broker, whatever its front doors: its settings and clock, the topic
registry (each topic with its replay log), consumer groups and durable
positions, the delivery timers every subscriber shares, dead letters, the
input budget, who may connect, and its counters.

A front door (broker.server's TCP protocol today) holds one Broker and
calls it; the Broker never sees a frame or a socket, so another door
(MQTT, WebSocket) can share it with the first."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.core.dead_letters import DeadLetterPolicy, encode_dead_letter
from broker.core.dedup import Deduplicated, DedupWindow, deduplicate, recall
from broker.core.delivery import Delivery, DeliveryTimers
from broker.core.groups import GroupRegistry
from broker.core.inboxes import INBOX_IDLE, INBOX_RETENTION, no_responders_reply
from broker.core.input_budget import InputBudget
from broker.core.keys import Compaction, KeyIndex, merged, refusals
from broker.core.kv import answer as answer_kv
from broker.core.kv import asked_key, is_kv_request, offsets_to_read, parse_request
from broker.core.settings import BrokerSettings
from broker.core.stats import BrokerStats
from broker.core.topics import TooManyTopics, Topic, TopicRegistry
from broker.log import IMessageLog, IMessageStore, ISharedStore, MemoryLog, MemoryStore, StoreError
from broker.log.interface import SharedConsumer
from broker.names import is_inbox
from broker.security.auth import Authenticator
from broker.security.permissions import Rules
from broker.security.users import ANONYMOUS, User, Users
from broker.wire import ERR_PERMISSION_DENIED, total_size
from broker.wire.headers import reply_to

log = Logger()

COMPACT_AFTER = 1000
"""Superseded messages in a compacted topic that start its compaction."""
COMPACT_EVERY = 60.0
"""Seconds after which a compacted topic with anything to drop is compacted."""


class Reader(Protocol):
    """A consumer, as the broker counts who reads a topic (core.Consumer)."""

    def reads(self, topic: str) -> bool:
        """Whether it is subscribed to `topic` (by name or by a pattern)."""


@dataclass(slots=True)
class Appended:
    """What became of one batch a door asked the broker to append: stored
    from offset `first` (an int now, or a Deferred of the offset, or of the
    Error text if the store refuses it later), or refused (`refusal`, the
    Error that says why, nothing stored). Where some publishes were stored
    already (a message id seen before), `first` lists each publish's offset
    instead (the first copy's for those), or is a Deferred of that list.
    `committed`, when asked for, fires once the batch is as safe as the
    store makes it (fsynced)."""

    first: int | list[int | str] | Deferred[Any] | None = None
    refusal: str | None = None
    committed: Deferred[None] | None = None
    size: int = 0
    """The payloads' bytes, if stored."""


def _remembering(
    outcome: int | str | list[int], window: DedupWindow, batch: Deduplicated, clock: IReactorTime
) -> int | str | list[int]:
    """Remember a batch's ids once a networked store said where it went:
    from a first offset, or at the offsets it lists (it found some ids
    stored already, by another node)."""
    if isinstance(outcome, int):
        window.remember(batch.stored_ids(outcome), clock.seconds())
    elif isinstance(outcome, list):
        window.remember([(mid, outcome[index]) for mid, index in batch.ids], clock.seconds())
    return outcome


def _offsets_of(outcome: int | str | list[Any], batch: Deduplicated) -> list[int | str] | str:
    """Each publish's offset, from where the store put the fresh ones."""
    if isinstance(outcome, list):
        return [outcome[slot] if slot >= 0 else -1 - slot for slot in batch.slots]
    return batch.offsets(outcome) if isinstance(outcome, int) else outcome


def _read_offsets(
    topic_log: IMessageLog, offsets: Iterable[int]
) -> Deferred[dict[int, bytes | None]]:
    """The messages a log holds at `offsets` (None for those it does not),
    once read: at once from a local log, a round trip from a networked one."""
    values: dict[int, bytes | None] = {}
    pending: list[Deferred[Any]] = []

    def got(held: list[bytes], offset: int) -> None:
        values[offset] = held[0] if held else None

    for offset in offsets:
        if offset < topic_log.first_offset:
            continue
        held = topic_log.read(offset, 1)
        if isinstance(held, list):
            got(held, offset)
        else:
            pending.append(held.addCallback(got, offset))
    if not pending:
        return succeed(values)
    return gatherResults(pending, consumeErrors=True).addCallback(lambda _: values)


class Broker:
    """The state every connection of one broker shares, and what it does
    with no connection in mind (dead-lettering a message given up)."""

    def __init__(
        self,
        settings: BrokerSettings,
        clock: IReactorTime,
        store: IMessageStore | None = None,
        users: Users | Authenticator | None = None,
        stats: BrokerStats | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        seconds = clock.seconds
        if store is None:
            store = MemoryStore(settings.retention, clock=seconds)
        self.store = store
        """Where topics and durable positions are kept (memory, files, Redis)."""
        self._shared = ISharedStore.providedBy(store)
        self.inboxes: set[str] = set()
        """The inboxes held here (request and reply), kept in memory only."""
        self.registry = TopicRegistry(
            self._open_log, settings.max_topics, clock=seconds, shared_names=store.shared_topics
        )
        self.compaction = Compaction(settings.compact)
        """Which topics are compacted (the latest message of each key kept)."""
        self.registry.is_compacted = self._is_compacted
        self.key_indexes: dict[str, KeyIndex] = {}
        """The keys of each compacted topic used since the start."""
        self._compacting: set[str] = set()
        self._compacted_at: dict[str, float] = {}
        self.timers = DeliveryTimers(clock, settings.delivery)
        self.dead_letters = DeadLetterPolicy(settings.dead_letter_topic)
        self.groups = GroupRegistry(clock, settings.delivery.ack_delay, store.positions)
        self.stats = stats or BrokerStats()
        self.started = seconds()
        self.input_budget = InputBudget(settings.max_pending_input)
        if isinstance(users, Users):
            users = Authenticator(users, clock, identity=settings.tls_identity)
        self.authenticator: Authenticator | None = users
        """Who connections are and what they may do; None: no users file, all open."""
        self.connections: set[Any] = set()
        """Every client connection, through any door, as the monitor lists
        them (broker.monitoring.view.MonitoredConnection); each door adds
        and removes its own."""
        self.consumers: set[Reader] = set()
        """Every consumer, through any door (they add and remove themselves)."""
        self.user_connections: Counter[str] = Counter()
        """Connections per user, over every front door (for max_connections):
        counted by `admit` and `release`."""
        self.dedup_windows: dict[str, DedupWindow] = {}
        """Per topic, the message ids it stored lately (exactly-once publishing)."""

    def start(self) -> None:
        """Open the store: reopen (and recover) the topics it holds, and hear
        of those other nodes make. Raises StoreError if it cannot be used."""
        store = self.store
        store.start()
        self.registry.reopen(store.held_topics())
        store.follow_new_topics(self.registry.discover)
        if ISharedStore.providedBy(store):
            store.follow_deleted_topics(self._deleted_elsewhere)

    def admit(self, user: User) -> int | None:
        """Count a connection of `user` (signed in, through any door); None
        if taken, or the limit it would pass (its max_connections, or for
        anonymous --max-anonymous-connections), nothing counted."""
        counts = self.user_connections
        limit = user.max_connections
        if limit is None and user.name == ANONYMOUS:
            limit = self.settings.max_anonymous_connections
        if limit is not None and counts[user.name] >= limit:
            return limit
        counts[user.name] += 1
        return None

    def release(self, user: User) -> None:
        """A connection `admit` counted is gone."""
        counts = self.user_connections
        counts[user.name] -= 1
        if not counts[user.name]:
            del counts[user.name]

    def _is_compacted(self, name: str) -> bool:
        return not is_inbox(name) and self.compaction.applies_to(name)

    def _open_log(self, name: str) -> IMessageLog:
        """The log of a topic made here: the store's, or, for an inbox, one
        in memory that the store never sees (other nodes send it replies
        through the store, if it is shared)."""
        if not is_inbox(name):
            return self.store.open(name)
        self.inboxes.add(name)
        inbox = MemoryLog(INBOX_RETENTION, clock=self.clock.seconds)
        if ISharedStore.providedBy(self.store):
            # Its subscriber waits until replies from other nodes are heard.
            heard: Deferred[None] = self.store.follow_inbox(
                name, lambda payloads: self._sent_from_elsewhere(name, payloads)
            )
            inbox.opening = heard
            heard.addBoth(lambda _: setattr(inbox, "opening", None))
        return inbox

    def _sent_from_elsewhere(self, inbox: str, payloads: list[bytes]) -> None:
        if inbox in self.registry:
            self.registry.publish(inbox, payloads)

    def readers_of(self, topic: str) -> int:
        """Subscriptions and consumer groups with members that read `topic` here."""
        subscribed = sum(1 for consumer in self.consumers if consumer.reads(topic))
        if topic not in self.registry and len(self.registry.patterns):
            # A pattern takes the topic once it is made.
            subscribed += sum(1 for _ in self.registry.patterns.match(topic))
        return subscribed + sum(1 for group in self.groups.of_topic(topic) if group.members)

    def forget_topic(self, name: str) -> None:
        """Close topic `name` here with the groups held for it (an operator
        deleted it): nothing may read it any more."""
        groups = self.groups
        for group in groups.of_topic(name):  # none reads: each only holds work to redo
            groups.drop(name, group.name, group.durable)
        self.registry.remove(name)
        self.dedup_windows.pop(name, None)
        self.key_indexes.pop(name, None)
        if name in self.inboxes:
            self.inboxes.discard(name)
            if ISharedStore.providedBy(self.store):
                self.store.unfollow_inbox(name)

    def _deleted_elsewhere(self, name: str) -> None:
        """An operator deleted `name` through another node: close it here
        too, unless something here reads it (it then reads on from the
        topic's end, where offsets go on)."""
        if name in self.registry and not self.readers_of(name):
            self.forget_topic(name)

    def publish_refusal(self, topic: str, may_publish: Rules | None) -> str | None:
        """Why a publisher whose user has the rights `may_publish` (None: no
        users file) may not publish to `topic`, as the Error that says so;
        None if it may. Every front door asks this before it appends."""
        if self.dead_letters.is_dead_letter_topic(topic):
            # Only the broker writes dead letters: none may be forged.
            return (
                f"{ERR_PERMISSION_DENIED}: publish to {topic!r}: "
                "only the broker writes dead-letter topics"
            )
        if may_publish is not None and not may_publish.permits(topic) and not is_inbox(topic):
            # (A reply: whoever knows an inbox's name may answer it.)
            return f"{ERR_PERMISSION_DENIED}: publish to {topic!r}"
        return None

    def append(
        self,
        topic: str,
        payloads: list[bytes],
        may_publish: Rules | None,
        publisher: str,
        commit: bool = False,
        headered: bool = False,
        deduplicate: bool = True,
        keys_checked: bool = False,
    ) -> Appended:
        """Append a batch to `topic` for a publisher (named `publisher` in
        the log) whose user has the rights `may_publish` (None: no users
        file); with `commit`, say when it is committed. With `headered`
        (some payloads may carry headers), a publish whose message id the
        topic stored lately is not stored again (unless not `deduplicate`),
        and a request to a topic nobody reads is answered at once. Counted in the stats whatever
        becomes of it."""
        stats = self.stats
        refusal = self.publish_refusal(topic, may_publish)
        if refusal is not None:
            stats.refusals[ERR_PERMISSION_DENIED] += len(payloads)
            return Appended(refusal=refusal)
        if self._shared and is_inbox(topic) and topic not in self.registry:
            return self._send_to_inbox_elsewhere(topic, payloads)
        if headered and deduplicate:  # (once: not again from below)
            if is_kv_request(topic):
                return self._answer_kv(topic, payloads)
            if not is_inbox(topic):
                self._answer_unheard_requests(topic, payloads)
        try:
            stored = self.registry.get(topic)
            if stored.compacted and not keys_checked:
                return self._append_keyed(
                    topic, stored, payloads, may_publish, publisher, commit, headered
                )
            if headered and deduplicate and self.settings.dedup_window > 0:
                return self._append_once(topic, stored, payloads, publisher, commit)
            first = stored.append(payloads, headered)
        except (TooManyTopics, StoreError) as error:
            self._store_refused(topic, len(payloads), error, publisher)
            return Appended(refusal=str(error))
        size = total_size(payloads)
        stats.published_messages += len(payloads)
        stats.published_bytes += size
        # (isinstance of int, not of Deferred: an ABC's check costs more.)
        if not isinstance(first, int):  # a networked store answers later
            later: Deferred[int | str] = first.addErrback(
                self._stored_later_failed, topic, len(payloads), publisher
            )
            return Appended(later, None, None, size)
        committed = None
        if commit and stored.log.committed_offset < first + len(payloads):
            committed = stored.log.flush()
        return Appended(first, None, committed, size)

    # Keys and compacted topics (broker.core.keys), the key-value view (.kv).

    def _append_keyed(
        self,
        topic: str,
        stored: Topic,
        payloads: list[bytes],
        may_publish: Rules | None,
        publisher: str,
        commit: bool,
        headered: bool,
    ) -> Appended:
        """`append` to a compacted topic: a publish without a key, or whose
        Expected-Revision its key has moved on from, is refused on its own;
        the key index learns where the others went. A shared store keeps
        the keys' revisions itself (every node appends): it checks them."""
        index = None if self._shared else self.key_index(topic, stored)
        refused, keys = refusals(payloads, index)
        accepted = payloads
        if refused is not None:
            taken = [problem is None for problem in refused]
            accepted = [payload for payload, ok in zip(payloads, taken, strict=True) if ok]
            keys = [key for key, ok in zip(keys, taken, strict=True) if ok]
        if refused is not None:
            self.stats.refusals["compacted topic"] += len(payloads) - len(accepted)
        if not accepted:
            assert refused is not None
            return Appended([problem or "" for problem in refused], None, None, 0)
        appended = self.append(
            topic, accepted, may_publish, publisher, commit, headered, keys_checked=True
        )
        first = appended.first
        if isinstance(first, Deferred):
            if index is not None:
                first.addCallback(self._indexed, index, accepted, keys)
            if refused is not None:
                first.addCallback(merged, refused)
            return appended
        if first is None or appended.refusal is not None or index is None:
            return appended
        self._indexed(first, index, accepted, keys)
        if refused is None:
            return appended
        return Appended(merged(first, refused), None, appended.committed, appended.size)

    def _indexed(
        self,
        outcome: int | str | list[Any],
        index: KeyIndex,
        payloads: list[bytes],
        keys: list[str | None],
    ) -> int | str | list[Any]:
        """Tell a topic's key index where a batch went (as the store says)."""
        now = self.clock.seconds()
        if isinstance(outcome, int):
            index.add(payloads, outcome, now, keys)
        elif isinstance(outcome, list):
            for payload, key, offset in zip(payloads, keys, outcome, strict=True):
                if isinstance(offset, int):
                    index.add([payload], offset, now, [key])
        return outcome

    def key_index(self, topic: str, stored: Topic) -> KeyIndex:
        """The key index of a compacted topic, made at its first use since
        the start from what a local log holds (a shared store keeps every
        node's in the store: see `_append_keyed` and `_answer_kv`)."""
        index = self.key_indexes.get(topic)
        if index is None:
            index = self.key_indexes[topic] = KeyIndex()
            topic_log = stored.log
            if not self._shared:
                now = self.clock.seconds()
                offset = topic_log.first_offset
                end = topic_log.committed_offset
                while offset < end:
                    held = topic_log.read(offset, min(4096, end - offset))
                    if not isinstance(held, list) or not held:
                        break
                    index.add(held, offset, now)
                    offset += len(held)
            index.next_offset = max(index.next_offset, topic_log.next_offset)
        return index

    def _answer_kv(self, topic: str, payloads: list[bytes]) -> Appended:
        """Requests of the key-value view (`$KV.<OP>.<BUCKET>`), answered
        from the bucket's key index into each request's inbox; stored nowhere."""
        parsed = parse_request(topic)
        if parsed is None:
            return Appended(refusal=f"no such key-value request: {topic!r}")
        operation, bucket = parsed
        try:
            stored = self.registry.get(bucket)
        except TooManyTopics as error:
            return Appended(refusal=str(error))
        for request in payloads:
            inbox = reply_to(request)
            if inbox is None:
                continue
            state = self._key_view(bucket, stored, asked_key(operation, request))
            state.addCallback(self._read_for_kv, operation, request, stored.log)
            state.addCallbacks(
                lambda reply, inbox=inbox: self.append(
                    inbox, [reply], None, "the broker", headered=True, deduplicate=False
                ),
                lambda failure, topic=topic: log.failure(
                    "answering {topic!r} failed", failure, topic=topic
                ),
            )
        return Appended(0, None, None, 0)

    def _key_view(self, name: str, stored: Topic, key: str = "") -> Deferred[KeyIndex]:
        """A compacted topic's keys: its key index here, or, on a shared
        store, what the store holds of every node's appends (`key`'s alone,
        if given)."""
        store = self.store
        if ISharedStore.providedBy(store):
            state: Deferred[Any] = store.key_revisions(name, key)
            return state.addCallback(lambda state: KeyIndex.from_revisions(*state))
        return succeed(self.key_index(name, stored))

    def _read_for_kv(
        self, index: KeyIndex, operation: str, request: bytes, topic_log: IMessageLog
    ) -> Deferred[bytes]:
        """The reply to a key-value request, once the messages it needs are
        read (a networked log's reads take a round trip)."""
        offsets = offsets_to_read(operation, request, index)
        return _read_offsets(topic_log, offsets).addCallback(
            lambda values: answer_kv(operation, request, index, values.get)
        )

    def latest_values(self, name: str, key: str = "") -> Deferred[dict[str, bytes]]:
        """The latest value of each key of the compacted topic `name` (of
        `key` alone, if given), deletions left out; for doors that keep
        state in one (MQTT's retained messages and sessions)."""
        stored = self.registry.get(name)

        def read(index: KeyIndex) -> Deferred[dict[str, bytes]]:
            latest = {
                wanted: offset
                for wanted in ([key] if key else list(index.keys))
                if (offset := index.latest(wanted)) is not None
            }

            def named(values: dict[int, bytes | None]) -> dict[str, bytes]:
                return {
                    wanted: value
                    for wanted, offset in latest.items()
                    if (value := values.get(offset))
                }

            return _read_offsets(stored.log, latest.values()).addCallback(named)

        return self._key_view(name, stored, key).addCallback(read)

    def compact_topics(self, force: bool = False) -> None:
        """Compact the topics whose key index says enough is superseded (or,
        with `force`, any that has something to drop), one run at a time
        each, in the background (a timer calls this every second)."""
        now = self.clock.seconds()
        for name, index in list(self.key_indexes.items()):
            if name in self._compacting or name not in self.registry:
                continue
            last = self._compacted_at.get(name, self.started)
            due = index.superseded >= COMPACT_AFTER or (
                now - last >= COMPACT_EVERY and (index.superseded or index.has_tombstones())
            )
            if not (due or force):
                continue
            topic = self.registry.get(name)
            dropped = index.droppable(
                now, self.settings.tombstone_retention, topic.log.committed_offset
            )
            self._compacted_at[name] = now
            if not dropped:
                continue
            done = topic.log.compact(dropped, force)
            if isinstance(done, list):
                self._compacted(done, index)
                continue
            self._compacting.add(name)
            done.addCallbacks(
                self._compacted,
                lambda failure, name=name: log.failure(
                    "compacting {topic!r} failed", failure, topic=name
                ),
                callbackArgs=(index,),
            )
            done.addBoth(lambda _, name=name: self._compacting.discard(name))

    def _compacted(self, dropped: list[int], index: KeyIndex) -> None:
        index.forget(dropped)
        self.stats.compacted += len(dropped)

    def _answer_unheard_requests(self, topic: str, payloads: list[bytes]) -> None:
        """Answer at once each request of a batch to `topic` if nobody reads
        it, here or (on a shared store) through a consumer group of another
        node: `Status: 503` in its Reply-To inbox. The request is stored
        all the same, as any publish is."""
        requests = [(payload, inbox) for payload in payloads if (inbox := reply_to(payload))]
        if not requests or self.readers_of(topic):
            return
        store = self.store
        if not ISharedStore.providedBy(store):
            self._no_responders(requests)
            return

        def answer(consumers: list[SharedConsumer]) -> None:
            if not any(consumer.live_nodes for consumer in consumers):
                self._no_responders(requests)

        store.shared_consumers(topic).addCallbacks(answer, lambda _: None)

    def _no_responders(self, requests: list[tuple[bytes, str]]) -> None:
        for request, inbox in requests:
            self.stats.no_responders += 1
            self.append(inbox, [no_responders_reply(request)], None, "the broker", headered=True)

    def _send_to_inbox_elsewhere(self, inbox: str, payloads: list[bytes]) -> Appended:
        """A reply to an inbox another node holds: sent there through the
        shared store, stored nowhere. Confirmed at offset 0 once a node
        heard it, refused if none holds the inbox."""
        assert ISharedStore.providedBy(self.store)

        def heard(nodes: int) -> int | str:
            return 0 if nodes else f"no such inbox: {inbox!r} (its requester is gone)"

        sent: Deferred[Any] = self.store.send_to_inbox(inbox, payloads)
        sent.addCallbacks(heard, lambda failure: f"could not send the reply: {failure.value}")
        return Appended(sent, None, None, total_size(payloads))

    def sweep_inboxes(self) -> None:
        """Drop the inboxes nobody has waited on or written to for a while
        (their requesters are gone)."""
        now = self.clock.seconds()
        for name in list(self.inboxes):
            topic = self.registry.get(name) if name in self.registry else None
            if topic is None:
                self.inboxes.discard(name)
                continue
            last = topic.appended_at(topic.log.next_offset - 1)
            idle = now - (last if last is not None else self.started)
            if not topic.waiting and idle > INBOX_IDLE and not self.readers_of(name):
                self.forget_topic(name)

    def _append_once(
        self, topic: str, stored: Topic, payloads: list[bytes], publisher: str, commit: bool
    ) -> Appended:
        """`append` of a batch whose publishes may carry message ids: those
        the topic stored lately are answered with the first copy's offset."""
        window = self._dedup_window(topic, stored)
        now = self.clock.seconds()
        window.expire(now)
        batch = deduplicate(payloads, window)
        if not batch.duplicates:
            appended = self.append(
                topic, payloads, None, publisher, commit, True, deduplicate=False, keys_checked=True
            )
            first = appended.first
            if isinstance(first, int):
                window.remember(batch.stored_ids(first), now)
            elif isinstance(first, Deferred):
                first.addCallback(_remembering, window, batch, self.clock)
            return appended
        self.stats.duplicates += batch.duplicates
        log_ = stored.log
        if not batch.fresh:
            offsets = batch.offsets(0)
            committed = None
            if commit and log_.committed_offset <= max(offsets):
                committed = log_.flush()
            return Appended(offsets, None, committed, 0)
        appended = self.append(
            topic, batch.fresh, None, publisher, commit, True, deduplicate=False, keys_checked=True
        )
        first = appended.first
        if not isinstance(first, int | Deferred):  # refused
            return appended
        if isinstance(first, int):
            window.remember(batch.stored_ids(first), now)
            offsets = batch.offsets(first)
            committed = appended.committed
            if commit and committed is None and log_.committed_offset <= max(offsets):
                committed = log_.flush()
            return Appended(offsets, None, committed, appended.size)
        later: Deferred[Any] = first.addCallback(_remembering, window, batch, self.clock)
        return Appended(later.addCallback(_offsets_of, batch), None, None, appended.size)

    def _dedup_window(self, topic: str, stored: Topic) -> DedupWindow:
        """The topic's window of message ids; made at its first publish with
        one since the start, from the ids its log's tail holds."""
        window = self.dedup_windows.get(topic)
        if window is None:
            settings = self.settings
            window = DedupWindow(settings.dedup_window, settings.dedup_max_ids)
            self.dedup_windows[topic] = window
            self._recall_ids(window, stored)
        return window

    def _recall_ids(self, window: DedupWindow, stored: Topic) -> None:
        """Read the ids of the messages a local log stored within the window
        (at most the last `max_ids` messages); a networked log keeps its own."""
        topic_log = stored.log
        now = self.clock.seconds()
        start = topic_log.offset_at(now - window.span)
        if not isinstance(start, int):
            return
        end = topic_log.committed_offset
        offset = max(start, topic_log.first_offset, end - window.max_ids)
        while offset < end:
            payloads = topic_log.read(offset, min(4096, end - offset))
            if not isinstance(payloads, list) or not payloads:
                return
            recall(window, payloads, offset, now)
            offset += len(payloads)

    def expire_message_ids(self) -> None:
        """Forget the message ids older than the window, in every topic (an
        idle topic's ids too)."""
        now = self.clock.seconds()
        for window in self.dedup_windows.values():
            window.expire(now)

    def _store_refused(self, topic: str, count: int, error: Exception, publisher: str) -> None:
        """Count and log a batch the store refused."""
        self.stats.refusals[str(error).partition(":")[0]] += count
        log.warn(
            "{peer}: {n} message(s) to {topic!r} refused: {error}",
            peer=publisher,
            n=count,
            topic=topic,
            error=error,
        )

    def _stored_later_failed(self, failure: Failure, topic: str, count: int, publisher: str) -> str:
        error = (
            failure.value
            if isinstance(failure.value, StoreError)
            else StoreError(str(failure.value))
        )
        self._store_refused(topic, count, error, publisher)
        return str(error)

    def dead_letter(self, delivery: Delivery, reason: str, subscriber: str) -> str | None:
        """Append a given-up message to its dead-letter topic; return that
        topic, or None if it was dropped."""
        topic = self.dead_letters.topic_for(delivery.topic.name)
        if topic is None:
            return None
        letter = encode_dead_letter(
            {
                "topic": delivery.topic.name,
                "offset": delivery.offset,
                "deliveries": delivery.attempts,
                "reason": reason,
                "subscriber": subscriber,
                "time": self.clock.seconds(),
            },
            delivery.payload,
        )
        try:
            stored = self.registry.publish(topic, [letter])
        except (TooManyTopics, StoreError) as error:
            log.error("could not dead-letter to {topic!r}: {error}", topic=topic, error=error)
            return None
        if isinstance(stored, Deferred):  # a networked store answers later
            stored.addErrback(
                lambda failure: log.error(
                    "could not dead-letter to {topic!r}: {error}", topic=topic, error=failure.value
                )
            )
        self.stats.dead_letters += 1
        return topic

    def stop(self) -> None:
        """Stop its timers (the connections are the front doors' to close)."""
        self.timers.stop()

    def close(self) -> Deferred[None]:
        """Close every topic's log, then the store (once no connection is left)."""
        self.registry.close()
        return self.store.close()

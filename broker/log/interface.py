"""The interface every message store implements, and the retention it obeys."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class Retention:
    """How much of a topic a log keeps; None means no limit of that kind."""

    max_messages: int | None = None
    max_bytes: int | None = None
    """Payload bytes (the memory store) or segment bytes (the file store)."""
    max_age: float | None = None
    """Seconds."""


class FsyncPolicy(Enum):
    """When appended records are forced to disk."""

    ALWAYS = "always"
    """Before anyone can read them: a message is never delivered (or confirmed)
    before it is on disk. One fsync covers every append made meanwhile."""
    INTERVAL = "interval"
    """Every `fsync_interval` seconds; readers see records at once."""
    NEVER = "never"
    """Left to the operating system."""


class StoreError(Exception):
    """A store could not take or give what was asked (disk full, file gone...)."""


OUTCOME_UNKNOWN = "outcome unknown"


class StoreOutcomeUnknown(StoreError):
    """A networked store may have kept what it was asked to (the connection
    went mid-call, or too few replicas acknowledged it): unlike a plain
    StoreError, the messages may yet be delivered. Its text starts with
    OUTCOME_UNKNOWN, so that a client can tell it from a clean refusal."""


class IMessageLog(Interface):
    """An append-only log of one topic's messages, addressed by dense offsets.

    A local store gives out offsets synchronously in `append`, so that order
    is fixed the moment a publish is accepted; a networked store, where
    another broker node may append to the same topic, answers a Deferred of
    the first offset instead, and keeps each node's order. Readers see messages only up to
    `committed_offset`: a durable store can hold that back until its messages
    are on disk, so that nobody depends on a message a crash could take back.
    `read` may answer with a Deferred, so that a networked store fits too.
    """

    first_offset = Attribute("Offset of the oldest message still held.")
    next_offset = Attribute("Offset the next appended message will get.")
    committed_offset = Attribute("Readers may read below this offset.")
    bytes_held = Attribute("Bytes the log holds now (payloads, or files on disk).")
    headered = Attribute(
        "Whether a message it holds may carry headers (false: a reader need not look)."
    )
    keyed = Attribute(
        "Whether it is a compacted topic's log (set by the broker): a networked log then "
        "checks and notes its keys' revisions in the store with each append, so that "
        "every node sees them; a local log ignores it (the broker keeps a key index)."
    )
    keep_from = Attribute(
        "None, or an offset: retention by message count keeps what is at or after it "
        "(what durable consumers have not acked); limits of bytes and age still apply."
    )
    opening = Attribute(
        "None once the offsets above are known; until then a Deferred that fires "
        "when they are (a networked store's first answer)."
    )

    def append(payloads, headered=True):
        """Append a batch of payloads (a sequence of bytes, in order); with
        `headered` false the caller knows none carries headers, and the log
        need not look.

        Return the offset of the first, or a Deferred of it. Raise (or fail
        with) StoreError if they could not be stored; then none of them were.
        """

    def read(offset, max_messages):
        """Up to `max_messages` payloads from `offset`, a list or a Deferred of one.

        `first_offset <= offset < committed_offset`. An entry is None where a
        record is corrupt: it keeps its offset but is never served.
        """

    def watch(grew):
        """Call `grew()` whenever the log grows by appends made elsewhere
        (other broker nodes on a shared store); a local store never calls it."""

    def flush():
        """A Deferred that fires once everything appended so far is durable and
        committed."""

    def apply_retention(now):
        """Drop what the retention policy no longer keeps, as of `now` (seconds
        since the epoch); return how many messages were dropped."""

    def offset_at(when):
        """The offset of the first message held that was appended at or
        after `when` (seconds since the epoch), or next_offset if none was:
        an int, or a Deferred of one. A store that keeps times coarsely
        answers an earlier offset, never a later one."""

    def compact(dropped, now=False):
        """Drop the messages at the offsets `dropped` (ascending; chosen by
        compaction, broker.core.keys), or those of them it can now (with
        `now`, an operator's request: a log that leaves the file it appends
        to alone closes it first): their offsets stay, read as gaps (None).
        Return the offsets it dropped, or a Deferred of them. A store that
        cannot drop single messages (Redis) drops none."""

    def purge():
        """Drop every message held (an operator's purge): `first_offset`
        becomes `next_offset`, and offsets go on from there, never reused.
        Return how many were dropped, or a Deferred of it."""

    def close():
        """Make everything durable that can be, and release what is held open."""


class ISharedGroupLog(IMessageLog):
    """A log whose store keeps consumer groups itself, for every node that
    shares it (Redis's consumer groups): the broker's groups then read
    through the store's cursor instead of keeping a position of their own."""

    def group_cursor(topic, group, start, wake, clock):
        """The cursor of consumer group `group` of this log for this node's
        members: `take()` gives (offset, payload) or None, and more (see
        broker.log.redis_groups.RedisGroupCursor). `start` says where a new
        group begins: ("beginning", 0), ("current", 0) or ("from", offset);
        `wake()` is called when messages come."""


class IMessageStore(Interface):
    """Where one broker keeps its topics and its durable consumers'
    positions: in memory, in files, or in Redis, shared by the broker's
    nodes. A broker is built with one (broker.log.make_store) and asks
    nothing else of it; nothing outside broker.log knows which it is."""

    kind = Attribute("'memory', 'file' or 'redis': what reports call it.")
    positions = Attribute(
        "The PositionStore (broker.log.positions) of durable consumers' positions: "
        "in a file beside the topics, or in memory (Redis keeps its groups' own)."
    )

    def start():
        """Open: find the topics held (files), or begin connecting (Redis,
        retrying in the background). Raise StoreError if it cannot be used.
        Called once twistd has dropped its privileges, never when made."""

    def open(name):
        """The IMessageLog of topic `name`, created (or recovered) if need be."""

    def held_topics():
        """The names of the topics it held at start, to reopen (and recover) then."""

    def shared_topics():
        """The names of topics other nodes made in a shared store, opened here
        when something asks for one; none for a store of one node."""

    def follow_new_topics(told):
        """Have `told(name)` called for each topic another node makes."""

    def waiting_for():
        """None while it serves; else what it waits for (said by /healthz)."""

    def sync():
        """Make what was written durable now (the fsync interval's tick)."""

    def status():
        """What monitoring shows of it, as JSON values ("kind" first)."""

    def delete(name):
        """Remove topic `name`'s messages for good (an operator's delete),
        once its log is closed: None, or a Deferred that fires once done.
        Raise StoreError if the store cannot."""

    def close():
        """Stop, once the logs are closed: a Deferred that fires once it has."""


@dataclass(frozen=True)
class TopicState:
    """A topic's offsets as a shared store holds them (for a topic this
    node has not opened)."""

    first: int
    next: int


@dataclass(frozen=True)
class SharedConsumer:
    """A consumer group as a shared store keeps it, for every node.
    `group` is the store's name for it (broker.core.groups.shared_group_name)."""

    group: str
    position: int
    """The offset its next member starts at (its first message not done)."""
    nodes: int
    """Nodes that have read it, ever."""
    live_nodes: tuple[str, ...]
    """Other nodes that read it now (they touched it within the claim interval)."""
    pending: int
    """Batches claimed and not yet done."""


class ISharedStore(IMessageStore):
    """A store several nodes share (Redis): what an operator's actions ask
    of it beyond the topics this node holds open."""

    def topic_states(names):
        """A Deferred of {name: TopicState} for those of `names` it holds."""

    def shared_consumers(name):
        """A Deferred of the SharedConsumers of topic `name`."""

    def reset_shared_consumer(name, group, offset):
        """Move consumer group `group` of topic `name` to the batch holding
        `offset`, forgetting what it had claimed: a Deferred of the offset it
        starts at now, or of None if there is no such group."""

    def delete_shared_consumer(name, group):
        """Forget consumer group `group` of topic `name`: a Deferred of
        whether there was one."""

    def follow_deleted_topics(told):
        """Have `told(name)` called for each topic an operator deleted,
        through any node."""

    def follow_inbox(name, told):
        """Have `told(payloads)` called with what other nodes send to inbox
        `name` (request and reply: its requester is connected here); a
        Deferred that fires once they are heard (it does not fail: a
        follow that failed is tried again)."""

    def unfollow_inbox(name):
        """Stop hearing what is sent to inbox `name`."""

    def key_revisions(name, key):
        """A Deferred: (the topic's next offset, {key: its revisions}) as the
        store holds them for a compacted topic: `key`'s alone, or every
        key's if `key` is empty. Revisions are the offsets of the key's
        latest messages, oldest first, comma-separated, a deletion's marked
        "d" ("7,12,19d")."""

    def send_to_inbox(name, payloads):
        """Send `payloads` to inbox `name` on whichever node holds it: a
        Deferred of how many nodes heard them (0: none holds it)."""


class OneNodeStore:
    """What the stores of one node (memory, files) answer alike: no other
    node makes topics in them, and they never wait for anything."""

    def shared_topics(self) -> Iterable[str]:
        return ()

    def follow_new_topics(self, told: Callable[[str], None]) -> None:
        pass

    def waiting_for(self) -> str | None:
        return None

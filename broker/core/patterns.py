"""One subscriber's pattern subscriptions: which topics each pattern brought
into its window, and the new topics it is told of.

A pattern subscribes the subscriber to every matching topic that exists
(from the start asked: Beginning or Current) and to every matching topic
created later (from its first message). A topic already in the window is
left where it is. A topic stays subscribed while a pattern or a subscribe
by name holds it. A dead-letter topic is taken by a pattern only when the
pattern names its last token (`orders.*.dead-letter`), so that `orders.>`
does not feed a subscriber the messages it gave up on.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.dead_letters import DeadLetterPolicy
from broker.core.delivery import DeliveryWindow
from broker.core.topics import Topic, TopicRegistry
from broker.names import is_inbox
from broker.subjects import PatternIndex
from broker.wire import StartAt

# Joins the window to a consumer group of a topic, from a start.
Joiner = Callable[[Topic, StartAt], None]


class _Holder:
    """What the registry's index holds for one pattern of one subscriber: the
    name it was subscribed by (the pattern, or `$share/GROUP/pattern`), the
    pattern, and how to join a matching topic's group, for a group."""

    __slots__ = ("join", "name", "owner", "pattern")

    def __init__(
        self, owner: PatternSubscriptions, name: str, pattern: str, join: Joiner | None
    ) -> None:
        self.owner = owner
        self.name = name
        self.pattern = pattern
        self.join = join

    def topic_created(self, topic: Topic) -> None:
        self.owner.matched(self, topic, StartAt.BEGINNING)


class PatternSubscriptions:
    """The patterns of one window, and the topics they hold in it."""

    def __init__(
        self,
        registry: TopicRegistry,
        window: DeliveryWindow,
        dead_letters: DeadLetterPolicy,
        may_read: Callable[[str], bool],
    ) -> None:
        self._registry = registry
        self._window = window
        self._dead_letters = dead_letters
        self.may_read = may_read
        """Whether the user may read a topic (its subscribe permissions)."""
        self._holders: dict[str, _Holder] = {}
        self._held: dict[str, set[str]] = {}  # topic -> the patterns holding it
        self.by_name: set[str] = set()
        """Topics subscribed by name (they stay when their patterns go)."""

    def __contains__(self, name: str) -> bool:
        return name in self._holders

    def add(
        self,
        patterns: list[str],
        start: StartAt,
        names: list[str] | None = None,
        join: Joiner | None = None,
    ) -> int:
        """Subscribe to checked patterns (named `names`, if not by themselves;
        joining each matching topic's group through `join`, for a group);
        return how many topics they took now. The topics that exist are
        walked once, whatever the number of patterns."""
        new: PatternIndex[_Holder] = PatternIndex()
        added = []
        for pattern, name in zip(patterns, names or patterns, strict=True):
            if name not in self._holders:
                holder = self._holders[name] = _Holder(self, name, pattern, join)
                new.add(pattern, holder)
                added.append((pattern, holder))
        # Topics other nodes of a shared store made are opened here first,
        # so that the walk below takes them at `start` too.
        self._registry.open_shared(new)
        for pattern, holder in added:
            self._registry.patterns.add(pattern, holder)
        taken = 0
        if len(new):
            for topic in list(self._registry):
                if is_inbox(topic.name):
                    continue  # no pattern reads an inbox
                for holder in new.match(topic.name):
                    taken += self.matched(holder, topic, start)
        return taken

    def matched(self, holder: _Holder, topic: Topic, start: StartAt) -> bool:
        """`topic` matches `holder`'s pattern: take it into the window (or
        join its group), if it may."""
        name = topic.name
        if not self.may_read(name):
            return False
        if self._dead_letters.is_dead_letter_topic(name) and (
            holder.pattern.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1]
        ):
            return False
        self._held.setdefault(name, set()).add(holder.name)
        if name not in self._window.subscriptions:
            if holder.join is not None:
                holder.join(topic, start)
            else:
                self._window.subscribe(topic, start)
        return True

    def remove(self, pattern: str) -> None:
        """Unsubscribe a pattern (by the name it was subscribed by), and the
        topics only it held."""
        holder = self._holders.pop(pattern, None)
        if holder is None:
            return
        self._registry.patterns.remove(holder.pattern, holder)
        for name in [name for name, held in self._held.items() if pattern in held]:
            held = self._held[name]
            held.discard(pattern)
            if not held:
                del self._held[name]
                if name not in self.by_name:
                    self._window.unsubscribe(name)

    def unsubscribe_by_name(self, name: str) -> None:
        """An unsubscribe naming a topic: it goes unless a pattern holds it."""
        self.by_name.discard(name)
        if name not in self._held:
            self._window.unsubscribe(name)

    def forget_topic(self, name: str) -> None:
        """The topic left the window for another reason (permissions)."""
        self.by_name.discard(name)
        self._held.pop(name, None)

    @property
    def patterns(self) -> list[str]:
        return list(self._holders)

    def close(self) -> None:
        for holder in self._holders.values():
            self._registry.patterns.remove(holder.pattern, holder)
        self._holders.clear()
        self._held.clear()

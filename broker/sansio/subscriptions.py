"""What a client subscribed to, without I/O: each name's handler and start,
the group and durable names it joined, the topics its patterns brought, and
where each topic resumes after a reconnect (its lowest offset delivered and
not yet answered for good, else the one after the highest delivered), so
that a new connection asks for exactly what the last one left.

After a reconnection a client resubscribes to everything: with extensions
from where it left off; without them at Current, since the seed's
deliveries carry no offsets and what was published meanwhile cannot be
found again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from broker.names import DURABLE_PREFIX, GROUP_PREFIX, group_name_problem, parse_group_name
from broker.sansio.messages import Message
from broker.subjects import PatternError, check_pattern, is_pattern, matches
from broker.wire import StartAt

H = TypeVar("H")


class Progress:
    """Where a topic's subscription resumes."""

    __slots__ = ("next", "open")

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.next: int | None = None

    def delivered(self, offset: int) -> None:
        self.open.add(offset)
        if self.next is None or offset >= self.next:
            self.next = offset + 1

    def answered(self, offset: int) -> None:
        self.open.discard(offset)

    def resume_at(self) -> int | None:
        return min(self.open) if self.open else self.next


def check_patterns(patterns: list[str], start: StartAt) -> None:
    """ValueError for patterns a broker would refuse."""
    if start in (StartAt.FROM, StartAt.FROM64):
        raise ValueError("a pattern starts at BEGINNING or CURRENT, not at an offset")
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except PatternError as error:
            raise ValueError(str(error)) from None


def topic_of_share(name: str) -> str | None:
    """The topic of a `$share/GROUP/TOPIC` name, else None."""
    member = parse_group_name(name)
    return member[1] if member else None


def _specificity(pattern: str) -> tuple[int, int, str]:
    tokens = pattern.split(".")
    literal = sum(token not in ("*", ">") for token in tokens)
    return (literal, tokens[-1] != ">", pattern)


Request = tuple[list[str], StartAt, int]
"""One subscribe to send: names, start, offset."""


class Subscriptions(Generic[H]):
    """A client's subscriptions, whatever connection carries them; `H` is the
    client's kind of handler."""

    def __init__(self) -> None:
        self.handlers: dict[str, H] = {}
        self.starts: dict[str, tuple[StartAt, int]] = {}
        self.progress: dict[str, Progress] = {}
        self.derived: dict[str, str] = {}  # topic -> the pattern that brought it
        self.subscribed: set[str] = set()
        """Names the broker confirmed (topics, patterns, `$share/...`)."""
        self.max_deliveries = 0
        """Deliveries after which the broker gives a message up (its Hello's)."""

    # Asking.

    def plan_subscribe(
        self,
        names: list[str],
        handler: H,
        start: StartAt,
        offset: int,
        extensions: bool,
        group: str | None = None,
        durable: str | None = None,
    ) -> tuple[list[str], str | None]:
        """Check a subscribe and note its handler; return the names to send
        and what the broker must grant for them ("patterns", "groups" or
        None). ValueError for a subscribe no broker would take."""
        if durable is not None:
            if group not in (None, durable):
                raise ValueError("a durable consumer is its own group: give one name")
            return self._plan_join(names, handler, start, offset, durable, extensions, True)
        if group is not None:
            return self._plan_join(names, handler, start, offset, group, extensions, False)
        # Without the extensions names are literal, as the Go clients' are.
        patterns = [name for name in names if is_pattern(name)] if extensions else []
        if patterns:
            check_patterns(patterns, start)
        for name in names:
            self.handlers[name] = handler
            self.starts[name] = (start, offset)
            if name not in patterns:
                self.progress[name] = Progress()
        return names, "patterns" if patterns else None

    def _plan_join(
        self,
        topics: list[str],
        handler: H,
        start: StartAt,
        offset: int,
        group: str,
        extensions: bool,
        durable: bool,
    ) -> tuple[list[str], str | None]:
        if not extensions:
            raise ValueError("consumer groups need extensions=True")
        problem = group_name_problem(group)
        if problem:
            raise ValueError(f"{group!r}: {problem}")
        patterns = [topic for topic in topics if is_pattern(topic)]
        if patterns:
            check_patterns(patterns, start)
        prefix = DURABLE_PREFIX if durable else GROUP_PREFIX
        shares = [f"{prefix}{group}/{topic}" for topic in topics]
        for topic, share in zip(topics, shares, strict=True):
            self.handlers[topic] = handler
            self.starts[share] = (start, offset)
        return shares, "groups"

    def subscribed_to(self, names: Iterable[str]) -> None:
        """The broker confirmed a subscribe to `names`."""
        self.subscribed.update(names)

    def plan_unsubscribe(self, names: list[str]) -> list[str]:
        """The names to send to stop `names` (a topic joined in a group is
        left by its group's name; a pattern's topics resubscribed by name
        go too); they are no longer subscribed."""
        shares = [s for s in self.subscribed if topic_of_share(s) in names]
        plain = [name for name in names if name not in {topic_of_share(s) for s in shares}]
        asked = [*plain, *shares]
        self.subscribed.difference_update(asked)
        derived = [t for t, p in self.derived.items() if p in asked and t not in names]
        return [*asked, *derived]

    def unsubscribed(self, names: Iterable[str]) -> None:
        """The broker confirmed an unsubscribe of `names`: forget them."""
        for name in names:
            self.handlers.pop(name, None)
            self.progress.pop(name, None)
            self.derived.pop(name, None)
            self.starts.pop(name, None)

    def withdrawn(self, topic: str) -> None:
        """The broker ended a subscription the user may no longer have: it is
        not asked for again after a reconnect (which would be refused whole)."""
        self.subscribed.discard(topic)
        self.handlers.pop(topic, None)
        self.progress.pop(topic, None)

    def resubscriptions(self, server: dict[str, Any] | None) -> list[Request]:
        """What a new connection (granted `server`, None: plain) asks for, to
        take up where the last one left off."""
        self.max_deliveries = (server or {}).get("max_deliveries", 0)
        requests: list[Request] = []
        # Topics a pattern brought go first, from where they were left; then
        # the pattern, from where it was asked to start, takes the others
        # (the broker leaves alone a topic already subscribed by name): a
        # pattern from Beginning gets all of a topic it had not yet
        # delivered from, not only what comes after the reconnect.
        for topic, pattern in sorted(self.derived.items()):
            progress = self.progress.get(topic)
            resume = progress.resume_at() if progress else None
            if (
                pattern in self.subscribed
                and resume is not None
                and server
                and not topic_of_share(pattern)
            ):
                requests.append(([topic], StartAt.FROM64, resume))
        for topic in sorted(self.subscribed):
            if server and is_pattern(topic_of_share(topic) or topic):
                requests.append(([topic], *self.starts.get(topic, (StartAt.CURRENT, 0))))
                continue
            progress = self.progress.get(topic)
            resume = progress.resume_at() if progress and server else None
            if resume is not None:
                requests.append(([topic], StartAt.FROM, resume))
            elif server:
                requests.append(([topic], *self.starts[topic]))
            else:
                requests.append(([topic], StartAt.CURRENT, 0))
        return requests

    # Deliveries.

    def handler_for(self, message: Message) -> H | None:
        """Who handles `message` (None: unsubscribed meanwhile, ack it so that
        it is not sent again); its offset counts as delivered."""
        topic = message.topic
        handler = self.handlers.get(topic)
        if handler is None:
            handler = self._pattern_handler(topic)
            if handler is None:
                return None
        if message.offset is not None:
            progress = self.progress.get(topic)
            if progress is not None:
                progress.delivered(message.offset)
        return handler

    def _pattern_handler(self, topic: str) -> H | None:
        """The handler of the most specific pattern subscribed that `topic`
        matches (the most literal tokens; `*` before `>`): a topic comes once
        per connection, however many patterns match it. The topic is
        remembered, so that a reconnect resumes it where it was."""
        candidates = {}
        for name in self.subscribed:
            pattern = topic_of_share(name) or name
            if is_pattern(pattern) and matches(pattern, topic):
                candidates[pattern] = name
        if not candidates:
            return None
        pattern = max(candidates, key=_specificity)
        self.derived[topic] = candidates[pattern]
        if candidates[pattern] == pattern:  # a group keeps its own place
            self.progress[topic] = Progress()
        handler = self.handlers[topic] = self.handlers[pattern]
        return handler

    def answered(self, message: Message, acked: bool) -> None:
        """A delivery was acked (or nacked): where its topic resumes moves."""
        progress = self.progress.get(message.topic)
        if progress is None or message.offset is None:
            return
        if acked or message.attempt >= self.max_deliveries:
            progress.answered(message.offset)  # acked, or given up on by the broker

"""Topic permissions: allow and deny patterns over `.`-separated topic names,
as NATS subjects have them.

    orders.*        one token: orders.eu, not orders or orders.eu.paris
    orders.>        one token or more: orders.eu, orders.eu.paris
    >               every topic
    orders.new      that topic only

A topic is allowed if some allow pattern matches and no deny pattern does
(deny wins). Decisions are cached per topic name, so the check on the
publish path is one dictionary look-up for a topic seen before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Topic decisions remembered per rule set; past this the cache starts over.
CACHE_SIZE = 10_000


class PatternError(ValueError):
    """A pattern that cannot be used; the message says why."""


def check_pattern(pattern: str) -> str:
    """The pattern itself, or PatternError: tokens must not be empty, and
    `>` may only be the last token."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError(f"{pattern!r}: a pattern is a non-empty string")
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise PatternError(f"{pattern!r}: empty token")
        if token == ">" and index != len(tokens) - 1:
            raise PatternError(f"{pattern!r}: '>' must be the last token")
        if token != ">" and token != "*" and (">" in token or "*" in token):
            raise PatternError(f"{pattern!r}: '*' and '>' stand alone as tokens")
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches `pattern` (a checked pattern)."""
    wanted = pattern.split(".")
    tokens = topic.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens):
            return False
        if token != "*" and token != tokens[index]:
            return False
    return len(tokens) == len(wanted)


@dataclass
class Rules:
    """Allow and deny patterns for one kind of access (publish or subscribe)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _cache: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> Rules:
        """Rules from patterns, each checked (PatternError)."""
        return cls(tuple(check_pattern(p) for p in allow), tuple(check_pattern(p) for p in deny))

    def permits(self, topic: str) -> bool:
        decision = self._cache.get(topic)
        if decision is None:
            decision = any(matches(p, topic) for p in self.allow) and not any(
                matches(p, topic) for p in self.deny
            )
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[topic] = decision
        return decision

    def forbidden(self, topics: Iterable[str]) -> list[str]:
        """The topics of `topics` these rules do not permit, in order."""
        return [topic for topic in topics if not self.permits(topic)]

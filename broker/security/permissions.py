"""Topic permissions: allow and deny patterns (see broker.subjects) over
`.`-separated topic names, as NATS has them for subjects.

A topic is allowed if some allow pattern matches and no deny pattern does
(deny wins). Decisions are cached per topic name, so the check on the
publish path is one dictionary look-up for a topic seen before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.subjects import PatternError, check_pattern, matches

__all__ = ["CACHE_SIZE", "PatternError", "Rules", "check_pattern", "matches"]

# Topic decisions remembered per rule set; past this the cache starts over.
CACHE_SIZE = 10_000


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

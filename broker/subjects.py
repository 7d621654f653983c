"""Topic patterns as NATS subjects have them, over `.`-separated tokens:

    orders.*        one token: orders.eu, not orders or orders.eu.paris
    orders.>        one token or more: orders.eu, orders.eu.paris
    >               every topic
    orders.new      that topic only

used by permissions and by pattern subscriptions; and `PatternIndex`, a
trie over tokens that finds the patterns a topic matches in time that
depends on the topic's length, not on how many patterns are held.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)


class PatternError(ValueError):
    """A pattern that cannot be used; the message says why."""


def is_pattern(name: str) -> bool:
    """Whether a name has a `*` or `>` token (else it names one topic)."""
    return any(token in ("*", ">") for token in name.split("."))


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


class _Node(Generic[H]):
    __slots__ = ("children", "ends", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[H]] = {}  # a token, or "*"
        self.ends: dict[H, None] = {}  # holders of patterns ending here
        self.rest: dict[H, None] = {}  # holders of patterns ending here with ">"


class PatternIndex(Generic[H]):
    """Holders of patterns, found by the topics they match."""

    def __init__(self) -> None:
        self._root: _Node[H] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, holder: H) -> None:
        """Hold `holder` under a checked `pattern` (once, however often added)."""
        node = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1]:
            node = node.children.setdefault(token, _Node())
        last = tokens[-1]
        table = node.rest if last == ">" else node.children.setdefault(last, _Node()).ends
        if holder not in table:
            table[holder] = None
            self._count += 1

    def remove(self, pattern: str, holder: H) -> None:
        """Forget `holder` under `pattern`; nodes left empty are pruned."""
        tokens = pattern.split(".")
        path = [self._root]
        for token in tokens[:-1]:
            child = path[-1].children.get(token)
            if child is None:
                return
            path.append(child)
        last = tokens[-1]
        if last == ">":
            table = path[-1].rest
        else:
            child = path[-1].children.get(last)
            if child is None:
                return
            path.append(child)
            table = child.ends
        if table.pop(holder, False) is None:
            self._count -= 1
        # Prune empty nodes from the leaf up.
        parents, steps = path[:-1], tokens[: len(path) - 1]
        for parent, token in zip(reversed(parents), reversed(steps), strict=True):
            node = parent.children[token]
            if node.children or node.ends or node.rest:
                break
            del parent.children[token]

    def match(self, topic: str) -> list[H]:
        """The holders of every pattern `topic` matches, each once, in no
        promised order."""
        found: dict[H, None] = {}
        tokens = topic.split(".")
        level = [self._root]
        for index, token in enumerate(tokens):
            last = index == len(tokens) - 1
            following = []
            for node in level:
                found.update(node.rest)  # ">" here matches this token and the rest
                for key in (token, "*"):
                    child = node.children.get(key)
                    if child is not None:
                        if last:
                            found.update(child.ends)
                        else:
                            following.append(child)
            level = following
            if not level:
                break
        return list(found)

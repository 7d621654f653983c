"""Names a client and the broker must agree on, shared by both sides
without either importing the other's machinery: consumer group and
durable consumer names (`$share/GROUP/TOPIC`, `$durable/NAME/TOPIC`).
Topic patterns have theirs in broker.subjects."""

from __future__ import annotations

GROUP_PREFIX = "$share/"
DURABLE_PREFIX = "$durable/"


def parse_group_name(name: str) -> tuple[str, str, bool] | None:
    """(group, topic, durable) of a `$share/GROUP/TOPIC` or
    `$durable/NAME/TOPIC` name, else None."""
    for prefix, durable in ((GROUP_PREFIX, False), (DURABLE_PREFIX, True)):
        if name.startswith(prefix):
            group, slash, topic = name[len(prefix) :].partition("/")
            return (group, topic, durable) if slash else None
    return None


def group_name_problem(group: str) -> str | None:
    """Why a group name cannot be used, or None."""
    if not 1 <= len(group) <= 64 or not all(c.isalnum() or c in "_.-" for c in group):
        return "a group name is 1-64 letters, digits, '_', '.' or '-'"
    return None


INBOX_PREFIX = "_INBOX."
"""Topics whose names start so are inboxes: a requester's own topic for the
replies to its requests, kept in memory only (never in a store), readable
and writable by anyone who knows the name (the clients make 128-bit random
ones), matched by no pattern."""


def is_inbox(name: str) -> bool:
    return name.startswith(INBOX_PREFIX)

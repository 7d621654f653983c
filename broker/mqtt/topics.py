"""MQTT topic names and filters as this broker's topics and patterns.

MQTT separates levels with `/`, this broker with `.`; the rules are those
NATS uses, so that every MQTT topic has one name here and back:

- `orders/eu` is `orders.eu`: a `/` between levels becomes `.`;
- `/orders`, `orders/`, `a//b` are `/.orders`, `orders./`, `a./.b`: an
  empty level becomes the token `/`;
- `v1.0/plant` is `v1//0.plant`: a `.` inside a level becomes `//`;
- `orders/+/paid` is `orders.*.paid`, and `orders/#` is subscribed as
  `orders` and `orders.>` (`#` matches its parent level too);
- `$share/g/orders/#` is the consumer group `g` of those names;
- a level that is `*` or `>` alone has no name here (refused).

Back from here to MQTT, a token `/` is an empty level and `//` a `.`; a
topic of this broker's whose token holds a lone `/` (`a/b`, published by
another client) reads as more levels in MQTT. Topics starting with `$`
are not matched by a filter starting with a wildcard (MQTT 4.7.2); MQTT
clients may not publish to them, and this broker publishes no `$SYS`
topics (its monitor serves the same figures: /varz, /metrics).
"""

from __future__ import annotations

from broker.names import GROUP_PREFIX
from broker.subjects import PatternError, check_pattern
from broker.wire import topic_name_problem

SHARE_PREFIX = GROUP_PREFIX
"""(MQTT's shared subscriptions are this broker's consumer groups, named alike.)"""
_STARS = {"*", ">"}


class InvalidTopic(ValueError):
    """An MQTT topic name or filter this broker cannot take; says why."""


def to_broker_topic(topic: str) -> str:
    """The topic of this broker an MQTT topic name is (InvalidTopic if it
    is not a name a client may publish to)."""
    if not topic:
        raise InvalidTopic("an empty topic name")
    if "+" in topic or "#" in topic:
        raise InvalidTopic(f"{topic!r}: a topic name holds no wildcard")
    if topic.startswith("$"):
        raise InvalidTopic(f"{topic!r}: topics starting with '$' are the server's")
    name = _converted(topic)
    if _STARS.intersection(name.split(".")):
        raise InvalidTopic(f"{topic!r}: a level that is '*' or '>' alone has no name here")
    problem = topic_name_problem(name)
    if problem:
        raise InvalidTopic(f"{topic!r}: {problem}")
    return name


def _converted(topic: str) -> str:
    return ".".join(level.replace(".", "//") if level else "/" for level in topic.split("/"))


def to_mqtt_topic(name: str) -> str:
    """The MQTT topic name a topic of this broker is shown as."""
    if "/" not in name:
        return name.replace(".", "/")
    return "/".join("" if token == "/" else token.replace("//", ".") for token in name.split("."))


def to_broker_filters(topic_filter: str) -> list[str]:
    """The names (topics, patterns, `$share/GROUP/...`) an MQTT filter is
    subscribed as: one, or two for a filter ending in `#` (which matches its
    parent level too). InvalidTopic if it is not a valid filter."""
    group = None
    if topic_filter.startswith(SHARE_PREFIX):
        group, slash, topic_filter = topic_filter[len(SHARE_PREFIX) :].partition("/")
        if not group or not slash or "+" in group or "#" in group:
            raise InvalidTopic(
                f"{SHARE_PREFIX}{group}: a shared subscription is $share/NAME/FILTER"
            )
    if not topic_filter:
        raise InvalidTopic("an empty topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise InvalidTopic(f"{topic_filter!r}: a wildcard is a whole level")
        if level == "#" and index != len(levels) - 1:
            raise InvalidTopic(f"{topic_filter!r}: '#' is the last level")
    if _STARS.intersection(levels):
        raise InvalidTopic(f"{topic_filter!r}: a level that is '*' or '>' alone has no name here")
    tokens = [
        {"+": "*", "#": ">"}.get(level) or (level.replace(".", "//") if level else "/")
        for level in levels
    ]
    names = [".".join(tokens)]
    if len(tokens) > 1 and tokens[-1] == ">":
        names.insert(0, ".".join(tokens[:-1]))  # `a/#` matches `a` too
    for name in names:
        try:
            check_pattern(name)
        except PatternError as error:
            raise InvalidTopic(str(error)) from None
        problem = topic_name_problem(name)
        if problem:
            raise InvalidTopic(f"{topic_filter!r}: {problem}")
    if group is not None:
        names = [f"{SHARE_PREFIX}{group}/{name}" for name in names]
    return names


def starts_wild(topic_filter: str) -> bool:
    """Whether a filter's first level is a wildcard (it matches no `$` topic)."""
    if topic_filter.startswith(SHARE_PREFIX):
        topic_filter = topic_filter[len(SHARE_PREFIX) :].partition("/")[2]
    return topic_filter[:1] in ("+", "#")

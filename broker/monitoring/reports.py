"""The JSON reports behind /varz, /connz and /topicz: plain functions of
the broker's state, read in the reactor thread (see docs/monitoring.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import __version__
from broker.monitoring.metrics import snapshot

if TYPE_CHECKING:
    from broker.monitoring.view import MonitoredBroker, MonitoredConnection
    from broker.server.factory import BrokerFactory

MAX_PAGE = 1000
DEFAULT_PAGE = 100


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def varz(service: MonitoredBroker, history: bool = False) -> dict[str, Any]:
    """The server: version, uptime, settings, totals, rates, memory, store."""
    factory = service.factory
    now = factory.broker.clock.seconds()
    state = snapshot(factory)
    rates = service.rates.rates()
    report: dict[str, Any] = {
        "server": f"twisted-broker/{__version__}",
        "version": __version__,
        "pid": os.getpid(),
        "state": service.state,
        "started": factory.broker.started,
        "uptime_seconds": round(now - factory.broker.started, 3),
        "ports": service.ports,
        "users": service.users_file is not None,
        "settings": _jsonable(asdict(factory.broker.settings)),
        "totals": {
            **state["totals"],
            "redeliveries": state["redeliveries"],
            "ack_timeouts": state["ack_timeouts"],
            "refusals": state["refusals"],
        },
        "rates": rates[-1] if rates else {"published": 0.0, "delivered": 0.0},
        "connections": {
            "total": len(factory.broker.connections),
            **state["roles"],
            "by_door": state["doors"],
        },
        "subscriptions": state["subscriptions"],
        "in_flight": state["in_flight"],
        "topics": state["topics"],
        "consumer_groups": state["groups"],
        "durable_consumers": state["durable_consumers"],
        "pattern_subscriptions": state["patterns"],
        "rss_bytes": _rss_bytes(),
        "store": {
            "data_dir": None,
            **factory.broker.store.status(),
            "uncommitted_messages": state["uncommitted"],
            "bytes": sum(topic.log.bytes_held for topic in factory.broker.registry),
        },
    }
    if history:
        report["history"] = rates
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(getattr(value, "value", value))


def pending_output(transport: object) -> int | None:
    """Bytes written to a connection and not yet taken by the kernel."""
    inner = getattr(transport, "transport", None)  # TLS wraps the TCP transport
    for candidate in (transport, inner):
        buffer = getattr(candidate, "dataBuffer", None)
        if buffer is not None:
            return len(buffer) + int(getattr(candidate, "_tempDataLen", 0))
    return None


def connection_report(protocol: MonitoredConnection, now: float) -> dict[str, Any]:
    window = protocol.window
    return {
        "id": protocol.number,
        "peer": protocol.peer,
        "door": protocol.door,
        "role": protocol.role,
        "user": protocol.user.name if protocol.user is not None else None,
        "connected_since": protocol.connected_at,
        "seconds": round(now - protocol.connected_at, 3),
        **protocol.details(),
        "prefetch": window.capacity if window is not None else None,
        "subscriptions": sorted(window.subscriptions) if window is not None else [],
        "in_flight": window.in_flight if window is not None else 0,
        "bytes_in": protocol.bytes_received,
        "messages_in": protocol.messages_in,
        "messages_out": protocol.delivered_messages,
        "bytes_out": protocol.delivered_bytes,
        "pending_output": pending_output(protocol.transport),
        "websocket_origin": getattr(protocol.transport, "origin", None),
    }


CONNECTION_SORTS = (
    "id",
    "seconds",
    "bytes_in",
    "messages_in",
    "messages_out",
    "in_flight",
    "pending_output",
)
TOPIC_SORTS = ("name", "messages", "bytes", "rate", "subscribers", "lag")


def page(
    rows: list[dict[str, Any]],
    query: dict[str, str],
    sorts: tuple[str, ...],
    default: str,
    key: Callable[[dict[str, Any], str], Any] = lambda row, field: row[field],
) -> dict[str, Any]:
    """Sort and cut `rows` as ?sort=&order=&offset=&limit= ask."""
    sort = query.get("sort", default)
    if sort not in sorts:
        raise BadQuery(f"sort must be one of {', '.join(sorts)}")
    order = query.get("order", "asc" if sort in ("id", "name") else "desc")
    if order not in ("asc", "desc"):
        raise BadQuery("order must be asc or desc")
    offset = _whole(query, "offset", 0, 0, None)
    limit = _whole(query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)

    def by(row: dict[str, Any]) -> tuple[bool, Any]:
        value = key(row, sort)
        return (value is None, value or 0)

    rows.sort(key=by, reverse=order == "desc")
    return {
        "total": len(rows),
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "items": rows[offset : offset + limit],
    }


def _whole(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        top = f" to {high}" if high is not None else " or more"
        raise BadQuery(f"{name} must be a whole number from {low}{top}")
    return int(text)


def connz(factory: BrokerFactory, query: dict[str, str]) -> dict[str, Any]:
    """Each connection: who, what it does, and how far behind it is."""
    now = factory.broker.clock.seconds()
    rows = [connection_report(protocol, now) for protocol in factory.broker.connections]
    report = page(rows, query, CONNECTION_SORTS, "id")
    report["now"] = now
    return report


def topicz(factory: BrokerFactory, query: dict[str, str]) -> dict[str, Any]:
    """Each topic: offsets, size, rate, and each subscriber's position and lag."""
    now = factory.broker.clock.seconds()
    readers: dict[str, list[dict[str, Any]]] = {}
    for protocol in factory.broker.connections:
        window = protocol.window
        if window is None:
            continue
        for name, subscription in window.subscriptions.items():
            topic = subscription.topic
            behind = max(0, topic.log.next_offset - subscription.position)
            appended = topic.appended_at(subscription.position) if behind else None
            readers.setdefault(name, []).append(
                {
                    "connection": protocol.number,
                    "peer": protocol.peer,
                    "user": protocol.user.name if protocol.user is not None else None,
                    "position": subscription.position,
                    "lag_messages": behind,
                    "lag_seconds": round(max(0.0, now - appended), 3) if appended else 0.0,
                }
            )
    wanted = query.get("topic")
    rows = []
    for topic in factory.broker.registry:
        if wanted is not None and topic.name != wanted:
            continue
        subscribers = readers.get(topic.name, [])
        rows.append(
            {
                "name": topic.name,
                "first_offset": topic.log.first_offset,
                "next_offset": topic.log.next_offset,
                "messages": topic.log.next_offset - topic.log.first_offset,
                "bytes": topic.log.bytes_held,
                "rate": round(topic.rate(), 1),
                "subscribers": subscribers,
                "lag": max((s["lag_messages"] for s in subscribers), default=0),
            }
        )

    def sort_key(row: dict[str, Any], field: str) -> Any:
        return len(row["subscribers"]) if field == "subscribers" else row[field]

    report = page(rows, query, TOPIC_SORTS, "name", key=sort_key)
    report["now"] = now
    return report

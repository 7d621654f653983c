"""`broker topics`, `broker consumers` and `broker conns`: the admin API on
the monitor port (docs/admin.md), as tables or, with --json, as it answers.
The monitor's address comes from `--monitor` or BROKER_MONITOR; the
credentials are the messaging commands' (a user with `admin = true`)."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import click
from rich.console import Console
from rich.table import Table

from broker.sansio.messages import AuthenticationFailed, BrokerError, BrokerUnreachable

F = TypeVar("F", bound=Callable[..., Any])


class AdminClient:
    """Calls of the admin API, answered as JSON; errors as the clients'."""

    def __init__(self, url: str, user: str | None, password: str | None, token: str | None):
        self.url = url.rstrip("/")
        self._authorization: str | None = None
        if token is not None:
            self._authorization = f"Bearer {token}"
        elif user is not None and password is not None:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {pair}"

    def call(
        self, method: str, *path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Call /admin/PATH (each part percent-encoded)."""
        return self.fetch(
            method, "/admin/" + "/".join(quote(part, safe="") for part in path), query, body
        )

    def fetch(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Call any path of the monitor (/varz, /topicz...), JSON back."""
        address = self.url + path
        if query:
            address += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        request = urllib.request.Request(
            address, method=method, data=json.dumps(body).encode() if body is not None else None
        )
        request.add_header("content-type", "application/json")
        if self._authorization is not None:
            request.add_header("authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            said = _said(error)
            if error.code in (401, 403):
                raise AuthenticationFailed(said) from None
            raise BrokerError(said) from None
        except urllib.error.URLError as error:
            raise BrokerUnreachable(
                f"cannot reach the monitor at {self.url}: {error.reason}"
            ) from None


def _said(error: urllib.error.HTTPError) -> str:
    text = error.read().decode("utf-8", "replace").strip()
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text or f"HTTP {error.code}"


def admin_options(command: F) -> F:
    """The monitor's address and the credentials, gathered as `admin`."""
    options = [
        click.option(
            "--monitor",
            "monitor_url",
            envvar="BROKER_MONITOR",
            default="http://localhost:8222",
            show_default=True,
            help="The broker's monitor (twistd broker --monitor) [env BROKER_MONITOR].",
        ),
        click.option("--user", envvar="BROKER_USER", help="A user with admin = true."),
        click.option("--password", envvar="BROKER_PASSWORD", help="[env BROKER_PASSWORD]"),
        click.option("--token", envvar="BROKER_TOKEN", help="[env BROKER_TOKEN]"),
        click.option("--json", "as_json", is_flag=True, help="The API's JSON as it answers."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _client(monitor_url: str, user: str | None, password: str | None, token: str | None):
    if (user is None) != (password is None):
        raise click.UsageError("give --user and --password together (or BROKER_PASSWORD)")
    return AdminClient(monitor_url, user, password, token)


def _show(answer: Any, as_json: bool, table: Callable[[Any], Any]) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        Console().print(table(answer))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in NUMERIC else "left")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    return table


NUMERIC = {
    "first",
    "next",
    "committed",
    "offset",
    "size",
    "messages",
    "bytes",
    "readers",
    "members",
    "position",
    "lag",
    "id",
}


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


# Topics.


@click.group(help="List, inspect, peek into, create, compact, purge and delete topics.")
def topics() -> None:
    pass


@topics.command(name="ls", help="Every topic: offsets, messages, bytes, readers.")
@admin_options
def topics_ls(
    monitor_url: str, user: str | None, password: str | None, token: str | None, as_json: bool
) -> None:
    answer = _client(monitor_url, user, password, token).call("GET", "topics")
    _show(
        answer,
        as_json,
        lambda a: _table(
            "topics",
            ["name", "first", "next", "messages", "bytes", "readers"],
            [
                [t["name"], t["first"], t["next"], t["messages"], t["bytes"], t["readers"]]
                for t in a["topics"]
            ],
        ),
    )


@topics.command(help="One topic: offsets, size, readers, groups, durable consumers.")
@click.argument("name")
@admin_options
def info(
    name: str,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call("GET", "topics", name)

    def shown(a: dict[str, Any]) -> Table:
        table = _table(
            f"topic {a['name']}",
            ["first", "next", "committed", "messages", "bytes", "readers"],
            [[a["first"], a["next"], a["committed"], a["messages"], a["bytes"], a["readers"]]],
        )
        return table

    _show(answer, as_json, shown)
    if not as_json and (answer["groups"] or answer["durables"]):
        Console().print(
            _table(
                "groups and durable consumers",
                ["name", "durable", "members", "position", "lag"],
                [
                    [c["name"], c["durable"], c["members"], c.get("position"), c.get("lag")]
                    for c in answer["groups"] + answer["durables"]
                ],
            )
        )


@topics.command(help="Show messages of a topic without consuming them.")
@click.argument("name")
@click.option(
    "--from",
    "start",
    type=click.IntRange(min=0),
    help="The first offset (default: the oldest held).",
)
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option("--max-bytes", type=click.IntRange(min=1), default=65536, show_default=True)
@admin_options
def peek(
    name: str,
    start: int | None,
    limit: int,
    max_bytes: int,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call(
        "GET",
        "topics",
        name,
        "messages",
        query={"from": start, "limit": limit, "max_bytes": max_bytes},
    )
    _show(
        answer,
        as_json,
        lambda a: _table(
            f"{a['topic']}: {len(a['messages'])} message(s)",
            ["offset", "size", "data"],
            [[m["offset"], m.get("size"), _shown_data(m)] for m in a["messages"]],
        ),
    )


@topics.command(help="Create a topic (nothing happens if it exists).")
@click.argument("name")
@admin_options
def create(
    name: str,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call("PUT", "topics", name, body={})
    _done(answer, as_json, f"topic {name} is there")


@topics.command(help="Drop every message of a topic (its offsets go on).")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@admin_options
def purge(
    name: str,
    yes: bool,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    if not yes:
        click.confirm(f"Drop every message of {name}?", abort=True)
    answer = _client(monitor_url, user, password, token).call(
        "POST", "topics", name, "purge", body={}
    )
    _done(answer, as_json, f"purged {name}: {answer['messages']:,} message(s) dropped")


@topics.command(help="Compact a topic (keep the latest message of each key) or, with --off, stop.")
@click.argument("name")
@click.option("--off", is_flag=True, help="Stop compacting it.")
@admin_options
def compact(
    name: str,
    off: bool,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call(
        "POST", "topics", name, "compaction", body={"compacted": not off}
    )
    _done(answer, as_json, f"{name} is {'compacted' if answer['compacted'] else 'not compacted'}")


@topics.command(name="rm", help="Delete a topic nobody reads, with its messages.")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@admin_options
def topics_rm(
    name: str,
    yes: bool,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    if not yes:
        click.confirm(f"Delete topic {name} and its messages?", abort=True)
    answer = _client(monitor_url, user, password, token).call("DELETE", "topics", name)
    _done(answer, as_json, f"deleted {name}")


def _done(answer: Any, as_json: bool, said: str) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        Console(highlight=False).print(said)


# Consumers.


@click.group(help="List consumer groups and durable consumers; reset or forget a durable one.")
def consumers() -> None:
    pass


@consumers.command(name="ls", help="Every group and durable consumer: members, position, lag.")
@admin_options
def consumers_ls(
    monitor_url: str, user: str | None, password: str | None, token: str | None, as_json: bool
) -> None:
    answer = _client(monitor_url, user, password, token).call("GET", "consumers")
    _show(
        answer,
        as_json,
        lambda a: _table(
            "consumers",
            ["topic", "name", "durable", "members", "position", "lag"],
            [
                [c["topic"], c["name"], c["durable"], c["members"], c.get("position"), c.get("lag")]
                for c in a["consumers"]
            ],
        ),
    )


@consumers.command(
    help="Move a durable consumer (with no member reading) to an offset, or to the "
    "first message since a time: --time 2026-12-05T09:30 (UTC unless it says) or "
    "--time 15m (that long ago; s, m, h, d)."
)
@click.argument("topic")
@click.argument("name")
@click.option("--offset", type=click.IntRange(min=0), help="The offset it resumes at.")
@click.option("--time", "when", help="It resumes at the first message since this time.")
@admin_options
def reset(
    topic: str,
    name: str,
    offset: int | None,
    when: str | None,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    if (offset is None) == (when is None):
        raise click.UsageError("give --offset or --time")
    body: dict[str, Any] = {"offset": offset}
    if when is not None:
        try:
            body = {"time": moment(when, time.time())}
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--time") from None
    answer = _client(monitor_url, user, password, token).call(
        "POST", "consumers", topic, name, "reset", body=body
    )
    _done(answer, as_json, f"{name} of {topic} resumes at offset {answer['position']:,}")


_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str, now: float) -> float:
    """Seconds since the epoch of `text`: ISO 8601 (UTC unless it says), or
    a duration ago ("90s", "15m", "2h", "1d")."""
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return now - float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time (2026-12-05T09:30) nor a duration ago (15m)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@consumers.command(name="rm", help="Forget a durable consumer (with no member reading).")
@click.argument("topic")
@click.argument("name")
@admin_options
def consumers_rm(
    topic: str,
    name: str,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call("DELETE", "consumers", topic, name)
    _done(answer, as_json, f"forgot {name} of {topic}")


# Connections.


@click.group(help="List connections, or close one.")
def conns() -> None:
    pass


@conns.command(name="ls", help="Every connection: peer, role, user, traffic.")
@admin_options
def conns_ls(
    monitor_url: str, user: str | None, password: str | None, token: str | None, as_json: bool
) -> None:
    answer = _client(monitor_url, user, password, token).call("GET", "connections")
    _show(
        answer,
        as_json,
        lambda a: _table(
            "connections",
            ["id", "peer", "role", "user", "messages in", "messages out", "in flight"],
            [
                [
                    c["id"],
                    c["peer"],
                    c["role"],
                    c["user"],
                    c["messages_in"],
                    c["messages_out"],
                    c["in_flight"],
                ]
                for c in a["connections"]
            ],
        ),
    )


@conns.command(help="Close a connection (its client reconnects if it is ours).")
@click.argument("number", type=int)
@admin_options
def kick(
    number: int,
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    answer = _client(monitor_url, user, password, token).call("DELETE", "connections", str(number))
    _done(answer, as_json, f"closed connection {number} ({answer['peer']})")


def _shown_data(message: dict[str, Any]) -> str:
    if message.get("gap"):
        return "(dropped by compaction)"
    return str(message.get("data", message.get("data_base64", "(corrupt)")))

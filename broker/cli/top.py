"""`broker top`: a live view of a running broker in the terminal, like
nats-top: rates per second (published, delivered, acks, nacks,
redeliveries, dead letters, failed sign-ins), connections, and the busiest
topics with their rates, readers and lag. It reads the monitor (/varz and
/topicz), so a user with `monitor = true` may run it."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from broker.cli.admin import AdminClient, _cell

# (label, /varz total it is the rate of)
RATES = [
    ("published", "published_messages"),
    ("delivered", "delivered_messages"),
    ("acks", "acks"),
    ("nacks", "nacks"),
    ("redelivered", "redeliveries"),
    ("dead letters", "dead_letters"),
    ("failed sign-ins", "authentication_failures"),
]


class Sample:
    """One reading of the monitor."""

    def __init__(self, varz: dict[str, Any], topicz: dict[str, Any], at: float) -> None:
        self.varz = varz
        self.topics = topicz["items"]
        self.total_topics = topicz["total"]
        self.at = at

    @property
    def totals(self) -> dict[str, int]:
        return dict(self.varz["totals"])


def read(client: AdminClient, topics: int) -> Sample:
    varz = client.fetch("GET", "/varz")
    topicz = client.fetch("GET", "/topicz", {"sort": "rate", "limit": topics})
    return Sample(varz, topicz, time.monotonic())


def rates(before: Sample | None, now: Sample) -> dict[str, float]:
    """Per second since `before` (the broker's own last-second figures for
    the first frame)."""
    if before is None or now.at <= before.at:
        shown = now.varz.get("rates", {})
        return {label: float(shown.get(label, 0.0)) for label, _ in RATES}
    seconds = now.at - before.at
    old, new = before.totals, now.totals
    return {
        label: max(0.0, (new.get(total, 0) - old.get(total, 0)) / seconds) for label, total in RATES
    }


def frame(before: Sample | None, now: Sample) -> Group:
    varz = now.varz
    connections = varz["connections"]
    header = Text.assemble(
        (f"{varz['server']}", "bold"),
        f"  {varz['state']}  up {_duration(varz['uptime_seconds'])}",
        f"  connections {connections['total']:,}",
        f"  topics {varz['topics']:,}",
        f"  in flight {varz['in_flight']:,}",
        f"  store {varz['store'].get('kind', '?')}",
    )
    per_second = Table(title="per second", title_justify="left", box=None)
    shown = rates(before, now)
    for label, _ in RATES:
        per_second.add_column(label, justify="right")
    per_second.add_row(*(_rate(shown[label]) for label, _ in RATES))
    busiest = Table(
        title=f"topics (busiest {len(now.topics)} of {now.total_topics:,})", title_justify="left"
    )
    for column in ("topic", "msg/s", "messages", "bytes", "readers", "lag"):
        busiest.add_column(column, justify="left" if column == "topic" else "right")
    for topic in now.topics:
        busiest.add_row(
            topic["name"],
            _rate(topic["rate"]),
            _cell(topic["messages"]),
            _cell(topic["bytes"]),
            _cell(len(topic["subscribers"])),
            _cell(topic["lag"]),
        )
    return Group(header, per_second, busiest)


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02d}m{second:02d}s" if hours else f"{minute}m{second:02d}s"


@click.command(help="A live view of the broker: rates, connections, the busiest topics.")
@click.option(
    "--monitor",
    "monitor_url",
    envvar="BROKER_MONITOR",
    default="http://localhost:8222",
    show_default=True,
    help="The broker's monitor (twistd broker --monitor) [env BROKER_MONITOR].",
)
@click.option("--user", envvar="BROKER_USER", help="A user with monitor = true.")
@click.option("--password", envvar="BROKER_PASSWORD", help="[env BROKER_PASSWORD]")
@click.option("--token", envvar="BROKER_TOKEN", help="[env BROKER_TOKEN]")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds."
)
@click.option("--topics", type=click.IntRange(min=1, max=1000), default=15, show_default=True)
@click.option("--once", is_flag=True, help="Print one frame and stop (for scripts and logs).")
def top(
    monitor_url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    interval: float,
    topics: int,
    once: bool,
) -> None:
    if (user is None) != (password is None):
        raise click.UsageError("give --user and --password together (or BROKER_PASSWORD)")
    client = AdminClient(monitor_url, user, password, token)
    before = None
    now = read(client, topics)
    if once:
        Console().print(frame(None, now))
        return
    with Live(frame(None, now), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            before, now = now, read(client, topics)
            live.update(frame(before, now))

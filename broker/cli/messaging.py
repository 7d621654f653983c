"""`broker pub` and `broker sub`: publish and subscribe from a terminal,
through the blocking client (broker.sync)."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator

import click
from rich.console import Console
from rich.markup import escape

import broker.sync
from broker.cli.context import connection_options, context_of
from broker.wire import StartAt, topic_name_problem
from broker.wire.headers import encode_headers

# Messages published per round trip when no --rate paces them.
BATCH = 1000


@click.command(help="Publish DATA to TOPIC (each line of stdin with '-' or no DATA).")
@click.argument("topic")
@click.argument("data", required=False)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Publish DATA this many times; '{n}' in it becomes 1, 2, ...",
)
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="Messages per second at most."
)
@click.option(
    "--header",
    "-H",
    "header_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="A header every message carries (repeatable; the broker must take headers).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message stored.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@connection_options
def pub(
    topic: str,
    data: str | None,
    count: int,
    rate: float | None,
    header_options: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    **connection: object,
) -> None:
    context = context_of(**connection)  # type: ignore[arg-type]
    _check_names([topic], "topic")
    headers = _headers(header_options)
    messages = _stdin_lines() if data in (None, "-") else _copies(data, count)
    out = Console(highlight=False, soft_wrap=True)
    with broker.sync.connect(context.url, **context.options()) as client:
        sent = 0
        started = time.monotonic()
        for batch in _batches(messages, 1 if rate else BATCH):
            if rate:
                pause = started + sent / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            offsets = client.publish_many([(topic, payload, headers) for payload in batch])
            sent += len(batch)
            if quiet:
                continue
            for offset in offsets:
                if as_json:
                    print(json.dumps({"topic": topic, "offset": offset}))
                else:
                    out.print(f"stored at {topic}#{offset}" if offset is not None else "sent")


def _headers(given: tuple[str, ...]) -> list[tuple[str, str]] | None:
    """--header NAME=VALUE options as pairs, checked (exit code 2 if bad)."""
    pairs = []
    for option in given:
        name, equals, value = option.partition("=")
        if not equals:
            raise click.BadParameter(f"{option!r}: give NAME=VALUE", param_hint="--header")
        pairs.append((name.strip(), value))
    try:
        encode_headers(pairs)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--header") from None
    return pairs or None


def _check_names(names: list[str], hint: str) -> None:
    """Refuse a bad name before connecting (exit code 2)."""
    for name in names:
        problem = topic_name_problem(name)
        if problem:
            raise click.BadParameter(f"{name!r}: {problem}", param_hint=hint)


def _copies(data: str, count: int) -> Iterator[bytes]:
    for n in range(1, count + 1):
        yield data.replace("{n}", str(n)).encode("utf-8")


def _stdin_lines() -> Iterator[bytes]:
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\r\n")
        if line:
            yield line


def _batches(messages: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for message in messages:
        batch.append(message)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _start(value: str) -> tuple[StartAt, int]:
    if value == "beginning":
        return StartAt.BEGINNING, 0
    if value in ("now", "current"):
        return StartAt.CURRENT, 0
    if value.isdigit():
        return StartAt.FROM, int(value)
    raise click.BadParameter(f"{value!r}: beginning, now, or an offset", param_hint="--from")


@click.command(help="Print the messages of TOPIC... (names or patterns), acking each.")
@click.argument("topics", nargs=-1, required=True)
@click.option(
    "--from",
    "start",
    default="now",
    show_default=True,
    help="Where to start: beginning, now, or an offset.",
)
@click.option("--group", help="Join this consumer group (each message to one member).")
@click.option("--durable", help="A durable consumer: the broker keeps its place by this name.")
@click.option(
    "--prefetch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Messages in flight at once (1: a group shares its messages one at a time).",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop once no message has come for this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--raw", is_flag=True, help="The payloads alone, one per line.")
@connection_options
def sub(
    topics: tuple[str, ...],
    start: str,
    group: str | None,
    durable: str | None,
    count: int | None,
    wait: float | None,
    prefetch: int,
    as_json: bool,
    raw: bool,
    **connection: object,
) -> None:
    context = context_of(**connection)  # type: ignore[arg-type]
    _check_names(list(topics), "topics")
    at, offset = _start(start)
    out = Console(highlight=False, soft_wrap=True)
    taken = 0
    with broker.sync.connect(context.url, prefetch=prefetch, **context.options()) as client:
        subscription = client.subscribe(
            list(topics), start=at, offset=offset, group=group, durable=durable, timeout=wait
        )
        for message in subscription:
            if as_json:
                print(json.dumps(_as_json(message)), flush=True)
            elif raw:
                sys.stdout.buffer.write(message.data + b"\n")
                sys.stdout.buffer.flush()
            else:
                shown = escape(message.data.decode("utf-8", "replace"))
                where = f"#{message.offset}" if message.offset is not None else ""
                again = f" (delivery {message.attempt})" if message.attempt > 1 else ""
                out.print(f"[bold]{escape(message.topic)}[/bold]{where}{again} {shown}")
                for name, value in message.headers.pairs():
                    out.print(f"  [dim]{escape(name)}: {escape(value)}[/dim]")
            message.ack()
            taken += 1
            if count is not None and taken >= count:
                break


def _as_json(message: broker.sync.Message) -> dict[str, object]:
    shown: dict[str, object] = {
        "topic": message.topic,
        "offset": message.offset,
        "attempt": message.attempt,
    }
    headers = message.headers
    if headers:
        shown["headers"] = [list(pair) for pair in headers.pairs()]
    try:
        shown["data"] = message.data.decode("utf-8")
    except UnicodeDecodeError:
        shown["data_base64"] = base64.b64encode(message.data).decode("ascii")
    return shown

"""An example publisher and consumer over the broker's Twisted client.

    python example/pubsub.py --client-type consume                 # from the next message
    python example/pubsub.py --client-type consume --consume-from 0 # replay, then live
    python example/pubsub.py --client-type consume --publish        # also publish every 500 ms
    python example/pubsub.py --client-type publish --count 10
    python example/pubsub.py --client-type publish --extensions     # confirmed, with offsets
    python example/pubsub.py --extensions --group workers           # one of a pool of workers
    python example/pubsub.py --extensions --durable billing         # the broker keeps its place

Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred

from broker.client import BrokerClient, BrokerUnreachable, Message, connect
from broker.wire import MAX_U16, StartAt, topic_name_problem


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="localhost:3000", help="host:port or endpoint string")
    parser.add_argument("--client-type", choices=["consume", "publish"], default="consume")
    parser.add_argument("--topic", default="topic-a")
    parser.add_argument(
        "--consume-from",
        type=int,
        default=-1,
        help="offset to start from; -1 (the default) starts at the next message; "
        "offsets past 65,535 need --extensions",
    )
    parser.add_argument(
        "--publish", action="store_true", help="while consuming, also publish every --interval"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between publishes")
    parser.add_argument(
        "--count", type=int, default=0, help="publish this many, then stop (0: forever)"
    )
    parser.add_argument(
        "--extensions",
        action="store_true",
        help="use the broker's extensions: confirmed publishes, offsets, prefetch, resume",
    )
    parser.add_argument(
        "--group",
        help="consume as a member of this consumer group: each message goes to one member "
        "(needs --extensions)",
    )
    parser.add_argument(
        "--durable",
        help="consume as this durable consumer: the broker keeps its place, so a restart "
        "resumes at the first message not acked (needs --extensions)",
    )
    args = parser.parse_args(argv)
    if (args.group or args.durable) and not args.extensions:
        parser.error("--group and --durable need --extensions")
    if args.group and args.durable and args.group != args.durable:
        parser.error("a durable consumer is its own group: give --durable alone")
    if args.consume_from < -1:
        parser.error("--consume-from takes -1 or an offset")
    if args.consume_from > MAX_U16 and not args.extensions:
        parser.error(f"--consume-from past {MAX_U16:,} needs --extensions (From is a u16)")
    problem = topic_name_problem(args.topic)
    if problem:
        parser.error(f"--topic {args.topic!r}: {problem}")
    return args


def print_message(message: Message) -> bool:
    where = "" if message.offset is None else f" (offset {message.offset})"
    text = message.payload.decode("utf-8", "replace")
    print(f"received on {message.topic}: {text}{where}", flush=True)
    return True


async def publish_every(reactor: Any, client: BrokerClient, args: argparse.Namespace) -> None:
    numbers = range(args.count) if args.count else itertools.count()
    for number in numbers:
        text = f"message {number}"
        offset = await client.publish(args.topic, text.encode())
        stored = "" if offset is None else f" (stored at offset {offset})"
        print(f"published to {args.topic}: {text}{stored}", flush=True)
        await task.deferLater(reactor, args.interval, lambda: None)


async def wait_for_broker(client: BrokerClient, server: str) -> None:
    """Say so while the broker cannot be reached; the client keeps trying."""
    while True:
        try:
            await client.connected(timeout=1.0)
            return
        except BrokerUnreachable:
            print(f"cannot reach {server} ({client.last_problem}), retrying", flush=True)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    client = connect(reactor, args.server, extensions=args.extensions)
    reactor.addSystemEventTrigger("before", "shutdown", client.close)
    await wait_for_broker(client, args.server)
    if args.client_type == "publish":
        await publish_every(reactor, client, args)
        await client.close()
        return
    if args.consume_from < 0:
        start, offset = StartAt.CURRENT, 0
    else:
        start, offset = StartAt.FROM, args.consume_from
    await client.subscribe(
        [args.topic],
        print_message,
        start=start,
        offset=offset,
        group=args.group if not args.durable else None,
        durable=args.durable,
    )
    joined = f" as {args.durable or args.group}" if args.durable or args.group else ""
    print(f"subscribed to {args.topic}{joined}", flush=True)
    if args.publish:
        await publish_every(reactor, client, args)
    await Deferred()  # consume until Ctrl-C


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    task.react(lambda reactor: ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()

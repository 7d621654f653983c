"""`broker-bench clients`: each of the project's Python clients measured the
same way. Each publishes N 100-byte messages with confirms, then consumes
them with acks, in a process of its own (so that no client shares an
interpreter or an event loop with the bench), against a broker started
fresh for each run (or --broker). Prints medians of --runs: msg/s, the
client's CPU and the broker's CPU per message.

    broker-bench clients                       # every client, 3 runs of 100,000
    broker-bench clients --client asyncio --runs 5 --messages 200000 --json

A client's workload runs in a child that calls `main()` with CLIENT PHASE
PORT N TOPIC and prints {"rate", "cpu_us"} (scripts/compare_clients.py
runs the same ones beside the peers' clients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from broker.bench.process import BrokerProcess

PAYLOAD = b"x" * 100
THREE_HEADERS = {
    "Content-Type": "application/json",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tenant": "acme",
}
_headers: dict[str, str] | None = None
"""With --headers: what every message carries (and every consumer reads)."""
_unique = False
"""With --headers unique: each message's traceparent its own, as real traces are."""
_sent = 0


def _window(topic: str) -> list[tuple[str, bytes, dict[str, str] | None]]:
    """The next WINDOW messages to publish, with their headers if asked."""
    global _sent
    headers = _headers
    if headers is None or not _unique:
        return [(topic, PAYLOAD, headers)] * WINDOW
    first, _sent = _sent, _sent + WINDOW
    return [
        (topic, PAYLOAD, {**headers, "traceparent": f"00-{n:032x}-00f067aa0ba902b7-01"})
        for n in range(first, first + WINDOW)
    ]


WINDOW = 1000  # publishes awaited together
PREFETCH = 1024

# name -> (what it measures, for the table)
CLIENTS = {
    "twisted": "Twisted client: publish, handler",
    "twisted-batch": "Twisted client: publish_many, batch handler",
    "asyncio": "asyncio: publish_many, batch()",
    "asyncio-each": "asyncio: publish, async for",
    "blocking": "blocking: publish_many, for",
    "blocking-batch": "blocking: publish_many, batches()",
}


def _read_headers(messages: list[Any]) -> None:
    """What a consumer of messages with headers does: look one up."""
    for message in messages:
        if message.headers["tenant"] != "acme":
            raise AssertionError(f"headers lost: {message.headers!r}")


def _measured(work: Callable[[], None], count: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"rate": count / wall, "cpu_us": cpu / count * 1e6}


def twisted_client(phase: str, port: int, count: int, topic: str, batch: bool) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

    from broker.client import StartAt, connect

    result: dict[str, float] = {}

    async def run() -> None:
        client = connect(reactor, f"127.0.0.1:{port}", prefetch=PREFETCH)
        await client.connected(timeout=10)
        cpu, wall = time.process_time(), time.perf_counter()
        if phase == "publish":
            for _ in range(0, count, WINDOW):
                if batch:
                    await client.publish_many(_window(topic))
                else:
                    await gatherResults([client.publish(*message) for message in _window(topic)])
        else:
            done: Deferred[None] = Deferred()
            seen = [0]

            def handle(message: Any) -> bool:
                if _headers is not None:
                    _read_headers([message])
                seen[0] += 1
                if seen[0] == count:
                    done.callback(None)
                return True

            def handle_batch(messages: list[Any]) -> bool:
                if _headers is not None:
                    _read_headers(messages)
                seen[0] += len(messages)
                if seen[0] >= count and not done.called:
                    done.callback(None)
                return True

            if batch:
                await client.subscribe_batches([topic], handle_batch, start=StartAt.BEGINNING)
            else:
                await client.subscribe([topic], handle, start=StartAt.BEGINNING)
            await done
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result.update(rate=count / wall, cpu_us=cpu / count * 1e6)
        await client.close()

    def stop(outcome: object) -> object:
        reactor.stop()
        return outcome

    def main() -> None:
        ensureDeferred(run()).addBoth(stop)

    reactor.callWhenRunning(main)
    reactor.run()
    return result


def asyncio_client(phase: str, port: int, count: int, topic: str, each: bool) -> dict[str, float]:
    import broker.aio

    async def run() -> dict[str, float]:
        client = await broker.aio.connect(f"tcp://127.0.0.1:{port}", prefetch=PREFETCH)
        cpu, wall = time.process_time(), time.perf_counter()
        if phase == "publish":
            for _ in range(0, count, WINDOW):
                if each:
                    await asyncio.gather(*(client.publish(*message) for message in _window(topic)))
                else:
                    await client.publish_many(_window(topic))
        else:
            seen = 0
            async with client.subscribe([topic], start=broker.aio.StartAt.BEGINNING) as sub:
                if each:  # one delivery per iteration
                    async for delivery in sub:
                        if _headers is not None:
                            _read_headers([delivery])
                        await delivery.ack()
                        seen += 1
                        if seen == count:
                            break
                else:  # what is here, at once
                    while seen < count:
                        batch = await sub.batch()
                        if _headers is not None:
                            _read_headers(batch)
                        sub.ack_all(batch)
                        seen += len(batch)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await client.close()
        return {"rate": count / wall, "cpu_us": cpu / count * 1e6}

    return asyncio.run(run())


def blocking_client(phase: str, port: int, count: int, topic: str, batch: bool) -> dict[str, float]:
    import broker.sync

    with broker.sync.connect(f"tcp://127.0.0.1:{port}", prefetch=PREFETCH) as client:

        def work() -> None:
            if phase == "publish":
                for _ in range(0, count, WINDOW):
                    client.publish_many(_window(topic))
                return
            start = broker.sync.StartAt.BEGINNING
            subscription = client.subscribe([topic], start=start)
            seen = 0
            if batch:
                for messages in subscription.batches():
                    if _headers is not None:
                        _read_headers(messages)
                    subscription.ack_all(messages)
                    seen += len(messages)
                    if seen >= count:
                        return
            for message in subscription:
                if _headers is not None:
                    _read_headers([message])
                message.ack()
                seen += 1
                if seen == count:
                    return

        return _measured(work, count)


Workload = Callable[[str, int, int, str], dict[str, float]]
WORKLOADS: dict[str, Workload] = {
    "twisted": lambda phase, port, n, topic: twisted_client(phase, port, n, topic, batch=False),
    "twisted-batch": lambda phase, port, n, topic: twisted_client(phase, port, n, topic, True),
    "asyncio": lambda phase, port, n, topic: asyncio_client(phase, port, n, topic, each=False),
    "asyncio-each": lambda phase, port, n, topic: asyncio_client(phase, port, n, topic, True),
    "blocking": lambda phase, port, n, topic: blocking_client(phase, port, n, topic, False),
    "blocking-batch": lambda phase, port, n, topic: blocking_client(phase, port, n, topic, True),
}


# The child imports this module by name (`python -m` would import it twice,
# once as broker.bench's and once as __main__).
_CHILD = "from broker.bench.clients import main; main()"


def run_phase(
    client: str, phase: str, port: int, count: int, topic: str, headers: str | None = None
) -> dict[str, float]:
    """One workload in a child process: what it printed."""
    command = [sys.executable, "-c", _CHILD, client, phase, str(port)]
    extra = [headers] if headers else []
    done = subprocess.run(
        [*command, str(count), topic, *extra], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{client} {phase}: {done.stderr.strip()[-600:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def one_run(args: argparse.Namespace, client: str) -> dict[str, float]:
    """Publish then consume, on a fresh broker (or --broker): the figures."""
    broker = None
    if args.broker:
        port = int(args.broker.rpartition(":")[2])
    else:
        broker = BrokerProcess(["--max-prefetch", str(PREFETCH)])
        port = broker.port
    topic = f"bench-clients-{client}-{time.time_ns()}"
    try:
        figures: dict[str, float] = {}
        for phase in ("publish", "consume"):
            before = broker.cpu_seconds() if broker else float("nan")
            measured = run_phase(
                client, phase, port, args.messages, topic, getattr(args, "headers", None)
            )
            used = (broker.cpu_seconds() if broker else float("nan")) - before
            figures[f"{phase}_rate"] = measured["rate"]
            figures[f"{phase}_client_us"] = measured["cpu_us"]
            figures[f"{phase}_broker_us"] = used / args.messages * 1e6
        return figures
    finally:
        if broker is not None:
            broker.stop()


def compare(args: argparse.Namespace) -> None:
    """Every client asked for, --runs times each: medians, as a table or JSON."""
    chosen = args.client or list(CLIENTS)
    medians: dict[str, dict[str, float]] = {}
    for client in chosen:
        runs = []
        for number in range(args.runs):
            figures = one_run(args, client)
            if not args.json:
                print(f"run {number + 1} of {client}: {_shown(figures)}", file=sys.stderr)
            runs.append(figures)
        medians[client] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if args.json:
        print(json.dumps({"messages": args.messages, "runs": args.runs, "clients": medians}))
        return
    print(
        f"{'client':<46} {'publish msg/s':>14} {'consume msg/s':>14} "
        f"{'client µs/msg':>14} {'broker µs/msg':>14}"
    )
    for client, median in medians.items():
        client_us = f"{median['publish_client_us']:.1f}, {median['consume_client_us']:.1f}"
        broker_us = f"{median['publish_broker_us']:.1f}, {median['consume_broker_us']:.1f}"
        print(
            f"{CLIENTS[client]:<46} {median['publish_rate']:>14,.0f} "
            f"{median['consume_rate']:>14,.0f} {client_us:>14} {broker_us:>14}"
        )
    print(
        f"\nMedians of {args.runs} run(s) of {args.messages:,} messages of 100 bytes"
        f"{f', each with three headers ({args.headers})' if args.headers else ''}: published "
        "with confirms, consumed with acks; CPU per message as (publish, consume)."
    )


def _shown(figures: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:,.1f}" for key, value in figures.items())


def main() -> None:
    """A child's workload, from its arguments CLIENT PHASE PORT N TOPIC;
    prints its figures."""
    global _headers, _unique
    client, phase, port, count, topic = sys.argv[1:6]
    if sys.argv[6:7] in (["same"], ["unique"]):
        _headers = THREE_HEADERS
        _unique = sys.argv[6] == "unique"
    print(json.dumps(WORKLOADS[client](phase, int(port), int(count), topic)))

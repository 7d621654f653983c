"""`broker-bench`'s command line: options, progress bar, table or JSON."""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import LoopingCall

from broker.bench.clients import CLIENTS
from broker.bench.clients import compare as compare_clients
from broker.bench.payloads import HEADER, Result
from broker.bench.process import BrokerProcess, free_port, redis_cpu_seconds, redis_forget
from broker.bench.scenarios import SCENARIOS, Bench, ceiling


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="broker-bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[*sorted(SCENARIOS), "ceiling", "clients"])
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: start one)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fanout: spread the subscribers over this many processes, so that "
        "the bench's Python is not the limit (the publisher stays in this one)",
    )
    parser.add_argument("--size", type=int, default=100, help="payload bytes (at least 16)")
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s, for latency")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="deliveries in flight per subscriber; 1 is the plain protocol",
    )
    parser.add_argument(
        "--confirms",
        action="store_true",
        help="ingest: publish with confirms, timed until the last one",
    )
    parser.add_argument(
        "--store",
        default="memory",
        help="the broker's store, when the bench starts it: memory, file, or a "
        "Redis URL (redis://HOST:PORT, redis+cluster://HOST:PORT,...)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="with a Redis store: start this many broker nodes; publishers use "
        "the first, subscribers the last",
    )
    parser.add_argument(
        "--redis-replicas", type=int, default=0, help="with a Redis store: the nodes' WAIT"
    )
    parser.add_argument(
        "--reactor",
        default=None,
        help="the reactor the broker runs on (twistd -r), e.g. asyncio; a Redis "
        "store always runs on asyncio",
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="always",
        help="with --store file",
    )
    parser.add_argument(
        "--topics",
        type=int,
        default=1,
        help="ingest: spread the messages over this many topics, created during the run",
    )
    parser.add_argument(
        "--patterns",
        type=int,
        default=0,
        help="ingest: first subscribe this many patterns that match no bench topic",
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="start the broker with --monitor, and ask it for /metrics, /varz, /topicz and "
        "/connz once a second during the run, as Prometheus and the dashboard would",
    )
    parser.add_argument(
        "--users",
        help="start the broker with this users file; the bench's clients sign in as "
        "nobody, so it must grant 'anonymous' what the scenario uses",
    )
    parser.add_argument(
        "--client",
        action="append",
        choices=list(CLIENTS),
        help="clients: measure this client (repeatable; default: each)",
    )
    parser.add_argument("--runs", type=int, default=3, help="clients: runs of each, for medians")
    parser.add_argument(
        "--headers",
        choices=["same", "unique"],
        help="clients: every message carries three small headers, which consumers read: "
        "the same ones, or a traceparent unique to each message",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")
    if args.store not in ("memory", "file") and not args.store.startswith("redis"):
        parser.error("--store is memory, file, or a Redis URL")
    if args.nodes != 1 and not args.store.startswith("redis"):
        parser.error("--nodes needs a Redis --store: other stores are one node's own")
    if args.broker is not None and not args.broker.rpartition(":")[2].isdigit():
        parser.error(f"--broker is HOST:PORT, not {args.broker!r}")
    return args


def run(args: argparse.Namespace) -> Result:
    """Run one scenario, starting a broker unless --broker names one."""
    if args.scenario == "ceiling":
        return ceiling(args)
    from twisted.internet import reactor

    process = None
    others: list[BrokerProcess] = []
    data_dir = None
    redis = args.store if args.store.startswith("redis") else None
    prefix = f"bench-{time.time_ns()}"  # the keys of this run only
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        host, port = host or "127.0.0.1", int(port_text)
    else:
        options = ["--ack-timeout", "60", "--max-prefetch", str(max(1024, args.prefetch))]
        if args.users:
            options += ["--users", args.users]
        monitor_port = None
        if args.monitor:
            monitor_port = free_port()
            options += ["--monitor", f"tcp:{monitor_port}:interface=127.0.0.1"]
        if args.store == "file":
            data_dir = tempfile.mkdtemp(prefix="broker-bench-")
            options += ["--data-dir", data_dir, "--fsync", args.fsync]
        reactor_name = args.reactor
        if redis is not None:
            options += ["--store", redis, "--redis-prefix", prefix]
            options += ["--redis-replicas", str(args.redis_replicas)]
            reactor_name = "asyncio"
        process = BrokerProcess(options, reactor_name)
        others = [BrokerProcess(options, reactor_name) for _ in range(args.nodes - 1)]
        host, port = "127.0.0.1", process.port
    bench = Bench(reactor, host, port, args, process.rss_mb if process else (lambda: float("nan")))
    if others:
        bench.subscribe_port = others[-1].port
    nodes = [process, *others] if process is not None else []
    outcome: list[Any] = []
    broker_cpu_before = sum(node.cpu_seconds() for node in nodes) if nodes else float("nan")
    redis_cpu_before = redis_cpu_seconds(redis) if redis else float("nan")
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.perf_counter()
    watching = None
    if process is not None and args.monitor:
        watching = LoopingCall(_watch, reactor, monitor_port)
        watching.clock = reactor
    try:

        def start() -> None:
            if watching is not None:
                watching.start(1.0).addErrback(lambda failure: None)
            done: Deferred[Result] = ensureDeferred(SCENARIOS[args.scenario](bench))
            done.addBoth(outcome.append)
            done.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(start)  # a scenario that fails at once must still stop it
        reactor.run()
        if watching is not None and watching.running:
            watching.stop()
        rss = bench.broker_rss()
        broker_cpu = (
            sum(node.cpu_seconds() for node in nodes) if nodes else float("nan")
        ) - broker_cpu_before
        redis_cpu = (redis_cpu_seconds(redis) if redis else float("nan")) - redis_cpu_before
    finally:
        for node in nodes:
            node.stop()
        if redis is not None and nodes:
            redis_forget(redis, prefix)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    result = outcome[0]
    if not isinstance(result, Result):
        result.raiseException()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    result.bench_cpu_percent = round(100 * cpu / (time.perf_counter() - wall_before), 1)
    if result.delivered:
        result.broker_cpu_us_per_msg = round(1e6 * broker_cpu / result.delivered, 2)
        if redis:
            # Broker CPU above is every node's; Redis's is every server's.
            result.extra["redis_cpu_us_per_msg"] = round(1e6 * redis_cpu / result.delivered, 2)
    if math.isnan(result.broker_rss_mb):
        result.broker_rss_mb = round(rss, 1)
    result.settings = {k: v for k, v in vars(args).items() if k not in ("json", "scenario")}
    return result


MONITOR_PATHS = ("/metrics", "/varz?history=1", "/topicz?sort=rate&limit=50", "/connz?limit=50")


def _watch(reactor: Any, port: int | None) -> Deferred[Any]:
    """One round of what a Prometheus scrape and an open dashboard ask."""
    from twisted.web.client import Agent, readBody

    agent = Agent(reactor)

    def read(response: Any) -> Deferred[bytes]:
        return readBody(response)

    asked = [
        agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode()).addCallback(read)
        for path in MONITOR_PATHS
    ]
    return gatherResults(asked, consumeErrors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.scenario == "clients":
        compare_clients(args)
        return
    try:
        result = run(args)
    except (ConnectError, DNSLookupError) as error:
        # A broker that is not there is the user's news, not the bench's bug.
        why = "connection refused" if isinstance(error, ConnectionRefusedError) else str(error)
        print(f"broker-bench: cannot reach a broker at {args.broker}: {why}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for key, value in asdict(result).items():
            if key != "settings":
                print(f"{key:>18}: {value}")
    if result.corrupt or result.out_of_order or not result.complete:
        sys.exit(1)


if __name__ == "__main__":
    main()

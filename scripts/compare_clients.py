"""Each Python client against its own server, in one session: this broker's
Twisted, asyncio and blocking clients, and the peers' (nats-py on
nats-server, core and JetStream; redis-py with hiredis on Redis Streams;
paho-mqtt at QoS 1 on Mosquitto). Each publishes N 100-byte messages with
its confirm, then consumes them with its ack, in a process of its own
(scripts/client_workloads.py); the server is started fresh for each,
pinned to CPU 0 and the client to CPU 1 where `taskset` exists. Prints
medians as Markdown: msg/s, client CPU and server CPU per message.

    python scripts/compare_clients.py [--messages 100000] [--runs 3]

The peers' clients are not the broker's dependencies: install them in the
same environment (`pip install nats-py paho-mqtt`); a missing one, or a
missing server, is said and skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare_peers import Server, pinned, servers  # noqa: E402

from broker.bench.clients import CLIENTS as OUR_CLIENTS  # noqa: E402
from broker.bench.process import cpu_seconds, free_port  # noqa: E402

WORKLOADS = Path(__file__).resolve().with_name("client_workloads.py")

# (label, server, client workload, its guarantee, module the client needs)
CLIENTS = [
    *[
        (f"this broker, {label}", "this broker", name, "confirm, ack", None)
        for name, label in OUR_CLIENTS.items()
    ],
    ("nats-py, JetStream", "nats-server", "nats-jetstream", "ack, ack", "nats"),
    ("nats-py, core NATS", "nats-server", "nats-core", "none (publish only)", "nats"),
    ("redis-py, Streams", "redis-server", "redis-streams", "XADD reply, XACK", "redis"),
    ("paho-mqtt, QoS 1", "mosquitto", "mqtt-qos1", "PUBACK, PUBACK", "paho"),
]


def run_phase(
    client: str, phase: str, port: int, count: int, name: str, installed: bool
) -> dict[str, float]:
    arguments = [client, phase, str(port), str(count), name]
    if client in OUR_CLIENTS:  # broker-bench's own workloads
        command = [sys.executable, "-c", "from broker.bench.clients import main; main()"]
    else:
        command = [sys.executable, str(WORKLOADS)]
    # From the checkout (pure Python, unless built in place), or with
    # --installed from the interpreter's installed (compiled) broker.
    where = tempfile.gettempdir() if installed else ROOT
    done = subprocess.run(
        pinned(1, [*command, *arguments]), capture_output=True, text=True, timeout=600, cwd=where
    )
    if done.returncode != 0:
        raise RuntimeError(f"{client} {phase}: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_run(server: Server, client: str, count: int, installed: bool) -> dict[str, float]:
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="clients-"))
    if server.name == "nats-server":
        assert server.command is not None
        server = Server(server.name, server.proto, [*server.command, "-js", "-sd", "{dir}"])
    process = server.start(port, scratch)
    name = f"bench{int(time.time() * 1000) % 100000}"
    try:
        if client == "mqtt-qos1":
            run_phase(client, "prepare", port, count, name, installed)
        figures: dict[str, float] = {}
        phases = ["publish"] if client == "nats-core" else ["publish", "consume"]
        for phase in phases:
            before = cpu_seconds(process.pid)
            measured = run_phase(client, phase, port, count, name, installed)
            server_cpu = cpu_seconds(process.pid) - before
            figures[f"{phase}_rate"] = measured["rate"]
            figures[f"{phase}_client_us"] = measured["cpu_us"]
            figures[f"{phase}_server_us"] = server_cpu / count * 1e6
        return figures
    finally:
        process.terminate()
        process.wait(15)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="Only the clients whose label contains this.")
    parser.add_argument(
        "--installed",
        action="store_true",
        help="Run this broker's clients from the installed package (`pip install .`, "
        "compiled) rather than from this checkout.",
    )
    args = parser.parse_args()
    known = {server.name: server for server in servers()}
    rows = []
    for label, server_name, client, guarantee, module in CLIENTS:
        if args.only and args.only not in label:
            continue
        server = known[server_name]
        if server.command is None:
            print(f"skipped {label}: {server.note}", file=sys.stderr)
            continue
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"skipped {label}: `pip install` its client ({module})", file=sys.stderr)
            continue
        runs = []
        for number in range(args.runs):
            try:
                figures = one_run(server, client, args.messages, args.installed)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"run {number + 1}: {label} failed: {error}", file=sys.stderr)
                continue
            print(f"run {number + 1}: {label}: {figures}", file=sys.stderr)
            runs.append(figures)
        if not runs:
            continue
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append((label, guarantee, median))
    print(
        "| client | guarantee | publish msg/s | consume msg/s | client CPU µs/msg (pub, con) "
        "| server CPU µs/msg (pub, con) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, guarantee, median in rows:
        consume = median.get("consume_rate")
        consumed = "n/a" if consume is None else f"{consume:,.0f}"
        client_us = _pair(median, "client_us")
        server_us = _pair(median, "server_us")
        print(
            f"| {label} | {guarantee} | {median['publish_rate']:,.0f} | {consumed} | "
            f"{client_us} | {server_us} |"
        )
    print(
        f"\nMedians of {args.runs} runs of {args.messages:,} messages of 100 bytes; "
        "server on CPU 0, client on CPU 1."
    )


def _pair(median: dict[str, float], kind: str) -> str:
    shown = [
        f"{median[f'{phase}_{kind}']:.1f}"
        for phase in ("publish", "consume")
        if f"{phase}_{kind}" in median
    ]
    return ", ".join(shown)


if __name__ == "__main__":
    main()

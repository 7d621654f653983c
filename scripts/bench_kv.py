"""The key-value view's get and put, one at a time, beside redis-server's GET
and SET (redis-py) and NATS JetStream's key-value (nats-py, `nats-server
-js`), each server started here, in one run: what one caller waiting for
each answer gets, the figure a configuration lookup sees.

    python scripts/bench_kv.py [--operations 3000] [--runs 3]

The peers' clients are not the broker's dependencies: install them beside
it (`pip install nats-py`); a missing client or server is said and skipped.
Prints Markdown, medians of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_peers import wait_for_port

import broker.aio
from broker.bench.process import free_port

VALUE = b"v" * 100


@contextlib.contextmanager
def running(command: list[str], port: int) -> Iterator[None]:
    """A server started for one measure, stopped after it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, command[0])
        yield
    finally:
        process.terminate()
        process.wait(15)


async def rate(operations: int, call: Callable[[int], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for n in range(operations):
        await call(n)
    return operations / (time.perf_counter() - started)


async def ours(operations: int) -> tuple[float, float]:
    port = free_port()
    twistd = Path(sys.executable).with_name("twistd")
    command = [
        str(twistd),
        "-n",
        "--pidfile=",
        "broker",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    with running(command, port):
        client = await broker.aio.connect(f"tcp://127.0.0.1:{port}")
        kv = client.kv("bench")
        puts = await rate(operations, lambda n: kv.put(f"key-{n % 100}", VALUE))
        gets = await rate(operations, lambda n: kv.get(f"key-{n % 100}"))
        await client.close()
        return puts, gets


async def redis(operations: int) -> tuple[float, float] | str:
    server = shutil.which("redis-server")
    if server is None:
        return "redis-server is not installed"
    from redis.asyncio import Redis

    port = free_port()
    with running([server, "--port", str(port), "--save", "", "--appendonly", "no"], port):
        client = Redis(port=port)
        puts = await rate(operations, lambda n: client.set(f"key-{n % 100}", VALUE))
        gets = await rate(operations, lambda n: client.get(f"key-{n % 100}"))
        await client.aclose()
        return puts, gets


async def nats(operations: int) -> tuple[float, float] | str:
    server = shutil.which("nats-server")
    try:
        import nats as nats_py
    except ImportError:
        return "nats-py is not installed"
    if server is None:
        return "nats-server is not installed"
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        command = [server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", scratch]
        with running(command, port):
            connection = await nats_py.connect(f"nats://127.0.0.1:{port}")
            kv = await connection.jetstream().create_key_value(bucket="bench")
            puts = await rate(operations, lambda n: kv.put(f"key-{n % 100}", VALUE))
            gets = await rate(operations, lambda n: kv.get(f"key-{n % 100}"))
            await connection.close()
            return puts, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    systems = {
        "this broker (asyncio client, `kv.put`/`kv.get`)": ours,
        "redis-server (redis-py asyncio, SET/GET)": redis,
        "NATS JetStream KV (nats-py, `kv.put`/`kv.get`)": nats,
    }
    print(f"{options.operations:,} operations one at a time, medians of {options.runs} run(s):\n")
    print("| system | put/s | get/s |")
    print("| --- | ---: | ---: |")
    for name, measure in systems.items():
        results = [asyncio.run(measure(options.operations)) for _ in range(options.runs)]
        if isinstance(results[0], str):
            print(f"| {name} | {results[0]} | |")
            continue
        puts = statistics.median(result[0] for result in results if not isinstance(result, str))
        gets = statistics.median(result[1] for result in results if not isinstance(result, str))
        print(f"| {name} | {puts:,.0f} | {gets:,.0f} |")


if __name__ == "__main__":
    main()

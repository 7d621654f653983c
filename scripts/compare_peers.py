"""Run this broker beside NATS, Redis pub/sub and Mosquitto in one session,
drive each with the Go load generator (../shared/tools/loadgen) where it is
present, and this broker with broker-bench too; print medians as Markdown.

    python scripts/compare_peers.py [--runs 3] [--loadgen PATH]

Each server runs on a free loopback port, pinned to CPU 0 (the load to CPU
1, where `taskset` exists); its CPU time is read from /proc before and after
each run and divided by the messages delivered. Peers come from Debian
(`apt-get install nats-server redis-server mosquitto`); a missing one is
said and skipped, as is the load generator if it cannot be found or built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_DIR = ROOT.parent / "shared" / "tools" / "loadgen"
sys.path.insert(0, str(ROOT))

from broker.bench.process import cpu_seconds, free_port  # noqa: E402


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") else command


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited at start") from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


class Server:
    """One system under test, started fresh for each run."""

    def __init__(self, name: str, proto: str, command: list[str] | None, note: str = "") -> None:
        self.name = name
        self.proto = proto
        self.command = command
        self.note = note

    def start(self, port: int, scratch: Path) -> subprocess.Popen:
        assert self.command is not None
        args = [
            part.replace("{port}", str(port)).replace("{dir}", str(scratch))
            for part in self.command
        ]
        if self.name == "mosquitto":
            config = scratch / "mosquitto.conf"
            # No cap on queued QoS 1 messages: at the default (1,000) Mosquitto
            # drops what a subscriber has not taken yet, and the run never ends.
            config.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
            )
        process = subprocess.Popen(
            pinned(0, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=scratch
        )
        wait_for_port(port, process, self.name)
        return process


def servers() -> list[Server]:
    twistd = Path(sys.executable).with_name("twistd")
    broker = [str(twistd if twistd.exists() else "twistd"), "-n", "--pidfile=", "-l", os.devnull]
    broker += ["broker", "--port", "tcp:{port}:interface=127.0.0.1", "--max-prefetch", "1024"]
    found = [Server("this broker", "seed", broker)]
    for name, proto, binary, command in (
        ("nats-server", "nats", "nats-server", ["-a", "127.0.0.1", "-p", "{port}"]),
        (
            "redis-server",
            "redis",
            "redis-server",
            ["--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        ),
        ("mosquitto", "mqtt", "mosquitto", ["-c", "{dir}/mosquitto.conf"]),
    ):
        path = shutil.which(binary) or (
            f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
        )
        found.append(
            Server(
                name,
                proto,
                [path, *command] if path else None,
                "" if path else f"{binary} is not installed",
            )
        )
    return found


# (label, systems it applies to, loadgen arguments)
SCENARIOS = [
    ("1 subscriber, as fast as possible", None, ["-n", "{n}"]),
    ("10 subscribers", None, ["-n", "{n10}", "-subs", "10"]),
    ("latency at 1,000 msg/s", None, ["-n", "5000", "-rate", "1000"]),
]


def loadgen_path(given: str | None) -> str | None:
    if given:
        return given
    build = LOADGEN_DIR / "build.sh"
    if not build.exists():
        return None
    done = subprocess.run(["bash", str(build)], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout else ""
    return path if path and Path(path).exists() else None


def parse(line: str) -> dict[str, float]:
    """The figures of one loadgen line (see its README)."""

    def number(pattern: str) -> float:
        found = re.search(pattern, line)
        return float(found.group(1)) if found else float("nan")

    return {
        "delivered": number(r"delivered=(\d+)/"),
        "rate": number(r"msgs/s=([0-9.]+)"),
        "p50": number(r"p50=([0-9.]+)ms"),
        "p99": number(r"p99=([0-9.]+)ms"),
    }


def run_loadgen(
    loadgen: str, server: Server, variant: list[str], scenario: list[str], n: int, scratch: Path
) -> dict[str, float]:
    port = free_port()
    process = server.start(port, scratch)
    try:
        time.sleep(0.3)
        before = cpu_seconds(process.pid)
        args = [a.replace("{n}", str(n)).replace("{n10}", str(max(n // 5, 1000))) for a in scenario]
        done = subprocess.run(
            pinned(1, [loadgen, "-addr", f"127.0.0.1:{port}", *variant, *args]),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        after = cpu_seconds(process.pid)
    finally:
        process.terminate()
        process.wait(10)
    lines = [line for line in done.stdout.splitlines() if "delivered=" in line]
    result = parse(lines[-1] if lines else "")
    counts = re.search(r"delivered=(\d+)/(\d+)", lines[-1]) if lines else None
    if counts is None or counts.group(1) != counts.group(2):
        result["rate"] = float("nan")  # a run that lost messages is no figure
    delivered = result["delivered"]
    result["cpu_us"] = 1e6 * (after - before) / delivered if delivered > 0 else float("nan")
    return result


def run_bench(args: list[str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "broker.bench", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    result = json.loads(done.stdout)
    return {
        "rate": result["msgs_per_sec"],
        "cpu_us": result["broker_cpu_us_per_msg"],
        "p50": result["p50_ms"],
        "p99": result["p99_ms"],
    }


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--loadgen", help="the load generator's binary (default: build it)")
    options = parser.parse_args()
    loadgen = loadgen_path(options.loadgen)
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    systems = servers()
    for server in systems:
        if server.command is None:
            print(f"skipped {server.name}: {server.note}", file=sys.stderr)
    if loadgen is None:
        print(f"no load generator (looked for {LOADGEN_DIR}): broker-bench only", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for run in range(options.runs):
            for label, _, scenario in SCENARIOS if loadgen else []:
                for server in systems:
                    if server.command is None:
                        continue
                    variants = [("", [])]
                    if server.name == "this broker":
                        variants = [
                            ("plain protocol, 1 in flight", ["-proto", "seed"]),
                            ("extensions, prefetch 256", ["-proto", "seedx", "-prefetch", "256"]),
                        ]
                    elif server.proto == "mqtt":
                        variants = [("QoS 1, acked", ["-proto", "mqtt"])]
                    else:
                        variants = [("no acks", ["-proto", server.proto])]
                    for variant_label, variant in variants:
                        n = options.messages
                        if variant[-1:] == ["seed"] and "-rate" not in scenario:
                            n = max(options.messages // 10, 10_000)  # one at a time: fewer
                        if server.proto == "mqtt" and "-rate" not in scenario:
                            n = max(options.messages // 3, 10_000)
                        result = run_loadgen(loadgen, server, variant, scenario, n, scratch)
                        key = (label, f"{server.name}, {variant_label}")
                        rows.setdefault(key, []).append(result)
                        print(f"run {run + 1}: {key[0]} / {key[1]}: {result}", file=sys.stderr)
            for label, args in (
                (
                    "broker-bench, prefetch 256",
                    ["fanout", "--messages", str(options.messages), "--prefetch", "256"],
                ),
                (
                    "broker-bench, plain protocol",
                    ["fanout", "--messages", str(options.messages // 10)],
                ),
                (
                    "broker-bench, latency at 1,000 msg/s",
                    ["latency", "--messages", "5000", "--rate", "1000", "--prefetch", "256"],
                ),
            ):
                result = run_bench(args)
                rows.setdefault((label, "this broker (Python bench)"), []).append(result)
                print(f"run {run + 1}: {label}: {result}", file=sys.stderr)
    print("| scenario | system | msg/s delivered | p50 ms | p99 ms | server CPU µs/msg |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (label, system), results in rows.items():
        rate, p50, p99, cpu = (
            median([r[key] for r in results]) for key in ("rate", "p50", "p99", "cpu_us")
        )
        print(f"| {label} | {system} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.2f} |")
    print(f"\nMedians of {options.runs} runs; this machine: {os.cpu_count()} cores.")
    print(f"This broker ran with its {broker_build()}.")
    return 0


def broker_build() -> str:
    """What the started broker's interpreter imports: its hot paths compiled
    or in Python (asked from elsewhere than this tree, as twistd runs)."""
    question = "from broker.compiled import describe; print(describe())"
    with tempfile.TemporaryDirectory() as elsewhere:
        answer = subprocess.run(
            [sys.executable, "-c", question], cwd=elsewhere, capture_output=True, text=True
        )
    return answer.stdout.strip() or f"build unknown ({answer.stderr.strip()[-200:]})"


if __name__ == "__main__":
    sys.exit(main())

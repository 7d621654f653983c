"""A `twistd broker` child for the bench, and its memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class BrokerProcess:
    """`twistd -n broker` on a free loopback port, for the bench's duration."""

    def __init__(self, extra: list[str], reactor: str | None = None) -> None:
        self.port = free_port()
        twistd = Path(sys.executable).with_name("twistd")
        command = [
            str(twistd) if twistd.exists() else "twistd",
            "-n",
            *(["-r", reactor] if reactor else []),
            "--pidfile=",
            "-l",
            os.devnull,
            "broker",
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            *extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("twistd broker exited at start") from None
                time.sleep(0.05)
        raise RuntimeError("twistd broker did not start listening")

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time the broker has used so far, user and system."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            print("twistd broker did not stop within 30 s; killing it", file=sys.stderr)
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    try:
        # Fields 14 and 15 of /proc/PID/stat (after the command's parentheses).
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _redis_client(url: str) -> Any:
    """A blocking redis-py client for a --store URL (the bench's own reads)."""
    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster

    from broker.log.redis_settings import parse_redis_url

    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "ssl": target.tls,
    }
    if target.cluster:
        nodes = [ClusterNode(host, port) for host, port in target.seeds]
        return RedisCluster(startup_nodes=nodes, **options)
    host, port = target.seeds[0]
    return Redis(host=host, port=port, **options)


def redis_forget(url: str, prefix: str) -> int:
    """Delete the keys one bench run wrote (all start with `prefix`)."""
    client = _redis_client(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for key in keys:
            client.unlink(key)
        return len(keys)
    finally:
        client.close()


def redis_cpu_seconds(url: str) -> float:
    """CPU time every Redis server behind a --store URL has used so far
    (INFO cpu, summed over a cluster's nodes, replicas included)."""
    from redis.cluster import RedisCluster

    client = _redis_client(url)
    try:
        if isinstance(client, RedisCluster):
            infos = client.info("cpu", target_nodes=RedisCluster.ALL_NODES)
            return sum(info["used_cpu_sys"] + info["used_cpu_user"] for info in infos.values())
        info = client.info("cpu")
        return float(info["used_cpu_sys"] + info["used_cpu_user"])
    finally:
        client.close()

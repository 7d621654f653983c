"""Real Redis servers for the tests: a standalone Redis and a Redis Cluster of
three primaries with one replica each, on loopback, from Debian's
`redis-server`.

CI starts them once (`python -m tests.redis_servers start DIR` prints the
`export` lines the tests read) and stops them at the end
(`python -m tests.redis_servers stop DIR`). Tests that kill a node restart
it from the same directory with `restart(DIR, port)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STANDALONE_URL = "TEST_REDIS_URL"
CLUSTER_URL = "TEST_REDIS_CLUSTER_URL"
SERVERS_DIR = "TEST_REDIS_DIR"
# A node is declared failed after this many milliseconds: a failover in the
# tests takes a second or two, not the default fifteen.
NODE_TIMEOUT_MS = 1000


def available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _cluster_ports() -> list[int]:
    """Six ports whose cluster bus ports (port + 10000) are free as well."""
    while True:
        ports = [port for port in _free_ports(12) if port < 55000][:6]
        if len(ports) < 6:
            continue
        try:
            probes = []
            for port in ports:
                s = socket.socket()
                probes.append(s)
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        finally:
            for s in probes:
                s.close()
        return ports


def _config(directory: Path, port: int, cluster: bool) -> Path:
    node = directory / str(port)
    node.mkdir(parents=True, exist_ok=True)
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {node}",
        "daemonize yes",
        f"pidfile {node}/redis.pid",
        f"logfile {node}/redis.log",
        "save ''",
        "appendonly no",
    ]
    if cluster:
        lines += [
            "cluster-enabled yes",
            f"cluster-config-file {node}/nodes.conf",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            # A replica may be promoted however stale: the tests kill primaries.
            "cluster-replica-validity-factor 0",
            # As docs/scaling.md recommends: a shard without its replica
            # refuses writes, and the other shards go on serving.
            "cluster-require-full-coverage no",
            "min-replicas-to-write 1",
            # A replica that comes back syncs at once, not after 5 s: until
            # then its shard refuses writes (min-replicas-to-write 1).
            "repl-diskless-sync-delay 0",
        ]
    path = node / "redis.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_server(config: Path) -> None:
    subprocess.run(["redis-server", str(config)], check=True, capture_output=True)
    port = int(config.read_text().split("\n")[0].split()[1])
    _wait_until(lambda: _cli(port, "ping") == "PONG", f"redis on port {port}")


def start(directory: Path) -> dict[str, str]:
    """Start both; return the environment the tests read."""
    directory.mkdir(parents=True, exist_ok=True)
    standalone, *cluster = _free_ports(1) + _cluster_ports()
    start_server(_config(directory, standalone, cluster=False))
    for port in cluster:
        start_server(_config(directory, port, cluster=True))
    subprocess.run(
        ["redis-cli", "--cluster", "create"]
        + [f"127.0.0.1:{port}" for port in cluster]
        + ["--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        capture_output=True,
    )
    (directory / "ports.json").write_text(
        json.dumps({"standalone": standalone, "cluster": cluster})
    )
    # Not only "ok": until each replica has synced, a WAIT for it times out
    # (a publish with --redis-replicas 1 is refused), however long a test waits.
    wait_until_healthy(directory)
    return {
        STANDALONE_URL: f"redis://127.0.0.1:{standalone}",
        CLUSTER_URL: "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster[:3]),
        SERVERS_DIR: str(directory),
    }


def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in _cli(port, "cluster", "info")


def ports(directory: Path) -> dict:
    return json.loads((directory / "ports.json").read_text())


def pid(directory: Path, port: int) -> int | None:
    try:
        return int((directory / str(port) / "redis.pid").read_text())
    except (OSError, ValueError):
        return None


def kill(directory: Path, port: int, sig: int = signal.SIGKILL) -> None:
    found = pid(directory, port)
    if found is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(found, sig)
        (directory / str(port) / "redis.pid").unlink(missing_ok=True)


def restart(directory: Path, port: int) -> None:
    start_server(directory / str(port) / "redis.conf")


def primary_for_slot(directory: Path, slot: int) -> int:
    """The port of the primary that serves `slot` now, as a live node sees it."""
    for port in ports(directory)["cluster"]:
        if _cli(port, "ping") != "PONG":
            continue
        for line in _cli(port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for served in fields[8:]:
                low, _, high = served.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    raise RuntimeError(f"no live primary serves slot {slot}")


def replica_of(directory: Path, primary: int) -> int:
    """The port of the replica of the primary at port `primary`."""
    lines = [line.split() for line in _cli(primary, "cluster", "nodes").splitlines()]
    (primary_id,) = [f[0] for f in lines if "myself" in f[2]]
    for fields in lines:
        if "slave" in fields[2] and fields[3] == primary_id:
            return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    raise RuntimeError(f"the primary at {primary} has no replica")


def hand_over(directory: Path, primary: int) -> int:
    """A manual failover, as an operator starts one: the replica of the
    primary at `primary` takes its slots over (the old primary becomes its
    replica, at once). Returns the new primary's port once the old one
    says it is a replica."""
    replica = replica_of(directory, primary)
    assert _cli(replica, "cluster", "failover") == "OK"
    _wait_until(
        lambda: (
            "role:slave" in _cli(primary, "info", "replication")
            and _replica_known(directory, replica, primary)
        ),
        f"the primary at {primary} to hand over to {replica}",
    )
    return replica


def _replica_known(directory: Path, primary: int, replica: int) -> bool:
    try:
        return replica_of(directory, primary) == replica
    except RuntimeError:
        return False


def config_set(port: int, name: str, value: str) -> None:
    """Change a setting of the server at `port` (as an operator would)."""
    assert _cli(port, "config", "set", name, value) == "OK"


def wait_for_good_replicas(port: int, count: int) -> None:
    """Until the primary at `port` counts `count` replicas good enough for
    min-replicas-to-write."""
    _wait_until(
        lambda: f"min_slaves_good_slaves:{count}" in _cli(port, "info", "replication"),
        f"{count} good replica(s) on {port}",
    )


def slot_ranges(directory: Path) -> dict[int, list[tuple[int, int]]]:
    """The slot ranges each live primary serves, by port (one node's view)."""
    for port in ports(directory)["cluster"]:
        if _cli(port, "ping") != "PONG":
            continue
        served: dict[int, list[tuple[int, int]]] = {}
        for line in _cli(port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            owner = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for entry in fields[8:]:
                low, _, high = entry.partition("-")
                if low.isdigit():
                    served.setdefault(owner, []).append((int(low), int(high or low)))
        return served
    raise RuntimeError("no live cluster node")


def wait_until_healthy(directory: Path, timeout: float = 60.0) -> None:
    _wait_until(lambda: cluster_healthy(directory), "the cluster to heal", timeout)


def cluster_healthy(directory: Path) -> bool:
    """Every node up, the cluster ok, and every primary with a replica whose
    link is up and synced (so that WAIT for one replica is answered at once)."""
    nodes = ports(directory)["cluster"]
    if not all(_cli(port, "ping") == "PONG" for port in nodes):
        return False
    if not all(_cluster_ok(port) for port in nodes):
        return False
    lines = _cli(nodes[0], "cluster", "nodes").splitlines()
    masters = [line.split()[0] for line in lines if "master" in line.split()[2]]
    replicas_of = [line.split()[3] for line in lines if "slave" in line.split()[2]]
    if not (all(m in replicas_of for m in masters) and len(masters) == 3):
        return False
    return all(replicas_linked(port) for port in nodes)


def replicas_linked(port: int) -> bool:
    """A replica's link to its primary is up; a primary has a replica online."""
    info = _cli(port, "info", "replication")
    if "role:slave" in info:
        return "master_link_status:up" in info and "master_sync_in_progress:0" in info
    return "connected_slaves:0" not in info and "state=online" in info


def stop(directory: Path) -> None:
    for port_dir in directory.iterdir() if directory.exists() else []:
        if port_dir.is_dir() and port_dir.name.isdigit():
            kill(directory, int(port_dir.name), signal.SIGTERM)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print("usage: python -m tests.redis_servers start|stop DIR", file=sys.stderr)
        return 2
    directory = Path(argv[2]).resolve()
    if argv[1] == "stop":
        stop(directory)
        return 0
    for name, value in start(directory).items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

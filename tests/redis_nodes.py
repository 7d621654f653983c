"""Broker nodes on Redis for the tests: `twistd -r asyncio broker --store ...`
subprocesses, each test with a key prefix of its own on the shared servers."""

from __future__ import annotations

import uuid
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred

from tests.process import Child, free_port, spawn_broker


def unique_prefix() -> str:
    """Keys no other test (or earlier run) wrote."""
    return f"test-{uuid.uuid4().hex[:12]}"


class Node:
    """A broker node: its port, its child process, how it was started."""

    def __init__(
        self,
        tmp_path: Path,
        store: str,
        prefix: str,
        *options: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.prefix = prefix
        self._env = env
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self._arguments = (tmp_path, store, prefix, *options)
        self.child: Child | None = None

    async def start(self) -> Node:
        tmp_path, store, prefix, *options = self._arguments
        self.child = spawn_broker(
            tmp_path,
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--store",
            store,
            "--redis-prefix",
            prefix,
            *options,
            reactor="asyncio",
            env=self._env,
        )
        await self.child.line(self.ready_line, timeout=30)
        return self

    ready_line = "connected to Redis at"

    def rss_kib(self) -> int:
        """The node's resident memory."""
        assert self.child is not None
        pid = self.child.transport.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.child is not None and self.child.transport.pid is not None:
            self.child.signal("TERM")
            await self.child.ended

    async def kill(self) -> None:
        assert self.child is not None
        self.child.signal("KILL")
        assert await self.child.ended == "signal 9"


async def start_nodes(tmp_path: Path, store: str, count: int, *options: str) -> list[Node]:
    prefix = unique_prefix()
    nodes = []
    for number in range(count):
        directory = tmp_path / f"node{number}"
        directory.mkdir(exist_ok=True)
        nodes.append(await Node(directory, store, prefix, *options).start())
    return nodes

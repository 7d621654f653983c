"""Child processes for tests: a twistd broker, the example; their output by line."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd() -> str:
    found = Path(sys.executable).with_name("twistd")
    return str(found) if found.exists() else shutil.which("twistd") or "twistd"


class Child(ProcessProtocol):
    """A running child; `line(text)` fires once a line containing text appears."""

    def __init__(self) -> None:
        self.output = ""
        self.ended: Deferred[int | str] = Deferred()
        """Fires with the exit code, or the name of the signal that ended it."""
        self._waiters: list[tuple[str, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for waiter in [w for w in self._waiters if w[0] in self.output]:
            self._waiters.remove(waiter)
            waiter[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = value.exitCode if value.exitCode is not None else f"signal {value.signal}"
        for _, waiter in self._waiters:
            waiter.errback(AssertionError(f"exited {code} first; output:\n{self.output}"))
        self._waiters.clear()
        self.ended.callback(code)

    def line(self, text: str, timeout: float = 15) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if text in self.output:
            waiter.callback(None)
        else:
            self._waiters.append((text, waiter))
            waiter.addTimeout(timeout, reactor)
        return waiter

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)


def spawn(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Child:
    child = Child()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env or {}))
    reactor.spawnProcess(child, args[0], args, env=env, path=str(cwd or ROOT))
    return child


def spawn_broker(
    tmp_path: Path, *options: str, env: dict[str, str] | None = None, reactor: str | None = None
) -> Child:
    """`twistd -n broker OPTIONS` in tmp_path (its pid file lands there), on
    `reactor` if given (`twistd -r REACTOR`)."""
    choice = ["-r", reactor] if reactor else []
    arguments = [twistd(), "-n", *choice, "--pidfile=", "broker", *options]
    return spawn(arguments, cwd=tmp_path, env=env)


async def start_durable_broker(tmp_path: Path, port: int, *options: str) -> Child:
    """A broker on 127.0.0.1:port keeping tmp_path/data with --fsync always,
    once it listens."""
    broker = spawn_broker(
        tmp_path,
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        str(tmp_path / "data"),
        "--fsync",
        "always",
        *options,
    )
    await broker.line("BrokerFactory starting on")
    return broker

"""Every client the project ships behind one blocking face, so that one
behaviour suite (tests/system/test_clients.py) runs each scenario through
each of them: the Twisted client (broker.client, each call made in the
reactor's thread with `blockingCallFromThread`), the asyncio client (broker.aio, on an event
loop the test drives) and the blocking client (broker.sync, as it is).

Every scenario runs in a worker thread (`in_thread`), as a blocking
program would, while the reactor runs on in pytest-twisted's; the broker
is a `twistd broker` child started with `subprocess`. `GoLikeProxy` stands in for
the seed's Go broker: it answers Hello with "unknown action" and reads that
connection no more, and relays any other connection to a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred

import broker.aio
import broker.client
import broker.sync
from broker import wire
from broker.wire import StartAt
from tests.process import ROOT, free_port, twistd

KINDS = ["twisted", "asyncio", "blocking"]


@dataclass(frozen=True)
class Got:
    """A delivery as every client reports it."""

    topic: str
    offset: int | None
    data: bytes
    attempt: int = 1
    headers: tuple[tuple[str, str], ...] = ()


class Sub(Protocol):
    def take(self, count: int, timeout: float = 15, ack: bool = True) -> list[Got]: ...

    def close(self) -> None: ...


class BatchSub(Protocol):
    def take_batches(self, count: int, timeout: float = 15, ack: bool = True) -> list[list[Got]]:
        """Batches as they come until `count` messages came; each answered whole."""
        ...

    def close(self) -> None: ...


class KV(Protocol):
    def put(self, key: str, value: bytes) -> int | None: ...

    def update(self, key: str, value: bytes, revision: int) -> int | None: ...

    def delete(self, key: str) -> int | None: ...

    def get(self, key: str) -> broker.sync.Entry | None: ...

    def keys(self, prefix: str = "") -> list[str]: ...

    def history(self, key: str) -> list[broker.sync.Entry]: ...

    def watch(
        self, count: int, prefix: str = "", change: Any = None, after: int = 0
    ) -> list[broker.sync.Entry]:
        """The first `count` entries a watch gives; once `after` came,
        `change()` runs in a thread of its own (a writer making a change)."""
        ...


class Client(Protocol):
    def publish(
        self, topic: str, data: bytes, headers: Any = None, delay: Any = None, ttl: Any = None
    ) -> int | None: ...

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int | None]: ...

    def subscribe_batches(
        self, topics: list[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> BatchSub: ...

    def request(self, topic: str, data: bytes, headers: Any = None, timeout: float = 5) -> Got: ...

    def reply(self, topic: str, handler: Any) -> None:
        """Answer `topic`'s requests with `handler(Got)` (data, (data,
        headers) or None) until the client closes."""

    def kv(self, bucket: str) -> KV:
        """The key-value view of `bucket`, with blocking calls."""

    def subscribe(
        self,
        topics: list[str],
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> Sub: ...

    def close(self) -> None: ...


def wait_until(condition: Any, timeout: float = 15, what: str = "the condition") -> None:
    """Poll `condition` until it holds; AssertionError naming `what` if not
    by `timeout` (for conditions outside any event loop: a port that opens)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class BrokerProcess:
    """`twistd -n broker` on 127.0.0.1:port, run by subprocess."""

    def __init__(
        self, workdir: Path, *options: str, port: int | None = None, reactor: str | None = None
    ) -> None:
        self.workdir = workdir
        self.options = options
        self.reactor = reactor
        """twistd's -r (a Redis store runs on asyncio)."""
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "broker.log"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> BrokerProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        arguments = [twistd(), "-n", "--pidfile="]
        arguments += ["-r", self.reactor] if self.reactor else []
        arguments += ["broker"]
        arguments += ["--port", f"tcp:{self.port}:interface=127.0.0.1", *self.options]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                arguments, cwd=self.workdir, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        wait_until(lambda: accepts(self.port) or self.process.poll() is not None)
        if self.process.poll() is not None:
            raise AssertionError(f"the broker exited: {self.log.read_text()}")
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class GoLikeProxy:
    """A broker that speaks only the plain protocol, as the seed's Go broker
    does: Hello gets "unknown action" and the connection is read no more;
    any other first action is relayed to the real broker at `upstream`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.hellos = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        first = b""
        while len(first) < 2:
            chunk = connection.recv(2 - len(first))
            if not chunk:
                connection.close()
                return
            first += chunk
        if first == wire.encode_u16(wire.HELLO):
            self.hellos += 1
            connection.sendall(wire.encode_error(wire.ERR_UNKNOWN_ACTION))
            self._held.append(connection)  # read no more, close nothing
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        upstream.sendall(first)
        threading.Thread(target=_pump, args=(upstream, connection), daemon=True).start()
        _pump(connection, upstream)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for connection in self._held:
            connection.close()


class ConfirmCuttingProxy:
    """Relays connections to the broker at `upstream`, but cuts the first
    one at the broker's first answer after Hello (the confirm of what the
    client published): the publish was stored and its confirm lost, the
    case a resend must not store twice. Later connections go through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        state = {"hello_answered": False, "published": False}
        cutting = self.cuts == 0
        if cutting:
            self.cuts += 1

        def to_client() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    if cutting and state["published"]:
                        break  # the confirm: lost with the connection
                    state["hello_answered"] = True
                    client.sendall(data)
            for side in (client, upstream):
                with contextlib.suppress(OSError):
                    side.shutdown(socket.SHUT_RDWR)
                side.close()

        threading.Thread(target=to_client, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if state["hello_answered"]:
                    state["published"] = True
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


# The Twisted client, called from a worker thread as a blocking program
# calls it: each call runs in the reactor's thread (blockingCallFromThread).


def _in_reactor(work: Any, *args: Any) -> Any:
    return threads.blockingCallFromThread(reactor, work, *args)


class _TwistedSub:
    def __init__(self, client: broker.client.BrokerClient, topics: list[str]) -> None:
        self._client = client
        self._topics = topics
        self._messages: list[broker.client.Message] = []
        self._answers: list[Deferred[bool]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def handle(self, message: broker.client.Message) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self._messages.append(message)
        self._answers.append(answer)
        for waiter in [w for w in self._waiters if len(self._messages) >= w[0]]:
            self._waiters.remove(waiter)
            waiter[1].callback(None)
        return answer

    def _arrived(self, count: int, timeout: float) -> Deferred[None]:
        arrived: Deferred[None] = Deferred()
        if len(self._messages) >= count:
            arrived.callback(None)
            return arrived
        self._waiters.append((count, arrived))

        def timed_out(failure: Any) -> Any:
            self._waiters = [w for w in self._waiters if w[1] is not arrived]
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise TimeoutError(f"{count} messages did not come within {timeout} s")
            return failure

        return arrived.addTimeout(timeout, reactor).addErrback(timed_out)

    def _taken(self, count: int, ack: bool) -> list[Got]:
        taken, self._messages = self._messages[:count], self._messages[count:]
        answers, self._answers = self._answers[:count], self._answers[count:]
        if ack:
            for answer in answers:
                answer.callback(True)
        return [Got(m.topic, m.offset, m.payload, m.attempt, m.headers.pairs()) for m in taken]

    def take(self, count: int, timeout: float = 15, ack: bool = True) -> list[Got]:
        _in_reactor(self._arrived, count, timeout)
        return _in_reactor(self._taken, count, ack)

    def close(self) -> None:
        _in_reactor(self._client.unsubscribe, self._topics)


class _TwistedBatchSub:
    def __init__(self, client: broker.client.BrokerClient, topics: list[str]) -> None:
        self._client = client
        self._topics = topics
        self._batches: list[tuple[list[broker.client.Message], Deferred[bool]]] = []
        self._waiting: Deferred[None] | None = None

    def handle(self, messages: list[broker.client.Message]) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self._batches.append((messages, answer))
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)
        return answer

    def _next(self, timeout: float) -> Deferred[None]:
        arrived: Deferred[None] = Deferred()
        if self._batches:
            arrived.callback(None)
            return arrived
        self._waiting = arrived

        def timed_out(failure: Any) -> Any:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise TimeoutError(f"no batch came within {timeout} s")
            return failure

        return arrived.addTimeout(timeout, reactor).addErrback(timed_out)

    def _take(self, ack: bool) -> list[Got]:
        messages, answer = self._batches.pop(0)
        answer.callback(ack)
        return [Got(m.topic, m.offset, m.payload, m.attempt, m.headers.pairs()) for m in messages]

    def take_batches(self, count: int, timeout: float = 15, ack: bool = True) -> list[list[Got]]:
        taken: list[list[Got]] = []
        while sum(map(len, taken)) < count:
            _in_reactor(self._next, timeout)
            taken.append(_in_reactor(self._take, ack))
        return taken

    def close(self) -> None:
        _in_reactor(self._client.unsubscribe, self._topics)


class TwistedClient:
    def __init__(self, url: str, **options: Any) -> None:
        host_port = url.partition("://")[2]
        self._client = _in_reactor(
            lambda: broker.client.connect(
                reactor, host_port, retry_policy=lambda attempt: 0.1, **options
            )
        )
        try:
            _in_reactor(self._client.connected, 15)
        except BaseException:
            self.close()
            raise

    def publish(
        self, topic: str, data: bytes, headers: Any = None, delay: Any = None, ttl: Any = None
    ) -> int | None:
        return _in_reactor(lambda: self._client.publish(topic, data, headers, delay=delay, ttl=ttl))

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int | None]:
        return _in_reactor(self._client.publish_many, messages)

    def subscribe_batches(
        self, topics: list[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> _TwistedBatchSub:
        sub = _TwistedBatchSub(self._client, topics)
        _in_reactor(
            lambda: self._client.subscribe_batches(topics, sub.handle, start=start, offset=offset)
        )
        return sub

    def subscribe(
        self,
        topics: list[str],
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> _TwistedSub:
        sub = _TwistedSub(self._client, topics)
        _in_reactor(
            lambda: self._client.subscribe(
                topics, sub.handle, start=start, offset=offset, group=group, durable=durable
            )
        )
        return sub

    def request(self, topic: str, data: bytes, headers: Any = None, timeout: float = 5) -> Got:
        return _got(_in_reactor(self._client.request, topic, data, headers, timeout))

    def reply(self, topic: str, handler: Any) -> None:
        _in_reactor(self._client.reply, topic, lambda message: handler(_got(message)))

    def kv(self, bucket: str) -> _TwistedKV:
        return _TwistedKV(self._client.kv(bucket))

    def close(self) -> None:
        _in_reactor(self._client.close)


class _TwistedKV:
    def __init__(self, view: Any) -> None:
        self._view = view

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._view, name)
        return lambda *args: _in_reactor(call, *args)

    def watch(self, count: int, prefix: str = "", change: Any = None, after: int = 0) -> list[Any]:
        got: list[Any] = []
        enough: Deferred[None] = Deferred()

        changed: list[Deferred[Any]] = []

        def handler(entry: Any) -> bool:
            got.append(entry)
            if change is not None and len(got) == after:
                changed.append(threads.deferToThread(change))
            if len(got) == count and not enough.called:
                enough.callback(None)
            return True

        def start() -> Deferred[None]:
            enough.addTimeout(15, reactor)
            return self._view.watch(handler, prefix)

        _in_reactor(start)
        _in_reactor(lambda: enough)
        for done in changed:
            _in_reactor(lambda done=done: done)
        return got[:count]


def _got(message: broker.client.Message) -> Got:
    return Got(
        message.topic, message.offset, message.payload, message.attempt, message.headers.pairs()
    )


# The asyncio client.


class _AsyncioSub:
    def __init__(self, owner: AsyncioClient, subscription: broker.aio.Subscription) -> None:
        self._owner = owner
        self._subscription = subscription

    def take(self, count: int, timeout: float = 15, ack: bool = True) -> list[Got]:
        """(Builtin TimeoutError is asyncio's since Python 3.11.)"""

        async def take() -> list[Got]:
            got = []
            for _ in range(count):
                delivery = await self._subscription.next(timeout)
                if ack:
                    await delivery.ack()
                got.append(
                    Got(
                        delivery.topic,
                        delivery.offset,
                        delivery.data,
                        delivery.attempt,
                        delivery.headers.pairs(),
                    )
                )
            return got

        return self._owner.run(take())

    def close(self) -> None:
        self._owner.run(self._subscription.unsubscribe())


class _AsyncioBatchSub(_AsyncioSub):
    def take_batches(self, count: int, timeout: float = 15, ack: bool = True) -> list[list[Got]]:
        async def take() -> list[list[Got]]:
            taken: list[list[Got]] = []
            while sum(map(len, taken)) < count:
                batch = await self._subscription.batch(timeout=timeout)
                for delivery in batch:
                    delivery.answer(ack)
                taken.append(
                    [Got(d.topic, d.offset, d.data, d.attempt, d.headers.pairs()) for d in batch]
                )
            return taken

        return self._owner.run(take())


class AsyncioClient:
    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self.run(
                broker.aio.connect(url, retry_policy=lambda attempt: 0.1, **options)
            )
        except BaseException:
            self._loop.close()
            raise

    def run(self, work: Any) -> Any:
        return self._loop.run_until_complete(work)

    def request(self, topic: str, data: bytes, headers: Any = None, timeout: float = 5) -> Got:
        reply = self.run(self._client.request(topic, data, headers=headers, timeout=timeout))
        return Got(reply.topic, reply.offset, reply.data, reply.attempt, reply.headers.pairs())

    def reply(self, topic: str, handler: Any) -> None:
        def answer(request: broker.aio.Delivery) -> Any:
            pairs = request.headers.pairs()
            return handler(Got(request.topic, request.offset, request.data, request.attempt, pairs))

        self.run(_awaited(self._client.reply(topic, answer)))

    def kv(self, bucket: str) -> _AsyncioKV:
        return _AsyncioKV(self, self._client.kv(bucket))

    def publish(
        self, topic: str, data: bytes, headers: Any = None, delay: Any = None, ttl: Any = None
    ) -> int | None:
        return self.run(self._client.publish(topic, data, headers, delay=delay, ttl=ttl))

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int | None]:
        return self.run(self._client.publish_many(messages))

    def subscribe_batches(
        self, topics: list[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> _AsyncioBatchSub:
        async def subscribe() -> broker.aio.Subscription:
            return await self._client.subscribe(topics, start=start, offset=offset)

        return _AsyncioBatchSub(self, self.run(subscribe()))

    def subscribe(
        self,
        topics: list[str],
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> _AsyncioSub:
        async def subscribe() -> broker.aio.Subscription:
            return await self._client.subscribe(
                topics, start=start, offset=offset, group=group, durable=durable
            )

        return _AsyncioSub(self, self.run(subscribe()))

    def close(self) -> None:
        self.run(self._client.close())
        self._loop.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class _AsyncioKV:
    def __init__(self, owner: AsyncioClient, view: Any) -> None:
        self._owner = owner
        self._view = view

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._view, name)
        return lambda *args: self._owner.run(call(*args))

    def watch(self, count: int, prefix: str = "", change: Any = None, after: int = 0) -> list[Any]:
        changing: list[threading.Thread] = []

        async def take() -> list[Any]:
            got = []
            changes = self._view.watch(prefix)
            try:
                async with asyncio.timeout(15):
                    async for entry in changes:
                        got.append(entry)
                        if change is not None and len(got) == after:
                            changing.append(threading.Thread(target=change, daemon=True))
                            changing[-1].start()
                        if len(got) == count:
                            break
            finally:
                await changes.aclose()
            return got

        try:
            return self._owner.run(take())
        finally:
            for thread in changing:
                thread.join(15)


# The blocking client.


class _BlockingSub:
    def __init__(self, subscription: broker.sync.SyncSubscription) -> None:
        self._subscription = subscription

    def take(self, count: int, timeout: float = 15, ack: bool = True) -> list[Got]:
        got = []
        for _ in range(count):
            message = self._subscription.next(timeout)
            if ack:
                message.ack()
            got.append(
                Got(
                    message.topic,
                    message.offset,
                    message.data,
                    message.attempt,
                    message.headers.pairs(),
                )
            )
        return got

    def close(self) -> None:
        self._subscription.unsubscribe()


class _BlockingBatchSub(_BlockingSub):
    def take_batches(self, count: int, timeout: float = 15, ack: bool = True) -> list[list[Got]]:
        taken: list[list[Got]] = []
        while sum(map(len, taken)) < count:
            batch = self._subscription.batch(timeout=timeout)
            if ack:
                self._subscription.ack_all(batch)
            else:
                self._subscription.nack_all(batch)
            taken.append([Got(m.topic, m.offset, m.data, m.attempt) for m in batch])
        return taken


class BlockingClient:
    def __init__(self, url: str, **options: Any) -> None:
        self._client = broker.sync.connect(url, retry_policy=lambda attempt: 0.1, **options)
        self._client.timeout = 30

    def publish(
        self, topic: str, data: bytes, headers: Any = None, delay: Any = None, ttl: Any = None
    ) -> int | None:
        return self._client.publish(topic, data, headers, delay=delay, ttl=ttl)

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int | None]:
        return self._client.publish_many(messages)

    def subscribe_batches(
        self, topics: list[str], start: StartAt = StartAt.CURRENT, offset: int = 0
    ) -> _BlockingBatchSub:
        return _BlockingBatchSub(self._client.subscribe(topics, start=start, offset=offset))

    def subscribe(
        self,
        topics: list[str],
        start: StartAt = StartAt.CURRENT,
        offset: int = 0,
        group: str | None = None,
        durable: str | None = None,
    ) -> _BlockingSub:
        return _BlockingSub(
            self._client.subscribe(topics, start=start, offset=offset, group=group, durable=durable)
        )

    def request(self, topic: str, data: bytes, headers: Any = None, timeout: float = 5) -> Got:
        reply = self._client.request(topic, data, headers, timeout)
        return Got(reply.topic, reply.offset, reply.data, reply.attempt, reply.headers.pairs())

    def reply(self, topic: str, handler: Any) -> None:
        self._client.reply(
            topic,
            lambda m: handler(Got(m.topic, m.offset, m.data, m.attempt, m.headers.pairs())),
        )

    def kv(self, bucket: str) -> _BlockingKV:
        return _BlockingKV(self._client.kv(bucket))

    def close(self) -> None:
        self._client.close()


class _BlockingKV:
    def __init__(self, view: broker.sync.SyncKeyValue) -> None:
        self._view = view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def watch(self, count: int, prefix: str = "", change: Any = None, after: int = 0) -> list[Any]:
        got = []
        changing: list[threading.Thread] = []
        for entry in self._view.watch(prefix, timeout=15):
            got.append(entry)
            if change is not None and len(got) == after:
                changing.append(threading.Thread(target=change, daemon=True))
                changing[-1].start()
            if len(got) == count:
                break
        for thread in changing:
            thread.join(15)
        return got


def in_thread(test: Any) -> Any:
    """Run a test in a worker thread (pytest-twisted runs every test in the
    reactor's): the reactor stays free for the Twisted client."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Deferred[None]:
        return threads.deferToThread(test, *args, **kwargs)

    return run


def open_client(kind: str, url: str, **options: Any) -> Client:
    """A client of `kind` ("twisted", "asyncio", "blocking") connected to `url`."""
    make = {"twisted": TwistedClient, "asyncio": AsyncioClient, "blocking": BlockingClient}[kind]
    return make(url, **options)


@contextlib.contextmanager
def client_of(kind: str, url: str, **options: Any) -> Iterator[Client]:
    client = open_client(kind, url, **options)
    try:
        yield client
    finally:
        client.close()

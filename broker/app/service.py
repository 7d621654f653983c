"""The broker as a service: its store, the store's upkeep, its listeners,
and what SIGHUP re-reads (certificates, the users file).

Started by twistd in Twisted's order: the listener binds its port in
`privilegedStartService` (as root, for a port below 1024), the store opens
in `startService` (after privileges are shed, so its files belong to the
broker's user, and before the reactor runs, so no connection comes first),
and the upkeep runs as `TimerService` children. On stop (SIGTERM) it
drains: the listeners stop, /healthz says 503, subscribers get nothing new
while their deliveries in flight may still be acked, for up to the drain
timeout, publishers' pending confirms are answered, then the connections
close and only then is the store synced and closed. A second SIGTERM cuts
the drain short.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger

from broker.app.listeners import (
    ListenerError,
    endpoint_description,
    is_local_only,
    is_tls,
    listen_interface,
    monitor_description,
    server_endpoint,
)
from broker.compiled import describe as describe_hot_paths
from broker.core import Broker, BrokerStats
from broker.log import FileStoreSettings, FsyncPolicy, StoreError, make_store
from broker.log.redis_settings import RedisStoreSettings
from broker.monitoring.metrics import register as register_metrics
from broker.monitoring.stats import RateHistory
from broker.mqtt import MQTTDoor
from broker.security.auth import Authenticator
from broker.security.tls import ReloadableServerContext, ServerTLS, TLSConfigError
from broker.security.users import Users, UsersFileError, load_users
from broker.server import BrokerFactory, BrokerSettings
from broker.websocket import WebSocketDoor

log = Logger()

# How often retention by age is applied.
RETENTION_SWEEP_SECONDS = 1.0
# How often the totals are sampled for the rates of the last minutes.
RATE_SAMPLE_SECONDS = 1.0
# How often subscriptions are checked for falling behind (--slow-consumer-lag).
LAG_CHECK_SECONDS = 5.0
# How often durable consumers idle past --durable-idle are looked for.
IDLE_CONSUMER_SWEEP_SECONDS = 60.0
# How often a drain looks whether every delivery in flight is answered.
DRAIN_POLL_SECONDS = 0.05


def _need_asyncio_reactor(reactor: Any) -> None:
    """The Redis store runs on redis-py's asyncio client: say how to start
    on the reactor it needs, rather than fail at the first publish."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise StartupError(
            f"--store redis needs Twisted's asyncio reactor, not {type(reactor).__name__}: "
            "start it as 'twistd -r asyncio broker --store ...'"
        )


class StartupError(SystemExit):
    """The broker cannot start: one line for the operator, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"twistd broker: {message}")


class BrokerService(MultiService):
    """Listens where each of `ports` says (see broker.app.listeners); keeps topics
    in memory, or in `data_dir`; serves TLS ports with `tls`; with
    `users_file`, lets in only its users, each to what it grants; serves
    the monitoring site at `monitor` (a bare port: on loopback), to users
    with the monitor right if there is a users file, under the loopback
    names, its interface's and `monitor_hosts`."""

    def __init__(
        self,
        ports: str | list[str],
        settings: BrokerSettings,
        data_dir: Path | None = None,
        file_settings: FileStoreSettings | None = None,
        reactor: Any = None,
        tls: ServerTLS | None = None,
        users_file: Path | None = None,
        monitor: str | None = None,
        monitor_hosts: Sequence[str] = (),
        log_observer: ILogObserver | None = None,
        redis: RedisStoreSettings | None = None,
        mqtt_ports: Sequence[str] = (),
        ws_ports: Sequence[str] = (),
        ws_origins: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        if redis is not None:
            _need_asyncio_reactor(reactor)
        self._ports = [ports] if isinstance(ports, str) else list(ports)
        self._file_settings = file_settings or FileStoreSettings()
        self.users_file = users_file
        self.ports = list(self._ports)
        self._state = "starting"
        self.rates = RateHistory()
        self._listeners: list[StreamServerEndpointService] = []
        self._cut_short = False
        self._log_observer = log_observer
        self._lagging: set[tuple[int, str]] = set()  # (connection, topic) warned of
        self._previous_sigterm: Any = None
        authenticator = None
        if users_file is not None:
            authenticator = Authenticator(
                self._read_users(users_file),
                reactor,
                run_blocking=self._in_thread,
                identity=settings.tls_identity,
            )
        stats = BrokerStats()
        store = make_store(
            settings.retention,
            reactor,
            data_dir,
            self._file_settings,
            redis,
            on_fsync=stats.fsync.observe,
        )
        broker = Broker(settings, reactor, store, authenticator, stats)
        self.factory = BrokerFactory(broker=broker)
        self.mqtt: MQTTDoor | None = MQTTDoor(broker) if mqtt_ports or ws_ports else None
        """The MQTT door, if it listens anywhere (--mqtt-port, or over WebSocket)."""
        register_metrics(self.factory)
        self.tls: ReloadableServerContext | None = None
        self._previous_sighup: Any = None  # restored on stop
        if tls is not None:
            try:
                self.tls = ReloadableServerContext(tls)
            except TLSConfigError as error:
                raise StartupError(str(error)) from None
        for port in self._ports:
            try:
                endpoint = server_endpoint(port, reactor, self.tls)
            except ListenerError as error:
                raise StartupError(str(error)) from None
            listener = StreamServerEndpointService(endpoint, self.factory)
            listener._raiseSynchronously = True  # a port in use stops the start
            listener.setName(port)
            listener.setServiceParent(self)
            self._listeners.append(listener)
        self.mqtt_ports = list(mqtt_ports)
        for port in self.mqtt_ports:
            assert self.mqtt is not None
            try:
                endpoint = server_endpoint(port, reactor, self.tls)
            except ListenerError as error:
                raise StartupError(f"--mqtt-port: {error}") from None
            listener = StreamServerEndpointService(endpoint, self.mqtt)
            listener._raiseSynchronously = True
            listener.setName(f"mqtt {port}")
            listener.setServiceParent(self)
            self._listeners.append(listener)
        self.ws_ports = list(ws_ports)
        if self.ws_ports:
            websocket = WebSocketDoor(
                self.factory,
                self.mqtt,
                settings.max_message_size + settings.max_header_bytes,
                list(ws_origins),
            )
            for port in self.ws_ports:
                try:
                    endpoint = server_endpoint(port, reactor, self.tls)
                except ListenerError as error:
                    raise StartupError(f"--ws-port: {error}") from None
                listener = StreamServerEndpointService(endpoint, websocket)
                listener._raiseSynchronously = True
                listener.setName(f"websocket {port}")
                listener.setServiceParent(self)
                self._listeners.append(listener)
        self._monitor: StreamServerEndpointService | None = None
        self.monitor = None if monitor is None else monitor_description(monitor)
        """Where the monitor listens, as an endpoint string (None: no monitor)."""
        if self.monitor is not None:
            from broker.monitoring.site import monitor_site

            try:
                monitor_endpoint = serverFromString(reactor, self.monitor)
            except (ValueError, TypeError, KeyError) as error:
                raise StartupError(f"--monitor {monitor}: {error}") from None
            site = monitor_site(self, monitor_hosts, listen_interface(self.monitor))
            self._monitor = StreamServerEndpointService(monitor_endpoint, site)
            self._monitor._raiseSynchronously = True
            self._monitor.setName(self.monitor)
            self._monitor.setServiceParent(self)
        self._timer(RATE_SAMPLE_SECONDS, self._sample_rates)
        self._timer(LAG_CHECK_SECONDS, self.check_lag)
        self._timer(IDLE_CONSUMER_SWEEP_SECONDS, self._forget_idle_consumers)
        self._timer(RETENTION_SWEEP_SECONDS, self.apply_retention)
        if data_dir is not None and self._file_settings.fsync is FsyncPolicy.INTERVAL:
            self._timer(self._file_settings.fsync_interval, self._sync_store)

    @property
    def state(self) -> str:
        """starting, serving, draining or stopped, or waiting for Redis while
        the Redis store cannot reach it (what /healthz tells)."""
        waiting_for = self.factory.broker.store.waiting_for()
        if self._state == "serving" and waiting_for is not None:
            return f"waiting for {waiting_for}"
        return self._state

    @staticmethod
    def _read_users(path: Path) -> Users:
        try:
            users = load_users(path)
        except UsersFileError as error:
            raise StartupError(str(error)) from None
        log.info("{count} user(s) from {path}", count=len(users.by_name), path=str(path))
        return users

    def _in_thread(self, function: Any, *args: Any) -> Deferred[Any]:
        """Run a blocking call (a password check) in the reactor's thread pool."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), function, *args)

    def setServiceParent(self, parent: Any) -> None:
        # twistd's application: it logs through the observer it finds on it.
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def _timer(self, interval: float, call: Any) -> None:
        timer = TimerService(interval, call)
        timer.clock = self._reactor
        timer.setServiceParent(self)

    def privilegedStartService(self) -> None:
        # As MultiService does, but saying which --port could not listen.
        Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as error:
                where = endpoint_description(child.name or "?")
                raise StartupError(f"cannot listen on {where}: {error.socketError}") from None

    def startService(self) -> None:
        log.info("{hot_paths}", hot_paths=describe_hot_paths())
        self._open_store()
        if self.tls is not None or self.users_file is not None:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self._warn_if_open()
        super().startService()
        self._state = "serving"

    def _warn_if_open(self) -> None:
        exposed = [port for port in self._ports if not is_local_only(port)]
        # A tls: port with --tls-ca lets in only holders of a certificate it signed.
        verifies_clients = self.tls is not None and self.tls.config.ca is not None
        open_to_anyone = [port for port in exposed if not (verifies_clients and is_tls(port))]
        if self.users_file is None and open_to_anyone:
            log.warn(
                "anyone who can reach --port {port} may publish to and read every topic: "
                "give --users (and --tls-cert) to restrict it",
                port=open_to_anyone[0],
            )
        if self.monitor is not None and not is_local_only(self.monitor):
            if self.users_file is None:
                log.warn(
                    "anyone who can reach --monitor {monitor} may read its user names, "
                    "client addresses and topics: give --users (users with monitor = true "
                    "may read it) or listen on loopback",
                    monitor=self.monitor,
                )
            elif not self.monitor.startswith("ssl:"):
                log.warn(
                    "passwords sent to --monitor {monitor} cross the network unencrypted: "
                    "prefer an ssl: endpoint or loopback",
                    monitor=self.monitor,
                )
        if self.monitor is not None and self.factory.broker.authenticator is not None:
            users = self.factory.broker.authenticator.users.by_name.values()
            if not any(user.monitor for user in users):
                log.warn(
                    "no user of {path} has monitor = true: the monitor answers only /healthz",
                    path=str(self.users_file),
                )
        in_clear = [port for port in exposed if not is_tls(port)]
        if self.users_file is not None and in_clear:
            log.warn(
                "passwords sent to --port {port} cross the network unencrypted: prefer a tls: port",
                port=in_clear[0],
            )

    def _sighup(self, signum: int, frame: object) -> None:
        # Re-read outside the signal handler, in the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Re-read certificates and the users file (as SIGHUP does); keep
        what was in use if the new ones cannot be used."""
        if self.tls is not None:
            self.tls.reload()
        if self.users_file is not None:
            try:
                users = load_users(self.users_file)
            except UsersFileError as error:
                log.error("users not reloaded, the old ones stay: {error}", error=error)
                return
            self.factory.reload_users(users)
            if self.mqtt is not None:
                self.mqtt.reload_users(users)
            log.info(
                "users reloaded from {path}: {count} user(s)",
                path=str(self.users_file),
                count=len(users.by_name),
            )

    def _open_store(self) -> None:
        broker = self.factory.broker
        store = broker.store
        started = time.monotonic()
        try:
            broker.start()
        except StoreError as error:
            raise StartupError(str(error)) from None
        status = store.status()
        if store.kind == "memory":
            log.info(
                "topics live in memory: they are lost when the broker stops "
                "(use --data-dir to keep them)"
            )
        elif store.kind == "file":
            registry = broker.registry
            log.info(
                "topics live in {root}: {topics} topic(s), {messages} message(s), opened in "
                "{seconds:.2f} s (fsync {fsync})",
                root=status["data_dir"],
                topics=len(registry),
                messages=sum(t.log.next_offset - t.log.first_offset for t in registry),
                seconds=time.monotonic() - started,
                fsync=self._file_settings.fsync.value,
            )
        else:  # retries until Redis answers; until then publishes are refused
            log.info(
                "topics live in Redis at {where} (confirmed once {replicas} replica(s) hold them)",
                where=status["where"],
                replicas=status["replicas"],
            )

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        self._state = "draining"
        self._catch_second_sigterm()
        await gatherResults([listener.stopService() for listener in self._listeners])
        await self._drain()
        grace = 0 if self._cut_short else 1.0
        await self.factory.close_connections(grace=grace)
        if self.mqtt is not None:
            await self.mqtt.close_connections(grace=grace)
        # The upkeep and the monitor stop last: /healthz says 503 until now.
        await gatherResults([child.stopService() for child in self if child not in self._listeners])
        for number, previous in (
            (signal.SIGHUP, self._previous_sighup),
            (signal.SIGTERM, self._previous_sigterm),
        ):
            if previous is not None:
                signal.signal(number, previous)
        self._previous_sighup = self._previous_sigterm = None
        await self.factory.broker.close()  # a file store syncs and closes here
        self._state = "stopped"
        log.info("broker stopped")

    def _catch_second_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def second(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self._cut_drain_short)

        self._previous_sigterm = signal.signal(signal.SIGTERM, second)

    def _cut_drain_short(self) -> None:
        if not self._cut_short:
            log.warn("a second SIGTERM: stopping at once")
        self._cut_short = True

    async def _drain(self) -> None:
        """Let deliveries in flight be acked and confirms be answered, for
        up to the drain timeout; log what is left."""
        factory = self.factory
        timeout = factory.broker.settings.drain_timeout
        started = self._reactor.seconds()
        connections = list(factory.connections)
        for protocol in connections:
            protocol.drain()
        log.info(
            "draining {n} connection(s) for up to {timeout} s (a second SIGTERM stops at once)",
            n=len(connections),
            timeout=timeout,
        )
        flushed = gatherResults(
            [topic.log.flush() for topic in factory.broker.registry], consumeErrors=True
        )
        flushed.addErrback(lambda failure: None)  # a store error is logged where it happens

        def in_flight() -> int:
            return sum(p.in_flight for p in factory.connections)

        while (
            (in_flight() or not flushed.called)
            and not self._cut_short
            and self._reactor.seconds() - started < timeout
        ):
            await deferLater(self._reactor, DRAIN_POLL_SECONDS, lambda: None)
        log.info(
            "drained in {seconds:.2f} s: {unacked} delivery(ies) not acked (they stay in "
            "their topics' logs), {connections} connection(s) to close",
            seconds=self._reactor.seconds() - started,
            unacked=in_flight(),
            connections=len(factory.connections),
        )

    def check_lag(self) -> None:
        """Warn once of each subscription that falls --slow-consumer-lag
        messages behind its topic, and once when it has caught up."""
        limit = self.factory.broker.settings.slow_consumer_lag
        lagging = set()
        for protocol in self.factory.connections:
            window = getattr(protocol.session, "window", None)
            if window is None:
                continue
            for name, subscription in window.subscriptions.items():
                behind = subscription.topic.log.next_offset - subscription.position
                key = (protocol.number, name)
                if behind > limit:
                    lagging.add(key)
                    if key not in self._lagging:
                        log.warn(
                            "{peer}: slow consumer: {behind} messages behind on {topic!r}",
                            peer=protocol.peer,
                            user=protocol.user.name if protocol.user else None,
                            topic=name,
                            behind=behind,
                        )
        for peer_topic in self._lagging - lagging:
            log.info(
                "connection {number} caught up on {topic!r}",
                number=peer_topic[0],
                topic=peer_topic[1],
            )
        self._lagging = lagging

    def _sample_rates(self) -> None:
        self.rates.sample(self._reactor.seconds(), self.factory.broker.stats)

    def apply_retention(self) -> None:
        """Apply each topic's retention, forget the message ids past their
        window and the inboxes nobody uses, and compact the compacted topics
        that are due (a timer calls this every second)."""
        now = self._reactor.seconds()
        broker = self.factory.broker
        floors = broker.groups.floors()
        for topic in broker.registry:
            topic.log.keep_from = floors.get(topic.name)
            topic.log.apply_retention(now)
        broker.expire_message_ids()
        broker.sweep_inboxes()
        broker.compact_topics()

    def _sync_store(self) -> None:
        self.factory.broker.store.sync()
        self.factory.broker.groups.positions.sync()

    def _forget_idle_consumers(self) -> None:
        positions = self.factory.broker.groups.positions
        for topic, name in positions.forget_idle(
            self._reactor.seconds(), self.factory.broker.settings.durable_idle
        ):
            log.info(
                "forgot durable consumer {name!r} of {topic!r}: idle too long",
                name=name,
                topic=topic,
            )
        positions.flush()

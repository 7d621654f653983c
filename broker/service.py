"""The broker as a service: its store, the store's upkeep, its listeners,
and what SIGHUP re-reads (certificates, the users file).

Started by twistd in Twisted's order: the listener binds its port in
`privilegedStartService` (as root, for a port below 1024), the store opens
in `startService` (after privileges are shed, so its files belong to the
broker's user, and before the reactor runs, so no connection comes first),
and the upkeep runs as `TimerService` children. On stop, the listener stops,
the connections close, and only then is the store synced and closed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from broker.auth import Authenticator
from broker.listeners import (
    ListenerError,
    endpoint_description,
    is_local_only,
    is_tls,
    server_endpoint,
)
from broker.log import FileStore, FileStoreSettings, FsyncPolicy, StoreError
from broker.server import BrokerFactory, BrokerSettings
from broker.tls import ReloadableServerContext, ServerTLS, TLSConfigError
from broker.topics import TopicRegistry
from broker.users import Users, UsersFileError, load_users

log = Logger()

# How often retention by age is applied.
RETENTION_SWEEP_SECONDS = 1.0


class StartupError(SystemExit):
    """The broker cannot start: one line for the operator, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"twistd broker: {message}")


class BrokerService(MultiService):
    """Listens where each of `ports` says (see broker.listeners); keeps topics
    in memory, or in `data_dir`; serves TLS ports with `tls`; with
    `users_file`, lets in only its users, each to what it grants."""

    def __init__(
        self,
        ports: str | list[str],
        settings: BrokerSettings,
        data_dir: Path | None = None,
        file_settings: FileStoreSettings | None = None,
        reactor: Any = None,
        tls: ServerTLS | None = None,
        users_file: Path | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._ports = [ports] if isinstance(ports, str) else list(ports)
        self._data_dir = data_dir
        self._file_settings = file_settings or FileStoreSettings()
        self.store: FileStore | None = None
        self._users_file = users_file
        authenticator = None
        if users_file is not None:
            authenticator = Authenticator(
                self._read_users(users_file),
                reactor,
                run_blocking=self._in_thread,
                identity=settings.tls_identity,
            )
        self.factory = BrokerFactory(settings, clock=reactor, users=authenticator)
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
        self._timer(RETENTION_SWEEP_SECONDS, self._apply_retention)
        if data_dir is not None and self._file_settings.fsync is FsyncPolicy.INTERVAL:
            self._timer(self._file_settings.fsync_interval, self._sync_store)

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
        self._open_store()
        if self.tls is not None or self._users_file is not None:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self._warn_if_open()
        super().startService()

    def _warn_if_open(self) -> None:
        exposed = [port for port in self._ports if not is_local_only(port)]
        if self._users_file is None and exposed:
            log.warn(
                "anyone who can reach --port {port} may publish to and read every topic: "
                "give --users (and --tls-cert) to restrict it",
                port=exposed[0],
            )
        in_clear = [port for port in exposed if not is_tls(port)]
        if self._users_file is not None and in_clear:
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
        if self._users_file is not None:
            try:
                users = load_users(self._users_file)
            except UsersFileError as error:
                log.error("users not reloaded, the old ones stay: {error}", error=error)
                return
            self.factory.reload_users(users)
            log.info(
                "users reloaded from {path}: {count} user(s)",
                path=str(self._users_file),
                count=len(users.by_name),
            )

    def _open_store(self) -> None:
        if self._data_dir is None:
            log.info(
                "topics live in memory: they are lost when the broker stops "
                "(use --data-dir to keep them)"
            )
            return
        started = time.monotonic()
        try:
            self.store = FileStore(self._data_dir, self._file_settings, self._reactor)
            registry = TopicRegistry(
                self.store.open,
                self.factory.settings.max_topics,
                existing=self.store.topic_names(),
            )
        except StoreError as error:
            raise StartupError(str(error)) from None
        self.factory.registry = registry
        log.info(
            "topics live in {root}: {topics} topic(s), {messages} message(s), opened in "
            "{seconds:.2f} s (fsync {fsync})",
            root=str(self.store.root),
            topics=len(registry),
            messages=sum(t.log.next_offset - t.log.first_offset for t in registry),
            seconds=time.monotonic() - started,
            fsync=self._file_settings.fsync.value,
        )

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()  # stop listening and the upkeep
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        await self.factory.close_connections()
        self.factory.registry.close()  # a file store syncs and closes here
        log.info("broker stopped")

    def _apply_retention(self) -> None:
        now = self._reactor.seconds()
        for topic in self.factory.registry:
            topic.log.apply_retention(now)

    def _sync_store(self) -> None:
        if self.store is not None:
            self.store.sync_all()

"""The broker as a service: its store, the store's upkeep, and its listener."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from broker.log import FileStore, FileStoreSettings, FsyncPolicy
from broker.server import BrokerFactory, BrokerSettings
from broker.topics import TopicRegistry

log = Logger()

# How often retention by age is applied.
RETENTION_SWEEP_SECONDS = 1.0


class BrokerService(MultiService):
    """Listens where `endpoint` says; keeps topics in memory, or in `data_dir`.

    Opening a file store recovers every topic it holds, so a store that
    cannot be opened stops the broker before it listens.
    """

    def __init__(
        self,
        endpoint: str,
        settings: BrokerSettings,
        data_dir: Path | None = None,
        file_settings: FileStoreSettings | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.store: FileStore | None = None
        registry = None
        if data_dir is not None:
            file_settings = file_settings or FileStoreSettings()
            started = time.monotonic()
            self.store = FileStore(data_dir, file_settings, reactor)
            registry = TopicRegistry(
                self.store.open, settings.max_topics, existing=self.store.topic_names()
            )
            log.info(
                "file store {root}: {topics} topic(s), {messages} message(s), opened in "
                "{seconds:.2f} s (fsync {fsync})",
                root=str(self.store.root),
                topics=len(registry),
                messages=sum(t.log.next_offset - t.log.first_offset for t in registry),
                seconds=time.monotonic() - started,
                fsync=file_settings.fsync.value,
            )
        self.factory = BrokerFactory(settings, clock=reactor, registry=registry)
        strports.service(endpoint, self.factory).setServiceParent(self)
        self._loops: list[tuple[LoopingCall, float]] = [
            (LoopingCall(self._apply_retention), RETENTION_SWEEP_SECONDS)
        ]
        if self.store is not None and file_settings.fsync is FsyncPolicy.INTERVAL:
            self._loops.append((LoopingCall(self.store.sync_all), file_settings.fsync_interval))
        for loop, _ in self._loops:
            loop.clock = reactor

    def startService(self) -> None:
        for loop, interval in self._loops:
            loop.start(interval, now=False)
        super().startService()

    async def _stop(self) -> None:
        await super().stopService()  # stop listening and drop connections first
        for loop, _ in self._loops:
            if loop.running:
                loop.stop()
        self.factory.registry.close()  # a file store syncs and closes here
        log.info("broker stopped")

    def stopService(self):  # type: ignore[override]
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self._stop())

    def _apply_retention(self) -> None:
        now = self._reactor.seconds()
        for topic in self.factory.registry:
            topic.log.apply_retention(now)

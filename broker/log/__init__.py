"""Message stores behind one interface (IMessageStore): in memory, on disk,
and in Redis; `make_store` picks the one the options ask for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.log.file import FileStore, FileStoreSettings
from broker.log.interface import (
    FsyncPolicy,
    IMessageLog,
    IMessageStore,
    ISharedGroupLog,
    ISharedStore,
    Retention,
    SharedConsumer,
    StoreError,
    StoreOutcomeUnknown,
    TopicState,
)
from broker.log.memory import DEFAULT_MEMORY_RETENTION, MemoryLog, MemoryStore

if TYPE_CHECKING:
    from broker.log.redis_settings import RedisStoreSettings


def make_store(
    retention: Retention,
    reactor: Any,
    data_dir: Path | None = None,
    file_settings: FileStoreSettings | None = None,
    redis: RedisStoreSettings | None = None,
    on_fsync: Callable[[float], None] | None = None,
) -> IMessageStore:
    """The store the options choose: Redis with --store, files with
    --data-dir, else memory. It is made, not opened: its `start` reads the
    disk or connects, once twistd has dropped its privileges (a file made
    before that would belong to root)."""
    if redis is not None:
        from broker.log.redis import RedisStore  # redis-py's asyncio client, when asked for

        return RedisStore(redis)
    if data_dir is not None:
        return FileStore(data_dir, file_settings or FileStoreSettings(), reactor, on_fsync)
    return MemoryStore(retention, clock=reactor.seconds)


__all__ = [
    "DEFAULT_MEMORY_RETENTION",
    "FileStore",
    "FileStoreSettings",
    "FsyncPolicy",
    "IMessageLog",
    "IMessageStore",
    "ISharedGroupLog",
    "ISharedStore",
    "MemoryLog",
    "MemoryStore",
    "Retention",
    "SharedConsumer",
    "StoreError",
    "StoreOutcomeUnknown",
    "TopicState",
    "make_store",
]

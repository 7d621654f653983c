"""Message stores behind one interface: in memory, and on disk."""

from broker.log.file import FileStore, FileStoreSettings, FsyncPolicy
from broker.log.interface import IMessageLog, Retention, StoreError, StoreOutcomeUnknown
from broker.log.memory import DEFAULT_MEMORY_RETENTION, MemoryLog

__all__ = [
    "DEFAULT_MEMORY_RETENTION",
    "FileStore",
    "FileStoreSettings",
    "FsyncPolicy",
    "IMessageLog",
    "MemoryLog",
    "Retention",
    "StoreError",
    "StoreOutcomeUnknown",
]

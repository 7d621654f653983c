"""Message stores behind one interface."""

from broker.log.interface import IMessageLog
from broker.log.memory import MemoryLog

__all__ = ["IMessageLog", "MemoryLog"]

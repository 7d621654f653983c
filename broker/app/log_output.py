"""How the broker logs under twistd: text or JSON (one event per line, its
fields such as peer, user and topic kept as keys), filtered by level.

twistd decides where logs go (`-l FILE`, `-l -`, or stdout under `-n`); the
broker only chooses their form, by giving the application the observer
that twistd then uses.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warn", "error", "critical")


def log_file(name: str | None, daemon: bool) -> IO[Any]:
    """Where twistd would log: stdout for `-l -` or under `-n` without -l,
    else the file (twistd.log by default), rotated as twistd rotates it."""
    if name == "-" or (not name and not daemon):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")


def log_observer(format: str, level: str, out: IO[Any]) -> ILogObserver:
    """Events at `level` or above, written to `out` as text or JSON lines."""
    if format == "json":
        # No RFC 7464 record separator: one JSON object per line.
        base = jsonFileLogObserver(out, recordSeparator="")
    else:
        base = textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(base, [predicate])

"""Which of the broker's hot paths run compiled: `pip install .` builds the
wire codec and the delivery window with mypyc where it can (setup.py), and
the same modules run as Python where it could not. Said at startup, so that
whoever reads a benchmark knows which it measured."""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

HOT_MODULES = (
    "broker.wire.codes",
    "broker.wire.topic_names",
    "broker.wire.frames",
    "broker.wire.decoder",
    "broker.wire.server",
    "broker.wire.client",
    "broker.core.delivery",
)


def compiled_modules() -> list[str]:
    """The hot modules loaded from C extensions (built by mypyc)."""
    return [
        name
        for name in HOT_MODULES
        if str(importlib.import_module(name).__file__).endswith(tuple(EXTENSION_SUFFIXES))
    ]


def describe() -> str:
    """One line for the log: compiled, pure Python, or which of each."""
    compiled = compiled_modules()
    if len(compiled) == len(HOT_MODULES):
        return "hot paths compiled by mypyc: " + ", ".join(compiled)
    if not compiled:
        return "hot paths in pure Python (the build compiled none; see setup.py)"
    return "hot paths partly compiled: " + ", ".join(compiled)

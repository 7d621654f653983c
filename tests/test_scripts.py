"""The workloads of scripts/count_instructions.py do what they count."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "count_instructions.py"


def load_script():
    spec = importlib.util.spec_from_file_location("count_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["count_instructions"] = module
    spec.loader.exec_module(module)
    return module


def test_the_counted_workloads_move_every_message():
    script = load_script()
    extended = script.ExtendedFlow()
    extended.run()
    assert extended.acked == 1000 and extended.window.in_flight == 0
    assert extended.subscriber.session.delivered_messages == 1000
    plain = script.PlainFlow()
    plain.run()
    assert plain.subscriber.session.delivered_messages == 1000
    for name in ("decode", "acks", "window"):
        script.run_inside(name, 1)

"""Every recorded exchange of the seed, replayed against a real
broker over loopback TCP, bytes compared."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytest_twisted

from broker import wire
from broker.core.delivery import DeliverySettings
from broker.server import BrokerSettings
from broker.testing import start_broker
from tests.raw import RawConnection, connect_raw

TRANSCRIPTS = json.loads((Path(__file__).parents[1] / "data" / "transcripts.json").read_text())
SCENARIOS = TRANSCRIPTS["scenarios"]
QUIET = 0.5  # the recording's "nothing within 0.5 s", at the seed's timings


async def replay(port: int, time_scale: float) -> None:
    """Replay all scenarios in order on one server, as they were recorded.

    `time_scale` is the broker's ack delay and timeout relative to the seed's
    defaults; copies recorded with `at_seconds` must arrive at those times,
    scaled, give or take a margin for a busy machine.
    """
    connections: dict[str, RawConnection] = {}
    try:
        for scenario in SCENARIOS:
            started = time.monotonic()
            first_copy_at: float | None = None
            for number, step in enumerate(scenario["steps"]):
                where = f"{scenario['name']!r}, step {number} on {step['conn']}"
                connection = connections.get(step["conn"])
                if connection is None:
                    connection = connections[step["conn"]] = await connect_raw(port)
                if "send" in step:
                    connection.send(bytes.fromhex(step["send"]))
                    started = time.monotonic() if first_copy_at is None else started
                expected = bytes.fromhex(step["expect"])
                if not expected:
                    await connection.assert_silent(QUIET * time_scale)
                    continue
                got = await connection.read(len(expected), timeout=5 + 15 * time_scale)
                assert got.hex() == expected.hex(), where
                if "at_seconds" in step:
                    now = time.monotonic()
                    if first_copy_at is None:
                        first_copy_at = now - step["at_seconds"] * time_scale
                    at = (now - first_copy_at) / time_scale
                    assert abs(at - step["at_seconds"]) < 0.5 + 0.3 / time_scale, where
        # Nothing may be left unread on any connection when the recording
        # ends, and the last copy of "no ack at all" is the fifth: no sixth
        # may follow. (Checked in that order: the last scenario's subscriber
        # never acks either, and its own redelivery is due one ack timeout
        # and delay after the end, as long as the wait for a sixth copy.)
        for name, connection in connections.items():
            assert bytes(connection.received) == b"", name
        await connections["subD"].assert_silent(3 * time_scale)
    finally:
        for connection in connections.values():
            connection.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_transcripts_with_short_timers():
    scale = 0.25
    settings = BrokerSettings(
        delivery=DeliverySettings(ack_delay=1.0 * scale, ack_timeout=2.0 * scale)
    )
    broker = start_broker(settings)
    # An extended client on the same broker changes nothing for the others.
    extended = await connect_raw(broker.port)
    extended.send(wire.encode_client_hello(prefetch=8, confirms=True))
    extended.send(wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_publish("x", b"1"))
    try:
        await replay(broker.port, scale)
    finally:
        extended.transport.loseConnection()
        await broker.stop()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_transcripts_at_default_timings():
    # The seed had no handshake timeout: c2, which only ever sent an
    # unknown action, would be closed by ours (10 s) before the replay ends.
    broker = start_broker(BrokerSettings(handshake_timeout=120))
    try:
        await replay(broker.port, 1.0)
    finally:
        await broker.stop()

"""Random bytes thrown at a live server never stop it serving others."""

from __future__ import annotations

import itertools
import json
import os
import random
import struct

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from broker import wire
from broker.server import BrokerFactory, BrokerSettings
from broker.testing import start_broker
from broker.wire import StartAt
from tests.raw import connect_raw

# Bytes that look like the protocol, so that the fuzzer reaches deep states.
FRAGMENTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x03", b"\x00\x04", b"\x00\x05"]),
    st.builds(
        wire.encode_publish,
        st.text(min_size=1, max_size=8).filter(lambda t: "\0" not in t),
        st.binary(max_size=32),
    ),
    st.builds(
        wire.encode_subscribe,
        st.lists(st.text(min_size=1, max_size=8), max_size=3),
        st.sampled_from([StartAt.BEGINNING, StartAt.CURRENT]),
    ),
    st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
)


class Served:
    """A broker with one well-behaved subscriber and publisher."""

    sequence = itertools.count()


@pytest_twisted.async_yield_fixture(scope="module")
async def served():
    broker = start_broker(BrokerSettings(max_message_size=4096, handshake_timeout=5))
    state = Served()
    state.broker = broker
    state.sub = await connect_raw(broker.port)
    state.sub.send(wire.encode_subscribe(["fuzz-safe"], StartAt.CURRENT))
    assert await state.sub.read(2) == b"\x00\x01"
    state.pub = await connect_raw(broker.port)
    state.pub.send(b"\x00\x03")
    yield state
    # Every noisy connection is gone again; only the two good ones remain.
    await deferLater(reactor, 0.1, lambda: None)
    assert len(broker.factory.connections) == 2
    await broker.stop()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fragments=st.lists(FRAGMENTS, max_size=12), close_abruptly=st.booleans())
@pytest_twisted.ensureDeferred
async def test_random_bytes_do_not_disturb_a_well_behaved_subscriber(
    served, fragments, close_abruptly
):
    noisy = await connect_raw(served.broker.port)
    for fragment in fragments:
        noisy.send(fragment)
    await deferLater(reactor, 0, lambda: None)
    if close_abruptly:
        noisy.transport.abortConnection()
    else:
        noisy.transport.loseConnection()
    payload = b"ok %d" % next(served.sequence)
    served.pub.send(wire.encode_publish("fuzz-safe", payload))
    frame = wire.encode_delivery("fuzz-safe", payload)
    assert await served.sub.read(len(frame)) == frame
    served.sub.send(wire.encode_u16(wire.ACK))


# ------------------------------------------------ JSON payloads: Hello, topic lists

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
HOSTILE_NUMBERS = st.sampled_from(
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"9" * 5000, b"1" * 30, b"1.5"]
)
JSON_PAYLOADS = st.one_of(
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda field, number: b'{"%s": %s}' % (field.encode(), number),
        st.sampled_from(["prefetch", "confirms", "version", "other"]),
        HOSTILE_NUMBERS | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    ),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=2_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.binary(max_size=64),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=JSON_PAYLOADS, as_topic_list=st.booleans())
@pytest_twisted.ensureDeferred
async def test_hostile_json_is_refused_clearly_and_the_stream_stays_in_step(
    served, module_logged_failures, payload, as_topic_list
):
    conn = await connect_raw(served.broker.port)
    if as_topic_list:
        conn.send(wire.encode_u16(wire.ACTION_SUBSCRIBE) + struct.pack(">I", len(payload)))
        # The seed reads no start-at after an empty list.
        conn.send(payload + (wire.encode_u16(StartAt.CURRENT) if payload else b""))
        (status,) = struct.unpack(">H", await conn.read(2))
        if status == wire.STATUS_ERROR:
            (length,) = struct.unpack(">H", await conn.read(2))
            text = (await conn.read(length)).decode()
            assert text.startswith(("invalid topic", "data length", "topic list too large"))
        else:
            assert status == wire.STATUS_SUBSCRIBED
    else:
        conn.send(wire.encode_u16(wire.HELLO) + struct.pack(">I", len(payload)) + payload)
        (code,) = struct.unpack(">H", await conn.read(2))
        if code == wire.HELLO:
            (length,) = struct.unpack(">I", await conn.read(4))
            assert json.loads(await conn.read(length))["version"] == wire.EXTENSIONS_VERSION
        else:
            assert code == wire.STATUS_ERROR, code
            (length,) = struct.unpack(">H", await conn.read(2))
            assert await conn.read(length) == wire.ERR_INVALID_HELLO.encode()
    # In step: a subscribe is answered as the next frame.
    conn.send(wire.encode_subscribe(["fuzz-json"], StartAt.CURRENT))
    assert await conn.read(2) == wire.encode_u16(wire.STATUS_SUBSCRIBED)
    conn.transport.loseConnection()
    await conn.closed
    module_logged_failures.assert_none()


def hostile_inputs(count: int, seed: int = 8):
    """`count` Hello and topic-list payloads mixing valid JSON, hostile
    numbers, deep nesting, wrong types and random bytes (fast: no hypothesis)."""
    rng = random.Random(seed)
    atoms = [b"1", b"-1", b"0", b"1.5", b"true", b"false", b"null", b'"x"', b'"t"', b"[]", b"{}"]
    atoms += [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 400, b"1" * 25, b"2" * 5000]
    for _ in range(count):
        kind = rng.randrange(6)
        if kind == 0:
            depth = rng.choice([1, 10, 31, 32, 33, 100, 1000, 5000, 50_000])
            yield rng.choice([b"[", b'{"a":']) * depth + rng.choice(atoms)
        elif kind == 1:
            field = rng.choice([b"prefetch", b"confirms", b"version", b"x"])
            yield b'{"%s": %s}' % (field, rng.choice(atoms))
        elif kind == 2:
            yield b"[" + b",".join(rng.choice(atoms) for _ in range(rng.randrange(5))) + b"]"
        elif kind == 3:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        elif kind == 4:
            text = json.dumps({"prefetch": rng.randrange(-5, 2**33), "confirms": True})
            yield text.encode()[: rng.randrange(1, len(text) + 1)]
        else:
            yield b'["%s"]' % rng.choice([b"a", b"", b"\\u0000", b"x" * 300, b"\xff"])


def test_a_long_fuzz_of_json_inputs_leaves_no_unhandled_error(logged_failures):
    """BROKER_FUZZ_INPUTS inputs (a million for the record) fed to broker
    protocols over in-memory transports; every one answered, none raised."""
    count = int(os.environ.get("BROKER_FUZZ_INPUTS", "10000"))
    factory = BrokerFactory(BrokerSettings(), clock=Clock())
    answered = 0
    for number, payload in enumerate(hostile_inputs(count)):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if number % 2:
            frame = wire.encode_u16(wire.HELLO) + struct.pack(">I", len(payload)) + payload
        else:
            frame = wire.encode_u16(wire.ACTION_SUBSCRIBE) + struct.pack(">I", len(payload))
            frame += payload + (wire.encode_u16(StartAt.CURRENT) if payload else b"")
        protocol.dataReceived(frame)
        answered += bool(transport.value())
        protocol.connectionLost(None)
    assert answered == count
    logged_failures.assert_none()

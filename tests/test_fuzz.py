"""Random bytes thrown at a live server never stop it serving others."""

from __future__ import annotations

import itertools

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater

from broker import wire
from broker.server import BrokerSettings
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
    max_examples=150,
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

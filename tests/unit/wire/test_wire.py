"""The codec alone: encoders against the seed's bytes, and decoders fed
the same stream split in every way."""

from __future__ import annotations

import json
import struct

from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.wire import ClientDecoder, ServerDecoder, StartAt
from broker.wire.headers import encode_headers, header_block


class ServerRecorder:
    """Records server-side decoder events as tuples."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattr__(self, name: str):
        return lambda *args: self.events.append((name, *args))

    def refused(self, reason: str, detail: str | None = None) -> None:
        # The detail is for the log; the events record what the peer is told.
        self.events.append(("refused", reason))

    def published(self, topic: str, payloads: list[bytes]) -> None:
        # One event per message, however many frames one call reported.
        self.events += [("published", topic, payload) for payload in payloads]


def decode_server(chunks: list[bytes], max_payload: int = 1 << 20) -> list[tuple]:
    recorder = ServerRecorder()
    decoder = ServerDecoder(recorder, max_payload)
    for chunk in chunks:
        decoder.feed(chunk)
    return recorder.events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


PUBLISHER_STREAM = (
    wire.encode_u16(wire.ACTION_PUBLISH)
    + wire.encode_publish("d", b"hello")
    + b"\x00\x00"  # the seed README's u32 topic length: a zero u16 is skipped
    + wire.encode_publish("d", b"world")
    + struct.pack(">H", 1)
    + b"a"  # no "topic:" prefix: refused, data frame consumed
    + struct.pack(">I", 3)
    + b"xyz"
    + wire.encode_publish("d", b"")  # empty: ignored
    + wire.encode_publish("big", b"x" * 40)  # over the limit below: skipped
    + wire.encode_publish("d", b"last")
)


def test_encoders_match_the_reference_bytes():
    assert wire.encode_subscribe(["a", "b"], StartAt.CURRENT).hex() == (
        "0001000000095b2261222c2262225d0001"
    )
    assert wire.encode_unsubscribe(["a"]).hex() == "0002000000055b2261225d"
    assert wire.encode_error("unknown action").hex() == "0003000e756e6b6e6f776e20616374696f6e"
    assert wire.encode_delivery("d", b"hello").hex() == "000164000000000000000568656c6c6f"
    assert wire.encode_publish("d", b"hello").hex() == "0007746f7069633a640000000568656c6c6f"
    assert wire.encode_subscribe(["r"], StartAt.FROM, 3).hex() == "0001000000055b2272225d00020003"


def test_publisher_stream_events():
    assert decode_server([PUBLISHER_STREAM], max_payload=32) == [
        ("became_publisher",),
        ("published", "d", b"hello"),
        ("published", "d", b"world"),
        ("refused", wire.ERR_NO_TOPIC_PREFIX),
        ("published", "d", b""),  # the server protocol ignores it (plain) or refuses it
        ("refused", wire.ERR_MESSAGE_TOO_LARGE),
        ("published", "d", b"last"),
    ]


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_publisher_stream_decodes_the_same_however_split(cuts):
    expected = decode_server([PUBLISHER_STREAM], max_payload=32)
    assert decode_server(split(PUBLISHER_STREAM, cuts), max_payload=32) == expected


@given(st.integers(min_value=1, max_value=8))
def test_every_byte_alone_decodes_the_same(step):
    chunks = [PUBLISHER_STREAM[i : i + step] for i in range(0, len(PUBLISHER_STREAM), step)]
    assert decode_server(chunks, max_payload=32) == decode_server([PUBLISHER_STREAM], 32)


class RunRecorder(ServerRecorder):
    """Records each `published` call whole, to see how frames were grouped."""

    def published(self, topic: str, payloads: list[bytes]) -> None:
        self.events.append(("published", topic, payloads))


def test_whole_frames_to_one_topic_come_as_one_run_in_order():
    stream = (
        wire.encode_u16(wire.ACTION_PUBLISH)
        + b"".join(wire.encode_publish("a", b"%d" % i) for i in range(5))
        + wire.encode_publish("ab", b"other topic")  # same first byte, longer name
        + wire.encode_publish("a", b"x" * 40)  # over the limit: ends the run, skipped
        + wire.encode_publish("a", b"5")
        + wire.encode_publish("a", b"6")[:-1]  # cut: the rest comes in the next read
    )
    recorder = RunRecorder()
    decoder = ServerDecoder(recorder, 32)
    decoder.feed(stream)
    decoder.feed(b"6" + wire.encode_publish("a", b"7"))
    assert recorder.events == [
        ("became_publisher",),
        ("published", "a", [b"0", b"1", b"2", b"3", b"4"]),
        ("published", "ab", [b"other topic"]),
        ("refused", wire.ERR_MESSAGE_TOO_LARGE),
        ("published", "a", [b"5"]),
        ("published", "a", [b"6"]),
        ("published", "a", [b"7"]),
    ]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "ab"]), st.sampled_from([b"", b"x", b"yz", b"w" * 40])
        ),
        max_size=60,
    ),
    st.lists(st.integers(min_value=0), max_size=5),
)
def test_any_publishes_decode_one_by_one_whatever_their_sizes_and_reads(frames, cuts):
    stream = wire.encode_u16(wire.ACTION_PUBLISH) + b"".join(
        wire.encode_publish(topic, payload) for topic, payload in frames
    )
    expected = [("became_publisher",)] + [
        ("refused", wire.ERR_MESSAGE_TOO_LARGE) if len(payload) > 32 else ("published", t, payload)
        for t, payload in frames
    ]
    assert decode_server(split(stream, cuts), max_payload=32) == expected


SUBSCRIBER_STREAM = (
    wire.encode_subscribe(["a", "b"], StartAt.FROM, 7)
    + wire.encode_u16(wire.ACK)
    + wire.encode_u16(wire.NACK)
    + b"\x00\x01"
    + struct.pack(">I", 5)
    + b"nope!"
    + b"\x00\x01"  # invalid JSON
    + b"\x00\x01\x00\x00\x00\x00"  # n = 0: answered at once, no start-at
    + b"\x00\x01"
    + struct.pack(">I", 5)
    + b'["a"]'
    + b"\x00\x07"  # unknown start
    + b"\x00\x63"  # unknown action
    + b"\x00\x01"
    + struct.pack(">I", 100)
    + b"[" * 100
    + b"\x00\x02\x00\x09"  # too large
    + wire.encode_unsubscribe(["a"])
    + b"\x00\x03"  # publish is not an action of a subscriber
)


def test_subscriber_stream_events():
    assert decode_server([SUBSCRIBER_STREAM], max_payload=64) == [
        ("became_subscriber",),
        ("subscribe_requested", ["a", "b"], StartAt.FROM, 7),
        ("acked",),
        ("nacked",),
        ("refused", wire.ERR_INVALID_TOPIC_DATA),
        ("refused", wire.ERR_EMPTY_TOPIC_DATA),
        ("refused", wire.ERR_INVALID_START),
        ("unknown_action", 0x63),
        ("refused", wire.ERR_TOPIC_LIST_TOO_LARGE),
        ("unsubscribe_requested", ["a"]),
        ("unknown_action", 3),
    ]


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_subscriber_stream_decodes_the_same_however_split(cuts):
    expected = decode_server([SUBSCRIBER_STREAM], max_payload=64)
    assert decode_server(split(SUBSCRIBER_STREAM, cuts), max_payload=64) == expected


def test_a_4_gib_length_is_skipped_without_buffering():
    recorder = ServerRecorder()
    decoder = ServerDecoder(recorder, 1 << 20)
    decoder.feed(wire.encode_u16(wire.ACTION_PUBLISH) + struct.pack(">H", 7) + b"topic:d")
    decoder.feed(struct.pack(">I", 0xFFFFFFFF))
    chunk = b"\xff" * 65536
    for _ in range(64):  # 4 MiB of the 4 GiB
        decoder.feed(chunk)
        assert decoder.buffered == 0
    assert recorder.events[-1] == ("refused", wire.ERR_MESSAGE_TOO_LARGE)


def test_topic_names_are_checked():
    assert wire.topic_name_problem("orders/eu") is None
    assert wire.topic_name_problem("é" * 127) is None
    assert "empty" in wire.topic_name_problem("")
    assert "255" in wire.topic_name_problem("é" * 128)
    assert "NUL" in wire.topic_name_problem("a\x00b")
    assert "UTF-8" in wire.topic_name_problem("\ud800")
    events = decode_server([b"\x00\x03" + wire.encode_publish("x", b"1").replace(b"x", b"\xff")])
    assert events[-1] == ("refused", "invalid topic name: not valid UTF-8")


class ClientRecorder(ServerRecorder):
    pass


def decode_client(chunks, topics, pending):
    recorder = ClientRecorder()
    decoder = ClientDecoder(recorder, 1 << 20)
    for topic in topics:
        decoder.expect_topic(topic)
    decoder.pending_requests = pending
    for chunk in chunks:
        decoder.feed(chunk)
    return recorder.events


def test_client_tells_a_status_from_a_one_byte_topic_by_the_next_byte():
    # Status 1 then a delivery of topic "r": the seed's replay transcript.
    stream = bytes.fromhex("000100017200000000000000026d33")
    assert decode_client([stream], ["r"], pending=1) == [
        ("status_received", 1),
        ("delivery_received", "r", b"m3"),
    ]
    # The same topic delivered with no request pending is never a status.
    assert decode_client([bytes.fromhex("00017200000000000000026d33")], ["r"], pending=0) == [
        ("delivery_received", "r", b"m3"),
    ]


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_client_stream_decodes_the_same_however_split(cuts):
    stream = (
        wire.encode_delivery("orders", b"one")
        + wire.encode_error("unknown action")
        + wire.encode_delivery("orders", b"x" * 300)
    )
    expected = [
        ("delivery_received", "orders", b"one"),
        ("error_received", "unknown action"),
        ("delivery_received", "orders", b"x" * 300),
    ]
    assert decode_client(split(stream, cuts), ["orders"], pending=0) == expected


def extended_subscriber_events(chunks: list[bytes]) -> list[tuple]:
    recorder = ServerRecorder()
    decoder = ServerDecoder(recorder, 1 << 20)
    decoder.extended = True  # as after an agreed Hello
    for chunk in chunks:
        decoder.feed(chunk)
    # Runs of acks may be reported in groups that depend on the reads: flatten.
    flat: list[tuple] = []
    for name, *args in recorder.events:
        if name == "acked_ids":
            flat += [("acked", i) for i in args[0]]
        else:
            flat.append((name, *args))
    return flat


EXTENDED_STREAM = (
    wire.encode_subscribe(["t"], StartAt.BEGINNING)
    + b"".join(wire.encode_ack_id(i) for i in range(40))
    + wire.encode_ack_id(7, ack=False)
    + b"".join(wire.encode_ack_id(i) for i in (2**32 - 1, 0x14, 0x0014_0000))
    + wire.encode_u16(wire.ACK)  # the seed's ack is unknown here
)


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_runs_of_acks_decode_the_same_however_split(cuts):
    expected = (
        [("became_subscriber",), ("subscribe_requested", ["t"], StartAt.BEGINNING, 0)]
        + [("acked", i) for i in range(40)]
        + [("nacked_id", 7)]
        + [("acked", i) for i in (2**32 - 1, 0x14, 0x0014_0000)]
        + [("unknown_action", wire.ACK)]
    )
    assert extended_subscriber_events([EXTENDED_STREAM]) == expected
    assert extended_subscriber_events(split(EXTENDED_STREAM, cuts)) == expected


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 2**32 - 1)), max_size=200),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_any_mix_of_acks_and_nacks_decodes_in_order(answers, cuts):
    stream = wire.encode_subscribe(["t"], StartAt.CURRENT) + b"".join(
        wire.encode_ack_id(delivery_id, ack) for ack, delivery_id in answers
    )
    expected = [("became_subscriber",), ("subscribe_requested", ["t"], StartAt.CURRENT, 0)] + [
        ("acked", i) if ack else ("nacked_id", i) for ack, i in answers
    ]
    assert extended_subscriber_events(split(stream, cuts)) == expected


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 700),
    st.lists(st.tuples(st.integers(0, 699), st.integers(0, 2**32 - 1)), max_size=2),
)
def test_acks_by_id_decode_to_their_ids_counting_up_or_not(first, count, changes):
    ids = [(first + i) % 2**32 for i in range(count)]  # in order, maybe across the wrap
    for index, value in changes:  # and maybe not in order
        if index < count:
            ids[index] = value
    stream = wire.encode_subscribe(["t"], StartAt.CURRENT) + b"".join(
        wire.encode_ack_id(delivery_id) for delivery_id in ids
    )
    acked = [event for event in extended_subscriber_events([stream]) if event[0] == "acked"]
    assert acked == [("acked", delivery_id) for delivery_id in ids]


@given(st.lists(st.integers(min_value=0), max_size=10))
def test_tagged_frames_decode_the_same_however_split(cuts):
    stream = (
        wire.encode_hello({"version": 1})
        + wire.encode_u16(wire.STATUS_SUBSCRIBED)
        + wire.extended_delivery_prefix("t")
        + wire.encode_delivery_tail(5, 1, 9, 3)
        + b"abc"
        + wire.encode_confirmed(2, 40)
        + wire.extended_delivery_prefix("")
        + wire.encode_delivery_tail(6, 2, 10, 0)
        + wire.encode_error("empty message")
        + wire.extended_delivery_prefix("ü" * 3)
        + wire.encode_delivery_tail(7, 1, 11, 300)
        + b"z" * 300
    )
    expected = [
        ("hello_received", {"version": 1}),
        ("status_received", 1),
        ("extended_delivery_received", "t", 5, 1, 9, b"abc"),
        ("confirmed", 2, 40),
        ("extended_delivery_received", "", 6, 2, 10, b""),
        ("error_received", "empty message"),
        ("extended_delivery_received", "ü" * 3, 7, 1, 11, b"z" * 300),
    ]
    for chunks in ([stream], split(stream, cuts)):
        recorder = ClientRecorder()
        decoder = ClientDecoder(recorder, 1 << 20)
        decoder.expect_hello()
        for chunk in chunks:
            decoder.feed(chunk)
        assert recorder.events == expected


@given(
    st.lists(st.binary(max_size=300), max_size=300),
    st.integers(0, 2**63),
    st.integers(0, 2**32 - 1),
    st.text(max_size=5),
    st.booleans(),
)
def test_a_run_of_first_deliveries_is_the_deliveries_one_by_one(
    payloads, offset, first_id, topic, same_size
):
    first_id = min(first_id, 2**32 - len(payloads))  # a run's ids never wrap
    if same_size and payloads:  # fixed-size records go another way
        payloads = [(payload + bytes(300))[: len(payloads[0])] for payload in payloads]
    prefix = wire.extended_delivery_prefix(topic)
    run = b"".join(wire.encode_first_deliveries(prefix, offset, first_id, payloads))
    one_by_one = b"".join(
        prefix + wire.encode_delivery_tail(offset + i, 1, first_id + i, len(payload)) + payload
        for i, payload in enumerate(payloads)
    )
    assert run == one_by_one
    recorder = ClientRecorder()
    decoder = ClientDecoder(recorder, 1 << 20)
    decoder.expect_hello()
    decoder.feed(wire.encode_hello({"version": 1}) + run)
    assert recorder.events[1:] == [
        ("extended_delivery_received", topic, offset + i, 1, first_id + i, payload)
        for i, payload in enumerate(payloads)
    ]


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.booleans()), min_size=1, max_size=30),
    st.integers(0, 2**40),
    st.integers(0, 2**32 - 1),
)
def test_a_run_with_headers_is_each_delivery_after_its_headers_frame(messages, offset, first_id):
    first_id = min(first_id, 2**32 - len(messages))
    block = encode_headers([("Content-Type", "text/plain")])
    frame = wire.encode_headers_frame(block)
    payloads = [payload for payload, _ in messages]
    frames = [frame if headed else b"" for _, headed in messages]
    prefix = wire.extended_delivery_prefix("t")
    run = b"".join(
        wire.encode_first_headered_deliveries(prefix, offset, first_id, payloads, frames)
    )
    one_by_one = b"".join(
        frames[i]
        + prefix
        + wire.encode_delivery_tail(offset + i, 1, first_id + i, len(payload))
        + payload
        for i, payload in enumerate(payloads)
    )
    assert run == one_by_one
    recorder = ClientRecorder()
    decoder = ClientDecoder(recorder, 1 << 20)
    decoder.expect_hello()
    decoder.feed(wire.encode_hello({"version": 1}) + run)
    got = recorder.events[1:]
    assert [event[5] for event in got] == payloads
    assert [header_block(event[5]) for event in got] == [
        block if headed else b"" for _, headed in messages
    ]


def test_frame_helpers_count_encoded_bytes_not_characters():
    frame = wire.encode_publish("café", b"x")
    assert frame.startswith(wire.publish_prefix("café"))
    assert frame[:2] == (len("topic:café".encode())).to_bytes(2, "big")  # 11, not 10
    events = decode_server([wire.encode_u16(wire.ACTION_PUBLISH) + frame])
    assert events[-1] == ("published", "café", b"x")
    hello = wire.encode_client_hello(prefetch=8, confirms=True)
    assert json.loads(hello[6:]) == {
        "version": wire.EXTENSIONS_VERSION,
        "prefetch": 8,
        "confirms": True,
    }

"""Message headers alone: the block's encoding, payloads that carry one, and
both decoders reading header frames however the stream is split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.wire import ClientDecoder, ServerDecoder
from broker.wire.headers import (
    ERR_HEADERS_TOO_LARGE,
    ERR_INVALID_HEADERS,
    Headered,
    Headers,
    decode_headers,
    encode_headers,
    header_block,
    with_headers,
)
from tests.unit.wire.test_wire import ServerRecorder, split

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=40)
values = st.text(max_size=200).filter(lambda value: len(value.encode()) <= 0xFFFF)


@given(st.lists(st.tuples(names, values), max_size=12))
def test_a_block_decodes_to_the_pairs_encoded_in_order(pairs):
    assert decode_headers(encode_headers(pairs)) == pairs


def test_names_are_tokens_and_values_text():
    with pytest.raises(ValueError, match="not a token"):
        encode_headers([("bad name", "x")])
    with pytest.raises(ValueError, match="not a token"):
        encode_headers([("", "x")])
    with pytest.raises(TypeError):
        encode_headers([("name", b"bytes")])  # type: ignore[list-item]
    assert encode_headers({}) == b""


@pytest.mark.parametrize(
    "block",
    [
        b"\x00",  # no count
        b"\x00\x01",  # one header announced, none there
        b"\x00\x01\x01a\x00\x05ab",  # a value shorter than said
        b"\x00\x01\x01 \x00\x00",  # a name that is not a token
        b"\x00\x01\x01a\x00\x01\xff",  # a value that is not UTF-8
        b"\x00\x00extra",  # bytes after the last header
    ],
)
def test_a_damaged_block_is_refused(block):
    with pytest.raises(wire.ProtocolError, match=ERR_INVALID_HEADERS):
        decode_headers(block)


def test_names_are_found_whatever_their_case_and_repeats_are_kept():
    headers = Headers([("Content-Type", "text/plain"), ("tag", "a"), ("TAG", "b")])
    assert headers["content-type"] == "text/plain"
    assert headers["Tag"] == "a" and headers.get_all("tag") == ["a", "b"]
    assert list(headers) == ["Content-Type", "tag", "TAG"] and len(headers) == 3
    assert headers.get("missing") is None
    assert Headers.of(b"plain") == {} and not Headers.of(b"plain")


def test_a_payload_with_headers_is_its_payload_to_whatever_ignores_them():
    carried = with_headers(b"payload", encode_headers({"a": "1"}))
    assert type(carried) is Headered and carried == b"payload" and len(carried) == 7
    assert Headers.of(carried) == Headers([("a", "1")])
    assert with_headers(b"payload", b"") == b"payload"
    assert header_block(b"payload") == b""


def decode_publisher(chunks: list[bytes], max_header_bytes: int = 1024) -> list[tuple]:
    recorder = ServerRecorder()
    decoder = ServerDecoder(recorder, 1 << 20)
    decoder.extended = True
    decoder.max_header_bytes = max_header_bytes
    for chunk in chunks:
        decoder.feed(chunk)
    return [
        (*event[:2], bytes(event[2]), Headers.of(event[2]).pairs())
        if event[0] == "published"
        else event
        for event in recorder.events
    ]


HEADERED_STREAM = (
    wire.encode_u16(wire.ACTION_PUBLISH)
    + wire.encode_publish("t", b"plain")
    + wire.encode_headers_frame(encode_headers([("trace", "1"), ("Kind", "ü")]))
    + wire.encode_publish("t", b"with")
    + wire.encode_publish("t", b"after")  # no headers: they were the frame's before
    + wire.encode_headers_frame(encode_headers({"n": "1"}))
    + wire.encode_publish("t", b"run 1")  # a run of headered publishes to one topic
    + wire.encode_headers_frame(encode_headers({"n": "2"}))
    + wire.encode_publish("t", b"run 2")
    + wire.encode_headers_frame(encode_headers({"n": "3"}))
    + wire.encode_publish("u", b"other topic")
    + wire.encode_headers_frame(b"\x00\x01\x01 \x00\x00")  # damaged: refused once, frame eaten
    + wire.encode_publish("t", b"eaten")
    + wire.encode_headers_frame(b"x" * 2000)  # over the limit: refused once, frame eaten
    + wire.encode_publish("t", b"eaten too")
    + wire.encode_headers_frame(encode_headers({"a": "b"}))
    + wire.encode_publish("t", b"")  # empty, with headers: reported for the session to refuse
    + wire.encode_publish("t", b"last")
)

HEADERED_EVENTS = [
    ("became_publisher",),
    ("published", "t", b"plain", ()),
    ("published", "t", b"with", (("trace", "1"), ("Kind", "ü"))),
    ("published", "t", b"after", ()),
    ("published", "t", b"run 1", (("n", "1"),)),
    ("published", "t", b"run 2", (("n", "2"),)),
    ("published", "u", b"other topic", (("n", "3"),)),
    ("refused", ERR_INVALID_HEADERS),
    ("refused", ERR_HEADERS_TOO_LARGE),
    ("published", "t", b"", (("a", "b"),)),
    ("published", "t", b"last", ()),
]


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_a_publishers_headers_decode_the_same_however_split(cuts):
    assert decode_publisher([HEADERED_STREAM]) == HEADERED_EVENTS
    assert decode_publisher(split(HEADERED_STREAM, cuts)) == HEADERED_EVENTS


def test_without_headers_agreed_a_header_frame_is_not_one():
    recorder = ServerRecorder()
    decoder = ServerDecoder(recorder, 1 << 20)
    decoder.feed(
        wire.encode_u16(wire.ACTION_PUBLISH) + wire.encode_headers_frame(encode_headers({"a": "b"}))
    )
    # Read as a topic of 65,534 bytes, as any broker before headers would.
    assert ("published",) not in [event[:1] for event in recorder.events]
    assert decoder.missing > 0


class ClientRecorder(ServerRecorder):
    def extended_delivery_received(self, topic, offset, attempt, delivery_id, payload):
        self.events.append(("delivery", topic, offset, bytes(payload), Headers.of(payload).pairs()))


@given(st.lists(st.integers(min_value=0), max_size=10))
def test_a_subscribers_headers_decode_the_same_however_split(cuts):
    block = encode_headers([("Content-Type", "application/json")])
    stream = (
        wire.encode_hello({"version": 1, "headers": True})
        + wire.encode_headers_frame(block)
        + wire.extended_delivery_prefix("t")
        + wire.encode_delivery_tail(5, 1, 9, 2)
        + b"{}"
        + wire.extended_delivery_prefix("t")
        + wire.encode_delivery_tail(6, 1, 10, 1)
        + b"x"
    )
    expected = [
        ("hello_received", {"version": 1, "headers": True}),
        ("delivery", "t", 5, b"{}", (("Content-Type", "application/json"),)),
        ("delivery", "t", 6, b"x", ()),
    ]
    for chunks in ([stream], split(stream, cuts)):
        recorder = ClientRecorder()
        decoder = ClientDecoder(recorder, 1 << 20)
        decoder.expect_hello()
        for chunk in chunks:
            decoder.feed(chunk)
        assert recorder.events == expected


def test_a_message_id_is_found_wherever_it_is_and_kept_from_subscribers():
    from broker.wire.headers import message_id, with_message_id, without_message_id

    alone = with_message_id(b"data", "abc.1")
    assert (bytes(alone), message_id(alone)) == (b"data", b"abc.1")
    assert without_message_id(alone.headers) == b""
    among = with_message_id(with_headers(b"d", encode_headers([("a", "b")])), "x")
    assert decode_headers(among.headers) == [("Msg-Id", "x"), ("a", "b")]
    assert decode_headers(without_message_id(among.headers)) == [("a", "b")]
    later = with_headers(b"d", encode_headers([("a", "b"), ("msg-ID", "y"), ("c", "msg-id")]))
    assert message_id(later) == b"y"
    assert decode_headers(without_message_id(later.headers)) == [("a", "b"), ("c", "msg-id")]
    plain = with_headers(b"d", encode_headers([("a", "b")]))
    assert message_id(plain) is None and message_id(b"no headers") is None
    assert without_message_id(plain.headers) == plain.headers


@given(st.lists(st.tuples(names, st.text(max_size=20)), max_size=5), st.binary(max_size=3))
def test_the_brokers_quick_check_agrees_with_decoding(pairs, noise):
    from broker.wire.headers import is_header_block

    block = encode_headers(pairs) or b"\x00\x00"
    assert is_header_block(block)
    for damaged in [block[:cut] for cut in range(len(block))] + [block + noise]:
        try:
            decode_headers(damaged)
            decodes = True
        except wire.ProtocolError:
            decodes = False
        assert is_header_block(damaged) == (decodes and bool(damaged))

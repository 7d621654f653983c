"""JSON from peers and the Hello's fields: refused clearly, never raised through."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire import (
    ERR_INVALID_HELLO,
    ERR_INVALID_TOPIC_DATA,
    ProtocolError,
    decode_topic_list,
    untrusted_json,
)
from broker.wire.hello import HelloRequest, parse_hello_request
from broker.wire.untrusted_json import UntrustedJSONError


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"[" * 100_000, "nested too deeply"),
        (b"{" * 50_000, "not JSON"),
        (b"[" * 40 + b"]" * 40, "nested too deeply"),
        (b'{"prefetch": Infinity}', "Infinity is not a number"),
        (b"[NaN]", "NaN is not a number"),
        (b"-Infinity", "-Infinity is not a number"),
        (b"1e999", "out of range"),
        (b"9" * 5000, "integer too long"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"", "not JSON"),
    ],
)
def test_hostile_json_is_refused_with_a_reason(payload, reason):
    with pytest.raises(UntrustedJSONError, match=reason):
        untrusted_json.parse(payload)


def test_ordinary_json_parses_as_json_does():
    text = b'{"a": [1, 2.5, "x", null, true], "b": {"c": -12345678901234567890}}'
    assert untrusted_json.parse(text) == json.loads(text)
    assert untrusted_json.parse(b"[" * 32 + b"]" * 32) == json.loads(b"[" * 32 + b"]" * 32)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_value_parses_or_is_refused_never_raises_otherwise(value):
    payload = json.dumps(value).encode()  # may hold NaN and Infinity
    try:
        parsed = untrusted_json.parse(payload)
    except UntrustedJSONError:
        return
    assert parsed == json.loads(payload)


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_hello_and_topic_lists_raise_only_protocol_errors(payload):
    for parse, text in ((parse_hello_request, ERR_INVALID_HELLO), (decode_topic_list, None)):
        try:
            parse(payload)
        except ProtocolError as error:
            assert text is None or str(error) == text
            assert error.detail


@pytest.mark.parametrize(
    "fields",
    [
        {"prefetch": True},
        {"prefetch": 1.0},
        {"prefetch": 0},
        {"prefetch": -5},
        {"prefetch": 2**32},
        {"prefetch": "10"},
        {"prefetch": None},
        {"confirms": 1},
        {"confirms": "yes"},
        {"version": 0},
        {"version": [1]},
    ],
)
def test_hello_fields_must_have_their_type_and_range(fields):
    with pytest.raises(ProtocolError, match=ERR_INVALID_HELLO) as raised:
        parse_hello_request(json.dumps(fields).encode())
    assert next(iter(fields)) in raised.value.detail


def test_a_valid_hello_and_its_defaults():
    assert parse_hello_request(b"{}") == HelloRequest(version=1, prefetch=1, confirms=False)
    request = parse_hello_request(b'{"version":1,"prefetch":300,"confirms":true,"future":[1]}')
    assert request == HelloRequest(version=1, prefetch=300, confirms=True)
    with pytest.raises(ProtocolError, match=ERR_INVALID_HELLO):
        parse_hello_request(b"[1]")


def test_topic_lists_keep_the_references_error_text_and_log_the_reason():
    with pytest.raises(ProtocolError) as raised:
        decode_topic_list(b"[" * 5000)
    assert str(raised.value) == ERR_INVALID_TOPIC_DATA
    assert "nested too deeply" in raised.value.detail

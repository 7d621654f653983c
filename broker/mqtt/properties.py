"""MQTT 5 properties as this broker's message headers, and back.

A publish's properties are stored as headers (broker.wire.headers), so that
a subscriber of any door sees them:

| MQTT 5 property | header |
| --- | --- |
| user property (name, value) | the same pair (names must be header tokens) |
| content type | `Content-Type` |
| response topic | `Reply-To` (as this broker's topic name) |
| correlation data | `Correlation-Id` (if UTF-8), else `Correlation-Data-Base64` |
| message expiry interval | `Expires` (seconds since the epoch) |
| payload format indicator 1 | `Payload-Format: utf-8` |

An MQTT 5 subscriber gets them back as properties, the expiry interval as
what is left of it; other headers (a Python client's, say) come as user
properties. An MQTT 3.1.1 subscriber gets the payload alone.
"""

from __future__ import annotations

import base64
import contextlib
import math

from broker.mqtt.packets import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    USER_PROPERTY,
    Properties,
)
from broker.mqtt.topics import InvalidTopic, to_broker_topic, to_mqtt_topic
from broker.wire.headers import (
    CORRELATION_ID,
    EXPIRES,
    REPLY_TO,
    Headers,
    encode_headers,
)

CONTENT_TYPE_HEADER = "Content-Type"
CORRELATION_DATA_HEADER = "Correlation-Data-Base64"
PAYLOAD_FORMAT_HEADER = "Payload-Format"


class UnfitProperties(ValueError):
    """Properties that cannot be headers (a user property whose name is not
    a header name, say); the message says which."""


def headers_of(properties: Properties | None, now: float) -> bytes:
    """The header block of a publish's properties (b"" if none carry over)."""
    if not properties:
        return b""
    pairs: list[tuple[str, str]] = []
    content_type = properties.get(CONTENT_TYPE)
    if content_type is not None:
        pairs.append((CONTENT_TYPE_HEADER, content_type))
    response_topic = properties.get(RESPONSE_TOPIC)
    if response_topic is not None:
        try:
            pairs.append((REPLY_TO, to_broker_topic(response_topic)))
        except InvalidTopic as error:
            raise UnfitProperties(f"response topic: {error}") from None
    correlation = properties.get(CORRELATION_DATA)
    if correlation is not None:
        try:
            pairs.append((CORRELATION_ID, correlation.decode("utf-8")))
        except UnicodeDecodeError:
            pairs.append((CORRELATION_DATA_HEADER, base64.b64encode(correlation).decode("ascii")))
    expiry = properties.get(MESSAGE_EXPIRY_INTERVAL)
    if expiry is not None:
        pairs.append((EXPIRES, f"{now + expiry:.3f}"))
    if properties.get(PAYLOAD_FORMAT_INDICATOR) == 1:
        pairs.append((PAYLOAD_FORMAT_HEADER, "utf-8"))
    pairs += properties.get(USER_PROPERTY, ())
    if not pairs:
        return b""
    try:
        return encode_headers(pairs)
    except (ValueError, TypeError) as error:
        raise UnfitProperties(f"a user property cannot be a header: {error}") from None


_SPECIAL = {
    CONTENT_TYPE_HEADER.lower(),
    CORRELATION_DATA_HEADER.lower(),
    PAYLOAD_FORMAT_HEADER.lower(),
    REPLY_TO.lower(),
    CORRELATION_ID.lower(),
    EXPIRES.lower(),
}


def properties_of(headers: Headers, now: float) -> Properties | None:
    """The MQTT 5 properties a delivery's headers are (None if none)."""
    if not headers:
        return None
    properties: Properties = {}
    content_type = headers.get(CONTENT_TYPE_HEADER)
    if content_type is not None:
        properties[CONTENT_TYPE] = content_type
    reply_to = headers.get(REPLY_TO)
    if reply_to is not None:
        properties[RESPONSE_TOPIC] = to_mqtt_topic(reply_to)
    correlation = headers.get(CORRELATION_ID)
    if correlation is not None:
        properties[CORRELATION_DATA] = correlation.encode("utf-8")
    else:
        encoded = headers.get(CORRELATION_DATA_HEADER)
        if encoded is not None:
            with contextlib.suppress(ValueError):  # (not base64: not carried)
                properties[CORRELATION_DATA] = base64.b64decode(encoded, validate=True)
    expires = headers.get(EXPIRES)
    if expires is not None:
        try:
            left = float(expires) - now
        except ValueError:
            left = math.nan
        if math.isfinite(left):
            properties[MESSAGE_EXPIRY_INTERVAL] = min(max(round(left), 0), 0xFFFFFFFF)
    if headers.get(PAYLOAD_FORMAT_HEADER) == "utf-8":
        properties[PAYLOAD_FORMAT_INDICATOR] = 1
    users = [pair for pair in headers.pairs() if pair[0].lower() not in _SPECIAL]
    if users:
        properties[USER_PROPERTY] = users
    return properties or None

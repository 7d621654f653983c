"""Topic names as the wire carries them: which are valid, and decoding a
name or a subscribe's JSON list of names from untrusted bytes.
"""

from __future__ import annotations

import broker.wire.untrusted_json as untrusted_json
from broker.wire.codes import ERR_INVALID_TOPIC_DATA, MAX_TOPIC_BYTES, ProtocolError


def topic_name_problem(name: str) -> str | None:
    """Say what is wrong with a topic name, or None if it is valid.

    Valid: 1 to 255 bytes of UTF-8 with no NUL. NUL is refused so that a
    delivery's topic can never be mistaken for a status by a plain client,
    and so that names map cleanly onto file names.
    """
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid topic name: not valid UTF-8"
    if not encoded:
        return "invalid topic name: empty"
    if len(encoded) > MAX_TOPIC_BYTES:
        return f"invalid topic name: longer than {MAX_TOPIC_BYTES} bytes"
    if "\x00" in name:
        return "invalid topic name: contains NUL"
    return None


def decode_topic_name(raw: bytes) -> str:
    """Decode a topic name received as bytes, or raise ProtocolError."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid topic name: not valid UTF-8") from None
    problem = topic_name_problem(name)
    if problem:
        raise ProtocolError(problem)
    return name


def decode_topic_list(payload: bytes) -> list[str]:
    """Decode a subscribe/unsubscribe payload: a JSON array of topic names."""
    try:
        topics = untrusted_json.parse(payload)
    except untrusted_json.UntrustedJSONError as error:
        raise ProtocolError(ERR_INVALID_TOPIC_DATA, f"{ERR_INVALID_TOPIC_DATA}: {error}") from None
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise ProtocolError(
            ERR_INVALID_TOPIC_DATA, f"{ERR_INVALID_TOPIC_DATA}: not a list of topic names"
        )
    for name in topics:
        problem = topic_name_problem(name)
        if problem:
            raise ProtocolError(problem)
    return list(dict.fromkeys(topics))

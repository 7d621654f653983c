"""Message headers: an ordered list of (name, value) pairs carried beside a
payload, as NATS and HTTP carry them. Names are ASCII tokens (RFC 9110's
tchar), compared without case; values are UTF-8 text.

On the wire and in every store a message's headers are one block:

    u16 count | count x (u8 name length | name | u16 value length | value)

A payload that has headers is a `Headered`: its bytes are the payload alone
(so that whatever ignores headers, a plain delivery or a Go client, sees
the message as before) and its `headers` attribute holds the block.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from broker.wire.codes import ProtocolError

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,255}")

ERR_INVALID_HEADERS = "invalid headers"
ERR_HEADERS_TOO_LARGE = "headers too large"
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

HeaderPairs = Iterable[tuple[str, str]] | Mapping[str, str]
"""What a caller gives: pairs in order, or a mapping."""


class Headered(bytes):
    """A payload with headers: the payload's bytes, and `headers`, the
    encoded block (see the module). Made only for messages that have them;
    the others stay plain bytes and cost nothing more."""

    headers: bytes

    def __reduce__(self) -> tuple[object, ...]:  # pragma: no cover - copy/pickle
        return (with_headers, (bytes(self), self.headers))


def with_headers(payload: bytes, block: bytes) -> bytes:
    """`payload` carrying the header block `block` (itself if the block is empty)."""
    if not block:
        return payload
    headered = Headered(payload)
    headered.headers = block
    return headered


def header_block(payload: bytes) -> bytes:
    """The header block a payload carries; b"" for one without headers."""
    return payload.headers if type(payload) is Headered else b""


def encode_headers(headers: HeaderPairs) -> bytes:
    """The block of `headers`; ValueError for a name that is not a token or
    a value that is not text (b"" for none)."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if not pairs:
        return b""
    if len(pairs) > 0xFFFF:
        raise ValueError("at most 65,535 headers")
    pieces = [_U16.pack(len(pairs))]
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values are str")
        raw_name = name.encode("ascii", "replace")
        if not _TOKEN.fullmatch(raw_name):
            raise ValueError(
                f"header name {name!r} is not a token (letters, digits, !#$%&'*+-.^_`|~)"
            )
        raw_value = value.encode("utf-8")
        if len(raw_value) > 0xFFFF:
            raise ValueError(f"header {name!r}: a value of at most 65,535 bytes")
        pieces += [_U8.pack(len(raw_name)), raw_name, _U16.pack(len(raw_value)), raw_value]
    return b"".join(pieces)


def decode_headers(block: bytes) -> list[tuple[str, str]]:
    """The pairs of a block, in order; ProtocolError if it is not one."""
    if not block:
        return []
    try:
        (count,) = _U16.unpack_from(block, 0)
        pos = 2
        pairs = []
        for _ in range(count):
            name_length = block[pos]
            raw_name = block[pos + 1 : pos + 1 + name_length]
            pos += 1 + name_length
            (value_length,) = _U16.unpack_from(block, pos)
            raw_value = block[pos + 2 : pos + 2 + value_length]
            pos += 2 + value_length
            if len(raw_value) != value_length or not _TOKEN.fullmatch(raw_name):
                raise ValueError
            pairs.append((raw_name.decode("ascii"), raw_value.decode("utf-8")))
    except (IndexError, struct.error, ValueError):
        raise ProtocolError(ERR_INVALID_HEADERS) from None
    if pos != len(block):
        raise ProtocolError(ERR_INVALID_HEADERS)
    return pairs


def is_header_block(block: bytes) -> bool:
    """Whether `block` is a well-formed header block: the
    broker's check of what a publisher sends, quicker than decoding it
    (names seen before are known, ASCII values need no decoding)."""
    try:
        (count,) = _U16.unpack_from(block, 0)
        pos = 2
        known = _GOOD_NAMES
        for _ in range(count):
            name_end = pos + 1 + block[pos]
            name = block[pos + 1 : name_end]
            if name not in known:
                if not _TOKEN.fullmatch(name):
                    return False
                if len(known) >= _GOOD_NAMES_KEPT:
                    known.clear()
                known.add(name)
            (value_length,) = _U16.unpack_from(block, name_end)
            pos = name_end + 2 + value_length
            value = block[name_end + 2 : pos]
            if not value.isascii():
                value.decode("utf-8")
    except (IndexError, struct.error, UnicodeDecodeError):
        return False
    return pos == len(block)


_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_KEPT = 1024


class Headers(Mapping[str, str]):
    """A message's headers, read-only: `headers["Content-Type"]` finds a
    name whatever its case (the first, if it comes more than once),
    `get_all(name)` every value of it, `items()` the pairs in order."""

    __slots__ = ("_first", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs = tuple(pairs)
        self._first: dict[str, str] = {}
        """Each name, lowered, to its first value: a look-up is one step."""
        for key, value in self._pairs:
            self._first.setdefault(key.lower(), value)

    @classmethod
    def of(cls, payload: bytes) -> Headers:
        """The headers a delivered payload carries (none for plain bytes);
        the blocks decoded lately are kept, as messages repeat them."""
        if type(payload) is not Headered:
            return _NONE
        return cls.of_block(payload.headers)

    @classmethod
    def of_block(cls, block: bytes) -> Headers:
        """The headers of a block (none for b""), kept as `of` keeps them."""
        if not block:
            return _NONE
        found = _DECODED.get(block)
        if found is None:
            found = cls(decode_headers(block))
            if len(_DECODED) >= _DECODED_KEPT:
                _DECODED.clear()
            _DECODED[block] = found
        return found

    def __getitem__(self, name: str) -> str:
        try:
            return self._first[name.lower()]
        except KeyError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self._pairs if key.lower() == wanted]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key for key, _ in self._pairs))

    def __len__(self) -> int:
        return len(dict.fromkeys(key for key, _ in self._pairs))

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (name, value), in order, repeats included."""
        return self._pairs

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._pairs == other._pairs
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self._pairs)!r})"


_NONE = Headers()
_DECODED: dict[bytes, Headers] = {}
_DECODED_KEPT = 256


MESSAGE_ID = "Msg-Id"
"""The header that names a publish, so that the broker stores it once
however often it is sent (within its dedup window)."""
ID_PAIR_HEAD = b"\x06Msg-Id"
"""How a Msg-Id pair starts in a block (its name's length, its name)."""
_ID_NAME = b"msg-id"


def is_lone_id(block: bytes) -> bool:
    """Whether a header block is one Msg-Id header and nothing else (as the
    clients send the ids they make)."""
    return block[:9] == LONE_ID_HEAD and len(block) == 11 + _U16.unpack_from(block, 9)[0]


LONE_ID_HEAD = b"\x00\x01" + ID_PAIR_HEAD
"""How a block that is one Msg-Id header starts (as the clients send ids)."""


def message_id(payload: bytes) -> bytes | None:
    """The raw value of the Msg-Id header a payload carries (the first, if
    several), or None. Quick for the blocks the clients write, which put it
    first."""
    if type(payload) is not Headered:
        return None
    block = payload.headers
    if block[2:9] == ID_PAIR_HEAD:
        (length,) = _U16.unpack_from(block, 9)
        return block[11 : 11 + length]
    (count,) = _U16.unpack_from(block, 0)
    pos = 2
    for _ in range(count):
        name_end = pos + 1 + block[pos]
        (length,) = _U16.unpack_from(block, name_end)
        if name_end - pos == 7 and block[pos + 1 : name_end].lower() == _ID_NAME:
            return block[name_end + 2 : name_end + 2 + length]
        pos = name_end + 2 + length
    return None


def message_id_block(value: str) -> bytes:
    """The header block of a Msg-Id header alone (as the clients send it)."""
    raw = value.encode("utf-8")
    return LONE_ID_HEAD + _U16.pack(len(raw)) + raw


def with_message_id(payload: bytes, value: str) -> bytes:
    """`payload` with a Msg-Id header of `value` first among its headers."""
    raw = value.encode("utf-8")
    pair = ID_PAIR_HEAD + _U16.pack(len(raw)) + raw
    block = header_block(payload)
    count = _U16.unpack_from(block, 0)[0] if block else 0
    return with_headers(bytes(payload), _U16.pack(count + 1) + pair + block[2:])


def without_message_id(block: bytes) -> bytes:
    """A header block without its Msg-Id headers (b"" if nothing is left):
    the id is the broker's business (deduplication), not a subscriber's."""
    if block[2:9] == ID_PAIR_HEAD:  # where the clients put it
        (count,) = _U16.unpack_from(block, 0)
        (length,) = _U16.unpack_from(block, 9)
        if count == 1:
            return b""
        block = _U16.pack(count - 1) + block[11 + length :]
    if _ID_NAME not in block.lower():
        return block
    kept = [(name, value) for name, value in decode_headers(block) if name.lower() != "msg-id"]
    return encode_headers(kept)


REPLY_TO = "Reply-To"
"""A request's header: the inbox topic its replies go to."""
CORRELATION_ID = "Correlation-Id"
"""A request's header, copied into its reply, so that a requester with
several requests out knows which one a reply answers."""
STATUS = "Status"
"""A header the broker sets on a reply it makes itself: "503" for a request
to a topic nobody reads (no responders)."""
NO_RESPONDERS = "503"


def reply_to(payload: bytes) -> str | None:
    """The Reply-To a payload's headers carry, or None (quick for those
    without)."""
    return _named(payload, MAY_REPLY, REPLY_TO)


def _named(payload: bytes, fact: int, name: str) -> str | None:
    """The header `name` of a payload, or None: found without decoding the
    block where its `fact` says it cannot be there."""
    if type(payload) is not Headered:
        return None
    block = payload.headers
    if not block_facts(block) & fact:
        return None
    return Headers.of(payload).get(name)


MAY_REPLY = 1
"""A fact of a block: it may have a Reply-To header."""
MAY_BE_TIMED = 2
"""It may have a Not-Before or an Expires header."""
MAY_HAVE_KEY = 4
"""It may have a Key header."""
MAY_EXPECT = 8
"""It may have an Expected-Revision header."""
_FACT_NAMES = (
    (b"reply-to", MAY_REPLY),
    (b"not-before", MAY_BE_TIMED),
    (b"expires", MAY_BE_TIMED),
    (b"key", MAY_HAVE_KEY),
    (b"expected-revision", MAY_EXPECT),
)


def block_facts(block: bytes) -> int:
    """Which of the headers the broker acts on a block may have (the MAY_
    flags; 0 for most): one pass over its bytes, made once per block for
    the blocks seen lately, so that the checks of each publish and of each
    delivery (a reply-to, a delay, a key) are a look-up each."""
    facts = _FACTS.get(block)
    if facts is None:
        facts = 0
        if not is_lone_id(block):
            lowered = block.lower()
            for name, fact in _FACT_NAMES:
                if name in lowered:
                    facts |= fact
        if len(_FACTS) >= _FACTS_KEPT:
            _FACTS.clear()
        _FACTS[block] = facts
    return facts


_FACTS: dict[bytes, int] = {}
_FACTS_KEPT = 8192


NOT_BEFORE = "Not-Before"
"""A message's header: not delivered before this time (seconds since the
epoch, a decimal number): a delayed message."""
EXPIRES = "Expires"
"""A message's header: not delivered at or after this time (seconds since
the epoch, a decimal number)."""


KEY = "Key"
"""A message's key: in a compacted topic the latest message of each key is
kept, and one with an empty payload deletes the key (a tombstone)."""
EXPECTED_REVISION = "Expected-Revision"
"""A keyed publish's condition: stored only if the key's latest message is
at this offset (0: only if the key has none), as a compare-and-set."""


def wrong_revision(key: str, revision: int | None) -> str:
    """The refusal of a publish whose Expected-Revision is not its key's
    `revision` (None: the key was written earlier in the same batch)."""
    if revision is None:
        return f"wrong last revision for key {key!r}: written earlier in the batch"
    return f"wrong last revision for key {key!r}: it is {revision}"


def expected_revision(payload: bytes) -> str:
    """The Expected-Revision a keyed publish names ('' if none)."""
    if type(payload) is not Headered or not block_facts(payload.headers) & MAY_EXPECT:
        return ""
    return Headers.of(payload).get(EXPECTED_REVISION, "")


def message_key(payload: bytes) -> str | None:
    """The Key a payload's headers carry, or None (quick for those without)."""
    return _named(payload, MAY_HAVE_KEY, KEY)

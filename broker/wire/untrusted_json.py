"""JSON from peers, parsed defensively: every JSON payload the broker (or
its client) reads goes through `parse`.

Python's `json` accepts NaN and Infinity, turns 1e999 into a float
infinity, converts integers of any length (quadratic in their digits on
some Pythons), and raises RecursionError on deep nesting. Here each of those
is a `ValueError` with a short reason, so callers have one exception to
catch and a stream that stays in step.
"""

from __future__ import annotations

import json
import math

# Longest integer literal accepted: enough for any u64 and then some.
MAX_INTEGER_DIGITS = 24
# Arrays and objects nested deeper than this are refused.
MAX_DEPTH = 32


class UntrustedJSONError(ValueError):
    """The payload is not JSON this broker accepts; the message says why."""


def _refuse_constant(name: str) -> object:
    raise UntrustedJSONError(f"{name} is not a number JSON allows")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise UntrustedJSONError("integer too long")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedJSONError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float
)


def parse(payload: bytes) -> object:
    """The value `payload` holds, or UntrustedJSONError.

    The payload's size is already bounded by the frame that carried it.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise UntrustedJSONError("not valid UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except UntrustedJSONError:
        raise
    except RecursionError:
        raise UntrustedJSONError("nested too deeply") from None
    except ValueError as error:  # json.JSONDecodeError included
        raise UntrustedJSONError(f"not JSON: {error}") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise UntrustedJSONError("nested too deeply")
    return value


def _depth_exceeds(value: object, limit: int) -> bool:
    """True if arrays and objects nest more than `limit` deep (iteratively)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False

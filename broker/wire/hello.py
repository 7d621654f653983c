"""What a client may ask for in its Hello, checked field by field.

A Hello is a JSON object. Known fields must have the right type and lie in
range (a boolean `true` is not the integer 1, and 1.0 is not a prefetch);
unknown fields are ignored, so that newer clients can talk to this broker.
Credentials are `user` with `password`, or a `token`: strings of bounded
length, never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.wire.codes import ERR_INVALID_HELLO, ProtocolError
from broker.wire.frames import decode_hello

MAX_U32 = 0xFFFFFFFF
MAX_USER_NAME = 256
MAX_SECRET = 4096


@dataclass(frozen=True)
class HelloRequest:
    """The extensions a client asked for."""

    version: int = 1
    prefetch: int = 1
    """Deliveries in flight the client can take (the broker may grant fewer)."""
    confirms: bool = False
    patterns: bool = False
    """Whether `*` and `>` tokens in subscribed names are patterns."""
    groups: bool = False
    """Whether `$share/GROUP/TOPIC` names a consumer group's subscription."""
    headers: bool = False
    """Whether messages may carry headers (broker.wire.headers) both ways."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    confirm_order: str | None = None
    """"topic": confirms per topic, each naming its publish; None or
    "publish": one answer after another in publish order."""

    @property
    def has_credentials(self) -> bool:
        return self.user is not None or self.token is not None


def _invalid(reason: str) -> ProtocolError:
    return ProtocolError(ERR_INVALID_HELLO, f"{ERR_INVALID_HELLO}: {reason}")


def _integer(fields: dict, name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name, default)
    # bool is a subclass of int: true must not pass for 1.
    if type(value) is not int or not low <= value <= high:
        raise _invalid(f"{name} must be an integer from {low} to {high}")
    return value


def _boolean(fields: dict, name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if type(value) is not bool:
        raise _invalid(f"{name} must be true or false")
    return value


def _string(fields: dict, name: str, longest: int) -> str | None:
    value = fields.get(name)
    if value is not None and (type(value) is not str or not 1 <= len(value) <= longest):
        raise _invalid(f"{name} must be a string of 1 to {longest} characters")
    return value


CONFIRM_ORDERS = ("publish", "topic")


def _confirm_order(fields: dict) -> str | None:
    value = fields.get("confirm_order")
    if value is not None and value not in CONFIRM_ORDERS:
        raise _invalid('confirm_order must be "publish" or "topic"')
    return value


def parse_hello_request(payload: bytes) -> HelloRequest:
    """A client's Hello, checked; ProtocolError("invalid hello") for anything off."""
    fields = decode_hello(payload)
    user = _string(fields, "user", MAX_USER_NAME)
    password = _string(fields, "password", MAX_SECRET)
    token = _string(fields, "token", MAX_SECRET)
    if (user is None) != (password is None):
        raise _invalid("user and password go together")
    if token is not None and user is not None:
        raise _invalid("give a token or a user and password, not both")
    return HelloRequest(
        version=_integer(fields, "version", 1, 1, MAX_U32),
        prefetch=_integer(fields, "prefetch", 1, 1, MAX_U32),
        confirms=_boolean(fields, "confirms", False),
        confirm_order=_confirm_order(fields),
        patterns=_boolean(fields, "patterns", False),
        groups=_boolean(fields, "groups", False),
        headers=_boolean(fields, "headers", False),
        user=user,
        password=password,
        token=token,
    )

"""Who may read the monitor: the `Host` a request names must be one the
broker serves (a page on another site that rebinds its DNS name to this
address names its own), and, with a users file, the request must carry
the credentials of a user with `monitor = true`, as HTTP Basic (its
password) or a bearer token (as Prometheus scrapers send them); with
`[users.anonymous]` given `monitor = true`, requests without any.

Passwords are checked by the broker's own Authenticator: scrypt in a
thread, and the same slowdown of repeated failures from one address as
sign-ins on --port. /healthz answers without credentials, with the state
alone, for orchestrators. /admin/ (broker.monitoring.admin) acts on the
broker: it needs a user with `admin = true` instead.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable
from typing import Any, cast
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from broker.security.auth import AuthenticationFailed, Authenticator
from broker.security.users import User
from broker.wire.hello import HelloRequest

# Names every monitor answers to: the loopback interface's.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
REALM = 'realm="broker monitor"'
# Paths served without credentials (their answers tell the state alone).
OPEN_PATHS = ([b"healthz"],)


def host_name(header: bytes | None) -> str | None:
    """The name in a `Host` header, without its port, in lower case; None
    if there is none or it is malformed."""
    if not header:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    else:
        name, colon, port = text.partition(":")
        if colon and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def _canonical(name: str) -> str:
    """An address in one spelling (::0:1 is ::1); a DNS name in lower case."""
    name = name.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


class MonitorAccess:
    """Decides whether a request may be answered: its `Host` (any of
    `hosts`, or the address the request arrived at), and its credentials
    when `authenticator` is given (None: no users file, no credentials)."""

    def __init__(self, hosts: Iterable[str], authenticator: Authenticator | None) -> None:
        self.hosts = frozenset(_canonical(host) for host in [*LOOPBACK_HOSTS, *hosts] if host)
        self.authenticator = authenticator

    def host_refused(self, request: Request) -> str | None:
        """Why the request's `Host` is not one this monitor serves, or None."""
        name = host_name(request.getHeader(b"host"))
        if name is None:
            return "a request needs a well-formed Host header"
        arrived_at = getattr(request.getHost(), "host", None)
        if _canonical(name) in self.hosts or (
            arrived_at is not None and _canonical(name) == _canonical(arrived_at)
        ):
            return None
        return "this monitor does not serve that Host name (see --monitor-host)"

    def user(self, request: Request, right: str = "monitor") -> Deferred[User | None]:
        """The user whose credentials the request carries (failing with
        AuthenticationFailed if they are wrong); with none, `anonymous` if
        it has the `right` asked for, else None."""
        assert self.authenticator is not None
        hello = _credentials(request.getHeader(b"authorization"))
        if hello is None:
            anonymous = self.authenticator.users.anonymous
            return succeed(anonymous if getattr(anonymous, right) else None)
        address = getattr(request.getClientAddress(), "host", "?")
        return cast("Deferred[User | None]", self.authenticator.authenticate(address, hello))


_SIGNED_IN: WeakKeyDictionary[Request, str] = WeakKeyDictionary()
"""The user each request being answered signed in as."""


def who_asked(request: Request) -> str:
    """Who made `request`, for the log of what it did: its user, or (with no
    users file) its address."""
    user = _SIGNED_IN.get(request)
    if user is not None:
        return f"user {user}"
    address = getattr(request.getClientAddress(), "host", "?")
    return f"the monitor's client at {address}"


def _credentials(header: bytes | None) -> HelloRequest | None:
    """The credentials of an Authorization header (Basic or Bearer) as a
    Hello would carry them; a malformed one is credentials that fail."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    value = value.strip()
    try:
        if scheme.lower() == b"bearer":
            return HelloRequest(token=value.decode("ascii"))
        if scheme.lower() == b"basic":
            pair = base64.b64decode(value, validate=True).decode("utf-8")
            user, colon, password = pair.partition(":")
            if colon:
                return HelloRequest(user=user, password=password)
    except (binascii.Error, UnicodeDecodeError):
        pass
    return HelloRequest(user="", password="")  # refused, and counted as a failure


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return f"{text}\n".encode()


class Guarded(Resource):
    """Answers with the resource tree `inner` what `access` lets through;
    refuses the rest: a wrong Host with 421, missing or wrong credentials
    with 401 (and a challenge a browser shows as a prompt), a user without
    the monitor right with 403."""

    isLeaf = True

    def __init__(self, inner: Resource, access: MonitorAccess) -> None:
        super().__init__()
        self._inner = inner
        self._access = access

    def render(self, request: Request) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        refusal = self._access.host_refused(request)
        if refusal is not None:
            return _plain(request, 421, refusal)
        first = (request.postpath or [])[:1]
        if self._access.authenticator is None or first in OPEN_PATHS:
            return self._serve(request)
        # /admin/ acts on the broker: it needs the admin right, not the monitor's.
        right = "admin" if first == [b"admin"] else "monitor"
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda failure: gone.append(True))

        def decided(user: User | None) -> None:
            if gone:
                return
            if user is None:
                self._challenge(request, "this monitor needs a user's credentials")
            elif not getattr(user, right):
                refused = (
                    f"user {user.name} may not act on the broker (it needs admin = true)"
                    if right == "admin"
                    else f"user {user.name} may not read the monitor"
                )
                request.write(_plain(request, 403, refused))
                request.finish()
            else:
                _SIGNED_IN[request] = user.name
                self._serve(request)

        def refused(failure: Failure) -> Failure | None:
            failure.trap(AuthenticationFailed)
            if not gone:
                self._challenge(request, "authentication failed")
            return None

        def failed(failure: Failure) -> None:
            if not gone:
                request.processingFailed(failure)  # logged, and answered 500

        self._access.user(request, right).addCallbacks(decided, refused).addErrback(failed)
        return NOT_DONE_YET

    def _serve(self, request: Request) -> Any:
        request.render(getChildForRequest(self._inner, request))
        return NOT_DONE_YET

    @staticmethod
    def _challenge(request: Request, text: str) -> None:
        body = _plain(request, 401, text)
        request.responseHeaders.setRawHeaders(
            b"www-authenticate",
            [f'Basic {REALM}, charset="UTF-8"'.encode(), f"Bearer {REALM}".encode()],
        )
        request.write(body)
        request.finish()

"""Who a connection is, decided against the users file.

In this order: a client certificate (verified by TLS against --tls-ca
before the broker reads a byte) names its user; else the Hello's `user` and
`password`, or its `token`; else the connection is the user `anonymous`.

A password is checked with scrypt, which takes about 50 ms on purpose: the
check runs in a thread (`run_blocking`), never in the reactor. An unknown
user costs the same check as a known one, against a hash made up for the
purpose, so the answer's timing does not tell which names exist. Repeated
failures from one address are answered ever later, and the wait comes
before the check, so a guesser spends our CPU no faster either. Attempts
from one address are checked one at a time, each wait computed when its
turn comes (sending many at once gains nothing), and a success forgives
only the failures of the user who succeeded. A sign-in is decided against
the users file in force when its check completes, so a reload meanwhile
counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from broker.security.tls import certificate_identity
from broker.security.users import (
    ANONYMOUS,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    User,
    Users,
    verify_secret,
    verify_token,
)
from broker.wire.hello import HelloRequest

T = TypeVar("T")
RunBlocking = Callable[..., "Deferred[Any]"]


class AuthenticationFailed(Exception):
    """Credentials refused. The message is for the log; the peer is only
    told "authentication failed", whatever the reason."""


def run_here(function: Callable[..., T], *args: Any) -> Deferred[T]:
    """Run a blocking check at once, in the caller (for tests in memory)."""
    return maybeDeferred(function, *args)


class FailureThrottle:
    """Counts authentication failures per address, and per name within it,
    and says how long that address must wait before its next attempt is
    checked: nothing for the first `free` failures, then a doubling delay up
    to `longest` seconds. A success clears only the failures of the name
    that succeeded, so a guesser cannot reset its count by signing in as
    another user between guesses. An address is forgotten after
    `forget_after` quiet seconds, and at most `max_addresses` are
    remembered (the least recent go first), each with at most `max_names`
    names (the rest counted together)."""

    _OTHERS = "\x00others"

    def __init__(
        self,
        clock: IReactorTime,
        free: int = 3,
        first_delay: float = 0.5,
        longest: float = 30.0,
        forget_after: float = 600.0,
        max_addresses: int = 10_000,
        max_names: int = 32,
    ) -> None:
        self._clock = clock
        self._free = free
        self._first_delay = first_delay
        self._longest = longest
        self._forget_after = forget_after
        self._max_addresses = max_addresses
        self._max_names = max_names
        # address -> (failures per name, time of the last failure)
        self._failures: OrderedDict[str, tuple[dict[str, int], float]] = OrderedDict()

    def delay(self, address: str) -> float:
        """Seconds to wait before checking this address's next attempt."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        names, last = entry
        if self._clock.seconds() - last > self._forget_after:
            del self._failures[address]
            return 0.0
        count = sum(names.values())
        if count < self._free:
            return 0.0
        return min(self._longest, self._first_delay * 2 ** (count - self._free))

    def failed(self, address: str, name: str = "") -> None:
        """An attempt from `address`, naming `name` (a user, or "" for a
        token), was refused."""
        names = self._failures.pop(address, ({}, 0.0))[0]
        if name not in names and len(names) >= self._max_names:
            name = self._OTHERS
        names[name] = names.get(name, 0) + 1
        self._failures[address] = (names, self._clock.seconds())
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str, name: str = "") -> None:
        """`name` signed in from `address`: its own failures are forgiven."""
        entry = self._failures.get(address)
        if entry is not None:
            entry[0].pop(name, None)
            if not entry[0]:
                del self._failures[address]

    def __len__(self) -> int:
        return len(self._failures)


class _Attempt:
    """A sign-in waiting for its address's turn."""

    def __init__(self, request: HelloRequest, answer: Deferred[User]) -> None:
        self.request = request
        self.answer = answer


class Authenticator:
    """Decides which user of `users` a connection is (see the module)."""

    def __init__(
        self,
        users: Users,
        clock: IReactorTime,
        run_blocking: RunBlocking = run_here,
        identity: str = "cn",
        throttle: FailureThrottle | None = None,
        max_waiting: int = 16,
    ) -> None:
        self._clock = clock
        self.run_blocking = run_blocking
        """Runs a blocking check (scrypt) and gives a Deferred of its result."""
        self.identity = identity
        """Which name of a client certificate is its user; "none": certificates name no one."""
        self.throttle = throttle or FailureThrottle(clock)
        # Checked for unknown users: as costly as a real hash, matched by nothing.
        salt, digest = (base64.b64encode(os.urandom(size)).decode() for size in (16, 32))
        self._decoy = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt}${digest}"
        # A process-secret key, and per user the keyed digest of the password
        # last verified: a client that reconnects is not charged scrypt again.
        self._key = os.urandom(32)
        self._verified: dict[tuple[str, str], bytes] = {}
        self.max_waiting = max_waiting
        """Sign-ins from one address that may wait for their turn; more are refused."""
        # address -> attempts waiting behind the one being checked (the key
        # exists while one is being checked).
        self._waiting: dict[str, deque[_Attempt]] = {}
        self.users = users

    @property
    def users(self) -> Users:
        return self._users

    @users.setter
    def users(self, users: Users) -> None:
        self._users = users
        self._verified = {}

    def authenticate(
        self,
        address: str,
        request: HelloRequest | None,
        certificate: x509.Certificate | None = None,
    ) -> Deferred[User]:
        """The user this connection is, or AuthenticationFailed."""
        if certificate is not None and self.identity != "none":
            return self._certified(certificate, request)
        if request is None or not request.has_credentials:
            return succeed(self.users.anonymous)
        queue = self._waiting.get(address)
        if queue is None:
            self._waiting[address] = deque()
            return self._attempt(address, request)
        if len(queue) >= self.max_waiting:
            return fail(
                AuthenticationFailed(f"{len(queue)} sign-ins from its address wait already")
            )
        answer: Deferred[User] = Deferred()
        queue.append(_Attempt(request, answer))
        return answer

    def _attempt(self, address: str, request: HelloRequest) -> Deferred[User]:
        """Check one attempt after the wait its address has earned by now,
        then let the address's next attempt take its turn. Attempts from one
        address are checked one at a time, each wait computed when its turn
        comes, so sending many at once gains a guesser nothing."""
        wait = self.throttle.delay(address)
        checking = (
            deferLater(self._clock, wait, self._check, request) if wait else self._check(request)
        )
        name = request.user or ""

        def counted(user: User) -> User:
            self.throttle.succeeded(address, name)
            return user

        def refused(failure: Any) -> Any:
            if failure.check(AuthenticationFailed):
                self.throttle.failed(address, name)
            return failure

        def next_turn(result: Any) -> Any:
            queue = self._waiting.get(address)
            if queue:
                attempt = queue.popleft()
                self._attempt(address, attempt.request).chainDeferred(attempt.answer)
            else:
                self._waiting.pop(address, None)
            return result

        return checking.addCallbacks(counted, refused).addBoth(next_turn)

    def _certified(
        self, certificate: x509.Certificate, request: HelloRequest | None
    ) -> Deferred[User]:
        name = certificate_identity(certificate, self.identity)
        if name is None:
            return fail(AuthenticationFailed(f"its certificate has no {self.identity} name"))
        user = self.users.by_name.get(name)
        if user is None or name == ANONYMOUS:
            return fail(AuthenticationFailed(f"its certificate names unknown user {name!r}"))
        if request is not None and request.user not in (None, name):
            return fail(
                AuthenticationFailed(f"its Hello names {request.user!r}, its certificate {name!r}")
            )
        return succeed(user)

    def _check(self, request: HelloRequest) -> Deferred[User]:
        if request.token is not None:
            return self._check_token(request.token)
        assert request.user is not None and request.password is not None
        return self._check_password(request.user, request.password)

    def _check_token(self, token: str) -> Deferred[User]:
        found = None
        for user in self.users.by_name.values():
            # Every stored token is compared, each in constant time.
            if user.token_hash is not None and verify_token(token, user.token_hash):
                found = user
        if found is None:
            return fail(AuthenticationFailed("unknown token"))
        return succeed(found)

    def _check_password(self, name: str, password: str) -> Deferred[User]:
        user = self.users.by_name.get(name)
        stored = user.password_hash if user is not None else None
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        if stored is not None and user is not None:
            remembered = self._verified.get((name, stored))
            if remembered is not None and hmac.compare_digest(remembered, digest):
                return succeed(user)
        if stored is None:
            # Unknown, or a user without a password: the same work, then no.
            stored = self._decoy

        def checked(right: bool) -> User:
            if user is None or user.password_hash is None:
                raise AuthenticationFailed(f"unknown user {name!r}")
            if not right:
                raise AuthenticationFailed(f"wrong password for {name!r}")
            # Decided against the users file in force now, which a reload may
            # have changed while the check ran: the user's rights as they are
            # now, and no sign-in for a user removed or whose password changed.
            current = self.users.by_name.get(name)
            if current is None:
                raise AuthenticationFailed(f"user {name!r} was removed while signing in")
            if current.password_hash != user.password_hash:
                raise AuthenticationFailed(f"the password of {name!r} changed while signing in")
            self._verified[(name, user.password_hash)] = digest
            return current

        return self.run_blocking(verify_secret, password, stored).addCallback(checked)

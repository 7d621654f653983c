"""The users file (TOML): who may connect, with what secret, and what each
may publish and subscribe to. Secrets are stored hashed, never as they are:
passwords with scrypt (memory-hard, since people choose them), tokens with
SHA-256 (the broker makes them: 256 random bits need no slow hash).

    [users.alice]
    password = "scrypt$16384$8$1$<salt>$<hash>"
    publish = ["orders.>"]
    subscribe = ["orders.>", "audit"]
    deny_subscribe = ["orders.secret"]
    max_connections = 10
    monitor = true               # may read the --monitor site (HTTP Basic)
    admin = true                 # may act on the broker: the admin API, `broker topics rm`
    groups = ["billing-workers"] # group names shared with the users listing them too
    durables = ["billing"]       # durable names shared likewise
    max_durables = 1000          # durable positions its own names may keep

    [users.ingest]
    token = "sha256$<hash>"
    publish = ["metrics.>"]

    [users.anonymous]            # clients that give no credentials (Go clients)
    subscribe = ["public.>"]

`broker users add NAME` appends a user, asking for the password
(or, with --token, making a token and printing it once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.names import group_name_problem
from broker.security.permissions import PatternError, Rules
from broker.toml_file import read_toml

ANONYMOUS = "anonymous"
USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# scrypt's cost: about 50 ms and 16 MiB per check here; stored in each hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Durable positions (one per durable name and topic) a user may keep, unless
# its table says otherwise: they outlive its connections.
DEFAULT_MAX_DURABLES = 1000
_FIELDS = {
    "password",
    "token",
    "publish",
    "subscribe",
    "deny_publish",
    "deny_subscribe",
    "max_connections",
    "monitor",
    "admin",
    "groups",
    "durables",
    "max_durables",
}


class UsersFileError(ValueError):
    """A users file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class User:
    """One user: its hashed secrets, its permissions, its connection limit."""

    name: str
    password_hash: str | None = None
    token_hash: str | None = None
    publish: Rules = field(default_factory=Rules)
    subscribe: Rules = field(default_factory=Rules)
    max_connections: int | None = None
    monitor: bool = False
    """Whether it may read the --monitor site (all but /healthz)."""
    admin: bool = False
    """Whether it may act on the broker through the admin API (/admin/ on
    the monitor port): purge and delete topics, reset consumers, close
    connections."""
    groups: frozenset[str] = frozenset()
    """Group names ($share/NAME/...) it shares with every user listing them;
    its other group names are its own."""
    durables: frozenset[str] = frozenset()
    """Durable names ($durable/NAME/...) shared likewise."""
    max_durables: int = DEFAULT_MAX_DURABLES
    """Durable positions its own and shared durable names may keep, at most."""

    def owned_group(self, name: str, durable: bool) -> str:
        """The name a group (or durable consumer) of this user is kept by:
        `user:name`, which no other user reaches, or `name` itself if the
        users file lists it as shared (no group name holds a ':')."""
        shared = self.durables if durable else self.groups
        return name if name in shared else f"{self.name}:{name}"

    def durables_kept(self, kept: Mapping[str, int]) -> int:
        """Durable positions that count against max_durables (its own names'
        and its shared names'), from the counts per owner that
        broker.log.positions.PositionStore keeps."""
        return kept.get(f"{self.name}:", 0) + sum(kept.get(name, 0) for name in self.durables)


@dataclass(frozen=True)
class Users:
    """Everyone in a users file; `anonymous` may connect with no credentials."""

    by_name: dict[str, User]

    @property
    def anonymous(self) -> User:
        return self.by_name.get(ANONYMOUS, User(ANONYMOUS))


def hash_secret(secret: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A password or token as stored: scrypt$n$r$p$salt$hash (base64)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    encode = base64.b64encode
    return f"scrypt${n}${r}${p}${encode(salt).decode()}${encode(digest).decode()}"


def new_token() -> str:
    """A token for a user: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """A token as stored: sha256$hex."""
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, stored: str) -> bool:
    """Whether `token` is the one `stored` was made from (constant time)."""
    return hmac.compare_digest(hash_token(token).encode(), stored.encode())


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` is the one `stored` was made from (compared in
    constant time); False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            secret.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsersFileError(f'{where}: a list of topic patterns, like ["orders.>"]')
    return value


def _group_names(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsersFileError(f'{where}: a list of group names, like ["billing"]')
    for item in value:
        problem = group_name_problem(item)
        if problem:
            raise UsersFileError(f"{where}: {item!r}: {problem}")
    return frozenset(value)


def _user(name: str, entry: object, path: Path) -> User:
    where = f"{path}: [users.{name}]"
    if not USER_NAME.match(name):
        raise UsersFileError(f"{where}: a user name is 1-64 of A-Z a-z 0-9 _ . @ -")
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: a table of fields")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise UsersFileError(f"{where}: unknown field {unknown[0]!r}")
    for secret, scheme in (("password", "scrypt$"), ("token", "sha256$")):
        value = entry.get(secret)
        if value is not None and (not isinstance(value, str) or not value.startswith(scheme)):
            raise UsersFileError(
                f"{where}: {secret} must be a hash from 'broker users', never the secret"
            )
    monitor = entry.get("monitor", False)
    if type(monitor) is not bool:
        raise UsersFileError(f"{where}: monitor must be true or false")
    admin = entry.get("admin", False)
    if type(admin) is not bool:
        raise UsersFileError(f"{where}: admin must be true or false")
    limit = entry.get("max_connections")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise UsersFileError(f"{where}: max_connections must be a positive integer")
    max_durables = entry.get("max_durables", DEFAULT_MAX_DURABLES)
    if type(max_durables) is not int or max_durables < 0:
        raise UsersFileError(f"{where}: max_durables must be an integer, 0 or more")
    groups = _group_names(entry.get("groups", []), f"{where} groups")
    durables = _group_names(entry.get("durables", []), f"{where} durables")
    try:
        publish = Rules.of(
            _strings(entry.get("publish", []), f"{where} publish"),
            _strings(entry.get("deny_publish", []), f"{where} deny_publish"),
        )
        subscribe = Rules.of(
            _strings(entry.get("subscribe", []), f"{where} subscribe"),
            _strings(entry.get("deny_subscribe", []), f"{where} deny_subscribe"),
        )
    except PatternError as error:
        raise UsersFileError(f"{where}: {error}") from None
    password, token = entry.get("password"), entry.get("token")
    return User(
        name,
        password,
        token,
        publish,
        subscribe,
        limit,
        monitor=monitor,
        admin=admin,
        groups=groups,
        durables=durables,
        max_durables=max_durables,
    )


def load_users(path: Path) -> Users:
    """The users of a users file, or UsersFileError saying what is wrong."""
    document = read_toml(path, "users", UsersFileError)
    unknown = sorted(set(document) - {"users"})
    if unknown:
        raise UsersFileError(f"{path}: unknown table {unknown[0]!r} (users go in [users.NAME])")
    users = document.get("users", {})
    if not isinstance(users, dict):
        raise UsersFileError(f"{path}: users go in [users.NAME] tables")
    return Users({name: _user(name, entry, Path(path)) for name, entry in users.items()})


def user_entry(
    name: str, secret_field: str, secret_hash: str, publish: list[str], subscribe: list[str]
) -> str:
    """A [users.NAME] table to append to a users file."""
    lines = [
        f"[users.{json.dumps(name)}]",
        f"{secret_field} = {json.dumps(secret_hash)}",
        f"publish = {json.dumps(publish)}",
        f"subscribe = {json.dumps(subscribe)}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # `broker users` runs the command, which lives in its own module
    # above this one (run, not imported, so the two import in one direction).
    import runpy

    runpy.run_module("broker.security.users_cli", run_name="__main__", alter_sys=True)

"""The Redis store's pure parts: its settings, where it lives (`--store`
URLs), the names of a topic's keys, and how a batch is packed into one
stream entry. No connection is made here, and redis-py is not imported."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from broker.log.interface import Retention
from broker.log.records import WITH_HEADERS
from broker.wire.headers import Headered, with_headers

SCHEMES = {
    "redis": (False, False),
    "rediss": (False, True),
    "redis+cluster": (True, False),
    "rediss+cluster": (True, True),
}
PASSWORD_VARIABLE = "BROKER_REDIS_PASSWORD"
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisTarget:
    """One Redis (`redis://`), or a Redis Cluster found from seed nodes
    (`redis+cluster://h1:p1,h2:p2`); `rediss` for TLS."""

    seeds: tuple[tuple[str, int], ...]
    cluster: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    ca_file: str | None = None
    """TLS: the CA that signed Redis's certificate (`?ca=FILE`); else the system's."""

    def describe(self) -> str:
        """The URL without its secret, for logs."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        hosts = ",".join(f"{host}:{port}" for host, port in self.seeds)
        return f"{scheme}://{hosts}" + (f"/{self.db}" if self.db else "")


def parse_redis_url(url: str, environ: dict[str, str] | None = None) -> RedisTarget:
    """A RedisTarget from `--store`; ValueError says what is wrong.

    The password comes from the URL (`redis://:secret@host`) or, better,
    from BROKER_REDIS_PASSWORD, which keeps it off the command line.
    """
    variables = os.environ if environ is None else environ
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES or not rest:
        raise ValueError(
            f"{url!r} is not a Redis URL: use redis://HOST:PORT, rediss://HOST:PORT, "
            "or redis+cluster://HOST:PORT,HOST:PORT for a Redis Cluster"
        )
    cluster, tls = SCHEMES[scheme]
    parts = urlsplit("redis://" + rest)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    seeds = tuple(_host_port(text) for text in hosts.split(",") if text)
    if not seeds:
        raise ValueError(f"{url!r} names no Redis host")
    if len(seeds) > 1 and not cluster:
        raise ValueError(f"{url!r} names several hosts: a Redis Cluster is redis+cluster://")
    db = 0
    path = parts.path.strip("/")
    if path:
        if cluster:
            raise ValueError("a Redis Cluster has one database: drop the /DB from the URL")
        if not path.isdigit():
            raise ValueError(f"database {path!r} is not a number")
        db = int(path)
    query = parse_qs(parts.query)
    unknown = set(query) - {"ca"}
    if unknown:
        raise ValueError(f"unknown Redis URL option(s): {', '.join(sorted(unknown))} (known: ca)")
    ca_file = query["ca"][-1] if "ca" in query else None
    if ca_file is not None and not tls:
        raise ValueError("?ca= is for TLS: use rediss://")
    return RedisTarget(
        seeds=seeds,
        cluster=cluster,
        tls=tls,
        username=unquote(username) or None,
        password=unquote(password) or variables.get(PASSWORD_VARIABLE) or None,
        db=db,
        ca_file=ca_file,
    )


def _host_port(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT or [IPV6]:PORT."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" not in text:
        host, port = text, str(DEFAULT_PORT)
    else:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port)


@dataclass(frozen=True)
class TopicKeys:
    """A topic's keys and announcement channel: all carry `{topic}` as their
    hash tag, so the topic lives in one Redis Cluster slot and one function
    call may touch them all."""

    log: str
    meta: str
    times: str
    channel: str
    ids: str
    id_times: str
    key_revisions: str

    @property
    def of_functions(self) -> tuple[str, str, str, str, str, str]:
        """The keys the functions that append or delete take, in their order."""
        return (self.log, self.meta, self.times, self.ids, self.id_times, self.key_revisions)


def topic_keys(prefix: str, topic: str) -> TopicKeys:
    # Every key is prefix:{t:topic}:suffix. A '}' inside the name ends the
    # tag early, but at the same place for every key of the topic (never
    # empty, thanks to "t:"), so they still share a slot; the suffix keeps
    # two topics' names apart. The prefix may hold no braces (checked).
    base = f"{prefix}:{{t:{topic}}}"
    return TopicKeys(
        f"{base}:log",
        f"{base}:meta",
        f"{base}:times",
        f"{base}:grew",
        f"{base}:ids",
        f"{base}:idtimes",
        f"{base}:keys",
    )


def check_prefix(prefix: str) -> str:
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError("a key prefix is not empty and holds no '{' or '}'")
    return prefix


@dataclass(frozen=True)
class RedisStoreSettings:
    target: RedisTarget
    replicas: int = 0
    """Confirm (and let anyone read) an append only once this many replicas
    hold it (Redis's WAIT)."""
    timeout: float = 5.0
    """Seconds before a Redis call is given up (an append's confirm fails)."""
    prefix: str = "broker"
    retention: Retention = field(default_factory=Retention)
    max_pending_bytes: int = 64 * 1024 * 1024
    """Payload bytes waiting for Redis, over all topics, before publishes are
    refused: what a node holds while Redis is slow or away."""
    node_name: str = "broker"
    """This node's name among a consumer group's consumers in Redis: the same
    after a restart, so that the node takes back what it had claimed."""
    dedup_window: float = 0.0
    """Seconds Redis remembers a message id for every node (exactly-once
    publishing); 0: ids are not looked at."""
    dedup_max_ids: int = 1_000_000
    """Message ids a topic remembers at most in Redis (the oldest go first)."""
    claim_idle: float = 60.0
    """Seconds a batch claimed by a group's consumer (a node) may stay
    unacknowledged before another node takes it over."""


def pack_batch(payloads: Sequence[bytes]) -> bytes:
    """A batch as one stream field: little-endian u32 lengths, then the
    payloads. A message with headers has its length's top bit set and its
    data `u32 h | header block | payload` (a node older than headers reads
    the batch as damaged, never as other data)."""
    if not any(type(payload) is Headered for payload in payloads):
        return struct.pack(f"<{len(payloads)}I", *map(len, payloads)) + b"".join(payloads)
    stored = [_stored(payload) for payload in payloads]
    lengths = [
        len(data) | (WITH_HEADERS if type(payload) is Headered else 0)
        for payload, data in zip(payloads, stored, strict=True)
    ]
    return struct.pack(f"<{len(payloads)}I", *lengths) + b"".join(stored)


def _stored(payload: bytes) -> bytes:
    if type(payload) is Headered:
        block = payload.headers
        return struct.pack("<I", len(block)) + block + payload
    return payload


def unpack_batch(count: int, batch: bytes) -> list[bytes]:
    lengths = struct.unpack_from(f"<{count}I", batch)
    payloads = []
    position = 4 * count
    for length in lengths:
        if length & WITH_HEADERS:
            length &= ~WITH_HEADERS
            (size,) = struct.unpack_from("<I", batch, position)
            block = batch[position + 4 : position + 4 + size]
            payloads.append(with_headers(batch[position + 4 + size : position + length], block))
        else:
            payloads.append(batch[position : position + length])
        position += length
    return payloads

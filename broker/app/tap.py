"""`twistd broker`: command-line options and the service they make.

Every default is read from the settings dataclasses, so the help and the
behaviour cannot drift apart.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from broker import __version__
from broker.app.config import (
    ConfigError,
    flag_value,
    parameter_value,
    ports_value,
    read_environment,
    read_file,
)
from broker.app.listeners import ListenerError, check_port_number, is_tls
from broker.app.log_output import FORMATS, LEVELS, log_file, log_observer
from broker.app.service import BrokerService
from broker.core.delivery import DeliverySettings
from broker.core.keys import KV_PATTERN
from broker.log import DEFAULT_MEMORY_RETENTION, FileStoreSettings, FsyncPolicy, Retention
from broker.log.redis_settings import (
    RedisStoreSettings,
    RedisTarget,
    check_prefix,
    parse_redis_url,
)
from broker.security.tls import IDENTITY_KINDS, ServerTLS
from broker.server import BrokerSettings
from broker.subjects import check_pattern
from twisted import __version__ as twisted_version

_BROKER = BrokerSettings()
_DELIVERY = DeliverySettings()
_FILES = FileStoreSettings()
_REDIS = RedisStoreSettings(RedisTarget(seeds=(("localhost", 6379),)))


def _redis_target(text: str) -> RedisTarget:
    return parse_redis_url(text)


def _at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is below 0")
    return value


class _Checked:
    """A coerce function for usage.Options whose errors name their option."""

    def __init__(self, parse: Callable[[str], Any], doc: str) -> None:
        self._parse = parse
        self.coerceDoc = doc
        self.option = "?"

    def __call__(self, text: str) -> Any:
        try:
            return self._parse(text)
        except ValueError as error:
            raise usage.UsageError(f"--{self.option}: {error}") from None


def _positive(kind: type[int] | type[float]) -> _Checked:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
        if value <= 0:
            raise ValueError(f"must be positive, not {text}")
        return value

    return _Checked(parse, f"A positive {'whole number' if kind is int else 'number'}.")


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not value >= 0:  # (NaN too)
        raise ValueError(f"must be 0 or more seconds, not {text}")
    return value


def _fsync_policy(text: str) -> FsyncPolicy:
    try:
        return FsyncPolicy(text)
    except ValueError:
        raise ValueError(f"must be always, interval or never, not {text!r}") from None


def _one_of(choices: tuple[str, ...]) -> _Checked:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {text!r}")
        return text

    return _Checked(parse, "One of: " + ", ".join(choices) + ".")


def _named(rows: list[list[Any]]) -> list[list[Any]]:
    """Tell each checked coerce function the name of its option."""
    for row in rows:
        if len(row) > 4 and isinstance(row[4], _Checked):
            row[4].option = row[0]
    return rows


class Options(usage.Options):
    """Options of `twistd broker`."""

    synopsis = "[options]"
    longdesc = (
        "Runs a pub/sub message broker that speaks the Go broker's wire protocol, so "
        "its Go clients work unchanged. Publishers' messages fan out to every "
        "subscriber of their topic, and each topic keeps a replay log that "
        "subscribers can start from."
    )

    optFlags = [
        [
            "disconnect-slow-consumers",
            None,
            "Close a slow consumer's connection (its deliveries go back to their topics).",
        ],
        [
            "dead-letter-expired",
            None,
            "Send a message that expired (its Expires header) before a subscriber got it "
            "to the dead-letter topic, instead of only counting it.",
        ],
    ]

    optParameters = _named(
        [
            [
                "max-message-size",
                None,
                _BROKER.max_message_size,
                "Largest message (and topic list) accepted, in bytes.",
                _positive(int),
            ],
            [
                "max-header-bytes",
                None,
                _BROKER.max_header_bytes,
                "Largest header block a message may carry beside its payload, in bytes "
                "(clients that agree headers in Hello).",
                _positive(int),
            ],
            [
                "dedup-window",
                None,
                _BROKER.dedup_window,
                "Seconds a topic remembers a message id (the Msg-Id header): the same id "
                "published again within it is stored once, and confirmed with the first "
                "copy's offset. 0: ids are not looked at.",
                _Checked(_seconds_or_zero, "Seconds, 0 or more."),
            ],
            [
                "tombstone-retention",
                None,
                _BROKER.tombstone_retention,
                "Seconds a deletion (a message with a key and no payload) stays in a "
                "compacted topic before compaction drops it and forgets its key.",
                _positive(float),
            ],
            [
                "dedup-max-ids",
                None,
                _BROKER.dedup_max_ids,
                "Message ids a topic remembers at most (the oldest go first), so that "
                "memory stays bounded.",
                _positive(int),
            ],
            [
                "ack-delay",
                None,
                _DELIVERY.ack_delay,
                "Seconds before a nacked message is delivered again.",
                _positive(float),
            ],
            [
                "ack-timeout",
                None,
                _DELIVERY.ack_timeout,
                "Seconds to wait for an ack before treating it as a nack.",
                _positive(float),
            ],
            [
                "max-deliveries",
                None,
                _DELIVERY.max_deliveries,
                "Deliveries of one message to one subscriber, then it is dead-lettered.",
                _positive(int),
            ],
            [
                "handshake-timeout",
                None,
                _BROKER.handshake_timeout,
                "Seconds a new connection has to send its first action before it is closed.",
                _positive(float),
            ],
            [
                "max-topics",
                None,
                _BROKER.max_topics,
                "Topics the broker holds at most.",
                _positive(int),
            ],
            [
                "max-anonymous-connections",
                None,
                _BROKER.max_anonymous_connections,
                "With --users: connections that sign in as no one (anonymous) at most.",
                _positive(int),
            ],
            [
                "max-prefetch",
                None,
                _BROKER.max_prefetch,
                "Deliveries in flight per connection that a subscriber "
                "using the extensions may ask for.",
                _positive(int),
            ],
            [
                "max-inflight-bytes",
                None,
                _BROKER.max_inflight_bytes,
                "Payload bytes in flight per connection (a larger message still goes alone).",
                _positive(int),
            ],
            [
                "slow-consumer-timeout",
                None,
                _BROKER.slow_consumer_timeout,
                "Seconds a subscriber may leave its deliveries unread before it is logged "
                "as a slow consumer (and disconnected, with --disconnect-slow-consumers).",
                _positive(float),
            ],
            [
                "max-pending-input",
                None,
                _BROKER.max_pending_input,
                "Bytes held in incomplete frames across all connections; past it the broker "
                "stops reading from the connections that hold them.",
                _positive(int),
            ],
            [
                "frame-timeout",
                None,
                _BROKER.frame_timeout,
                "Seconds a frame may stay incomplete before its connection is closed.",
                _positive(float),
            ],
            [
                "dead-letter-topic",
                None,
                _BROKER.dead_letter_topic,
                "Where a message goes once a subscriber has had it --max-deliveries times "
                "({topic} is replaced by its topic); '' drops it instead.",
            ],
            [
                "tls-cert",
                None,
                None,
                "PEM file of the broker's certificate (its chain may follow) for tls: ports.",
            ],
            [
                "tls-key",
                None,
                None,
                "PEM file of the certificate's private key (default: in --tls-cert's file).",
            ],
            [
                "tls-ca",
                None,
                None,
                "PEM bundle of the CAs that sign client certificates: with it, clients of "
                "tls: ports must present one (mutual TLS).",
            ],
            [
                "config",
                "c",
                None,
                "TOML file of options (their names as keys); BROKER_* environment "
                "variables override it, and the command line overrides both.",
            ],
            [
                "log-format",
                None,
                "text",
                "text, or json: one JSON object per line, with the peer, user and topic "
                "as keys (twistd's -l still says where).",
                _one_of(FORMATS),
            ],
            [
                "log-level",
                None,
                "info",
                "Least level logged: debug (every connection and subscription), info, "
                "warn, error or critical.",
                _one_of(LEVELS),
            ],
            [
                "slow-consumer-lag",
                None,
                _BROKER.slow_consumer_lag,
                "Messages a subscription may fall behind its topic before it is logged "
                "as a slow consumer (checked every few seconds).",
                _positive(int),
            ],
            [
                "monitor",
                None,
                None,
                "Serve /metrics (Prometheus), /varz, /connz, /topicz, /healthz and a live "
                "dashboard at / here: a port number (on loopback only) or an endpoint "
                "string such as tcp:8222:interface=10.0.0.5. With --users, only users with "
                "monitor = true may read it (HTTP Basic or a bearer token); /healthz is "
                "open. Off by default.",
            ],
            [
                "durable-idle",
                None,
                _BROKER.durable_idle,
                "Seconds a durable consumer's position is kept with no activity.",
                _positive(float),
            ],
            [
                "drain-timeout",
                None,
                _BROKER.drain_timeout,
                "Seconds a stopping broker (SIGTERM) lets deliveries in flight be acked "
                "before it closes the connections; a second SIGTERM stops at once.",
                _positive(float),
            ],
            [
                "tls-identity",
                None,
                _BROKER.tls_identity,
                "With --users and --tls-ca: which name of a client certificate is its user: "
                "cn (subject common name), dns or email (first such subject alternative "
                "name), or none (the client then signs in with its Hello).",
                _one_of(IDENTITY_KINDS),
            ],
            [
                "users",
                None,
                None,
                "TOML users file: who may connect and what each may publish and subscribe "
                "to (see 'broker users'). Re-read on SIGHUP. Without it, anyone "
                "who reaches a port may publish and read everything.",
            ],
            [
                "data-dir",
                "d",
                None,
                "Keep topics in files in this directory, and recover them at "
                "start. Without it, topics live in memory and are lost when the broker stops.",
            ],
            [
                "store",
                None,
                None,
                "Keep topics in Redis, shared by every broker node given the same: "
                "redis://HOST:PORT, rediss://HOST:PORT (TLS; ?ca=FILE), or "
                "redis+cluster://HOST:PORT,HOST:PORT (nodes of a Redis Cluster to start from). "
                "Needs Twisted's asyncio reactor: twistd -r asyncio broker --store ...",
                _Checked(_redis_target, "A Redis URL."),
            ],
            [
                "redis-replicas",
                None,
                _REDIS.replicas,
                "With --store: confirm a publish (and deliver it) only once this many "
                "Redis replicas hold it (Redis's WAIT).",
                _Checked(_at_least_zero, "A whole number, 0 or more."),
            ],
            [
                "redis-timeout",
                None,
                _REDIS.timeout,
                "With --store: seconds before a Redis call is given up; a confirm "
                "then fails with an Error.",
                _positive(float),
            ],
            [
                "redis-prefix",
                None,
                _REDIS.prefix,
                "With --store: the prefix of every key the broker writes in Redis.",
                _Checked(check_prefix, "Text without braces."),
            ],
            [
                "node-name",
                None,
                None,
                "With --store: this node's name among the consumers of consumer groups "
                "in Redis (default: HOST:PORT of its first --port). Keep it when the node "
                "restarts, so that it takes back what it had claimed.",
            ],
            [
                "redis-claim-idle",
                None,
                _REDIS.claim_idle,
                "With --store: seconds a consumer group's batch may stay claimed and "
                "unacknowledged by a node before another node takes it over.",
                _positive(float),
            ],
            [
                "redis-password",
                None,
                None,
                "With --store: Redis's password (prefer the BROKER_REDIS_PASSWORD "
                "variable, which keeps it off the command line).",
            ],
            [
                "segment-bytes",
                None,
                _FILES.segment_bytes,
                "With --data-dir: roll a topic's segment file at this size.",
                _positive(int),
            ],
            [
                "fsync",
                None,
                _FILES.fsync.value,
                "With --data-dir: always (a message is on disk before it "
                "is delivered), interval (every --fsync-interval) or never (left to the OS).",
                _Checked(_fsync_policy, "One of: always, interval, never."),
            ],
            [
                "fsync-interval",
                None,
                _FILES.fsync_interval,
                "Seconds between fsyncs under --fsync interval.",
                _positive(float),
            ],
            [
                "retention-messages",
                None,
                None,
                "Messages kept per topic (default: no limit).",
                _positive(int),
            ],
            [
                "retention-bytes",
                None,
                None,
                "Bytes kept per topic (default: "
                f"{DEFAULT_MEMORY_RETENTION.max_bytes} of payloads in memory, "
                "no limit on disk).",
                _positive(int),
            ],
            [
                "retention-age",
                None,
                None,
                "Seconds a message is kept (default: no limit).",
                _positive(float),
            ],
        ]
    )

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["mqtt-ports"] = []
        self["ws-ports"] = []
        self["ws-origins"] = []
        self["monitor-hosts"] = []
        self["compact"] = []
        self._configured_ports: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Apply the config file, then the environment, then the command line."""
        arguments = sys.argv[1:] if options is None else options
        try:
            config = _config_argument(arguments)
            if config is not None:
                self._apply(read_file(Path(config)), config)
            self._apply(read_environment(self.environment), "environment")
            super().parseOptions(options)
        except (ConfigError, usage.UsageError) as error:
            self._refuse(str(error))

    def _refuse(self, message: str) -> NoReturn:
        """UsageError; under twistd, which would print it after 150 lines of
        usage (on stdout), the error alone in one line on stderr instead."""
        if getattr(self, "parent", None) is None:
            raise usage.UsageError(message)
        print(f"twistd broker: {message} (see twistd broker --help)", file=sys.stderr)
        sys.exit(1)

    environment: Mapping[str, str] = os.environ
    """Where BROKER_* variables are read (replaced in tests)."""

    def _apply(self, values: dict[str, Any], source: str) -> None:
        flags = {row[0] for row in self.optFlags}
        for name, value in values.items():
            if source == "environment":
                where = "BROKER_" + name.upper().replace("-", "_")
            else:
                where = f"{source}: {name}"
            if name == "port":
                self._configured_ports = ports_value(value, where)
            elif name == "mqtt-port":
                self["mqtt-ports"] = ports_value(value, where)
            elif name == "ws-port":
                self["ws-ports"] = ports_value(value, where)
            elif name == "ws-origin":
                self["ws-origins"] = ports_value(value, where)
            elif name == "compact":
                for pattern in value if isinstance(value, list) else [value]:
                    try:
                        self.opt_compact(parameter_value(pattern, where))
                    except usage.UsageError as error:
                        raise ConfigError(f"{where}: {error}") from None
            elif name in flags:
                self.opts[name] = int(flag_value(value, where))
            elif name in self._dispatch and name not in ("config", "help", "version"):
                try:
                    self._dispatch[name].dispatch(name, parameter_value(value, where))
                except usage.UsageError as error:
                    message = str(error).removeprefix("Parameter type enforcement failed: ")
                    raise ConfigError(f"{where}: {message.split(': ', 1)[-1]}") from None
            elif source == "environment":
                # Other programs' BROKER_* variables may share the environment.
                print(f"twistd broker: ignoring {where}: no such option", file=sys.stderr)
            else:
                raise ConfigError(f"{where}: no such option")

    def opt_port(self, port: str) -> None:
        self["ports"].append(port)

    opt_port.__doc__ = (  # one line: usage.Options wraps it itself
        "Where to listen; may be given more than once. A port number (TCP on every "
        "interface), tls:PORT[:interface=ADDRESS] (TLS with --tls-cert), or a Twisted "
        "server endpoint string such as tcp:3000:interface=127.0.0.1 or "
        "unix:/run/broker.sock [default: 3000]."
    )

    opt_p = opt_port

    def opt_mqtt_port(self, port: str) -> None:
        self["mqtt-ports"].append(port)

    opt_mqtt_port.__doc__ = (  # one line: usage.Options wraps it itself
        "Where to listen to MQTT 3.1.1 and 5.0 clients, on the same topics (as --port: "
        "1883, tls:8883, an endpoint string); may be given more than once [default: none]."
    )

    def opt_ws_port(self, port: str) -> None:
        self["ws-ports"].append(port)

    opt_ws_port.__doc__ = (  # one line: usage.Options wraps it itself
        "Where to listen to WebSocket clients (browsers): this broker's protocol, and "
        "MQTT with the subprotocol mqtt; as --port (8080, tls:8443, an endpoint "
        "string); may be given more than once [default: none]."
    )

    def opt_ws_origin(self, origins: str) -> None:
        self["ws-origins"].extend(origins.replace(",", " ").split())

    opt_ws_origin.__doc__ = (  # one line: usage.Options wraps it itself
        "A page origin WebSocket clients may come from (https://app.example.com; "
        "* and ? as wildcards), given once or more; without it any origin may."
    )

    def opt_monitor_host(self, names: str) -> None:
        self["monitor-hosts"].extend(names.replace(",", " ").split())

    opt_monitor_host.__doc__ = (  # one line: usage.Options wraps it itself
        "A name the monitor answers to besides localhost, 127.0.0.1, [::1], its "
        "interface and the address a request arrives at (the Host header is checked, "
        "against DNS rebinding); may be given more than once, or as a list."
    )

    def opt_compact(self, pattern: str) -> None:
        try:
            self["compact"].append(check_pattern(pattern))
        except ValueError as error:
            raise usage.UsageError(f"--compact {pattern!r}: {error}") from None

    opt_compact.__doc__ = (  # one line: usage.Options wraps it itself
        "Compact the topics this name or pattern matches (kv.> always is): the latest "
        "message of each key is kept, older ones dropped; may be given more than once."
    )

    def opt_version(self) -> None:
        """Display the broker's version and exit."""
        print(f"twisted-broker {__version__} (Twisted {twisted_version})")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = self._configured_ports or ["3000"]
        self._check_ports()
        tls_ports = [port for port in self["ports"] if is_tls(port)]
        if tls_ports and self["tls-cert"] is None:
            raise usage.UsageError(f"--port {tls_ports[0]} needs --tls-cert")
        for option in ("mqtt-port", "ws-port"):
            tls_ports = [port for port in self[option + "s"] if is_tls(port)]
            if tls_ports and self["tls-cert"] is None:
                raise usage.UsageError(f"--{option} {tls_ports[0]} needs --tls-cert")
        if self["tls-cert"] is None and (self["tls-key"] or self["tls-ca"]):
            raise usage.UsageError("--tls-key and --tls-ca go with --tls-cert")
        # usage.Options coerces what is given, never the defaults.
        self["fsync"] = FsyncPolicy(self["fsync"])
        if self["data-dir"] is None and self["fsync"] is not _FILES.fsync:
            raise usage.UsageError("--fsync needs --data-dir")
        if self["store"] is not None and self["data-dir"] is not None:
            raise usage.UsageError("--store and --data-dir are two places for topics: give one")
        redis_only = ("redis-replicas", "redis-timeout", "redis-prefix", "redis-claim-idle")
        changed = [
            name for name in redis_only if self[name] != getattr(_REDIS, name[6:].replace("-", "_"))
        ]
        changed += [name for name in ("redis-password", "node-name") if self[name]]
        if self["store"] is None and changed:
            raise usage.UsageError(f"--{changed[0]} needs --store")

    def _check_ports(self) -> None:
        """Each port a number the socket takes, and each given once: two
        listeners of one name are refused by twistd with a traceback."""
        try:
            for port in self["ports"]:
                check_port_number(port, "--port")
            for port in self["mqtt-ports"]:
                check_port_number(port, "--mqtt-port")
            for port in self["ws-ports"]:
                check_port_number(port, "--ws-port")
            if self["monitor"] is not None:
                check_port_number(self["monitor"], "--monitor")
        except ListenerError as error:
            raise usage.UsageError(str(error)) from None
        seen: set[str] = set()
        for option, port in [
            *(("--port", port) for port in self["ports"]),
            *(("--mqtt-port", port) for port in self["mqtt-ports"]),
            *(("--ws-port", port) for port in self["ws-ports"]),
        ]:
            if port in seen:
                raise usage.UsageError(f"{option} {port} is given twice")
            seen.add(port)
        if self["monitor"] in seen:
            raise usage.UsageError(f"--monitor {self['monitor']} is also a --port")

    def retention(self) -> Retention:
        on_disk = self["data-dir"] is not None
        default_bytes = None if on_disk else DEFAULT_MEMORY_RETENTION.max_bytes
        return Retention(
            max_messages=self["retention-messages"],
            max_bytes=self["retention-bytes"] or default_bytes,
            max_age=self["retention-age"],
        )

    def redis_settings(self) -> RedisStoreSettings | None:
        target = self["store"]
        if target is None:
            return None
        if self["redis-password"]:
            target = replace(target, password=self["redis-password"])
        return RedisStoreSettings(
            target=target,
            replicas=self["redis-replicas"],
            timeout=self["redis-timeout"],
            prefix=self["redis-prefix"],
            node_name=self["node-name"] or _default_node_name(self["ports"]),
            claim_idle=self["redis-claim-idle"],
            dedup_window=self["dedup-window"],
            dedup_max_ids=self["dedup-max-ids"],
            retention=Retention(
                max_messages=self["retention-messages"],
                max_bytes=self["retention-bytes"],
                max_age=self["retention-age"],
            ),
        )

    def file_settings(self) -> FileStoreSettings:
        return FileStoreSettings(
            segment_bytes=self["segment-bytes"],
            fsync=self["fsync"],
            fsync_interval=self["fsync-interval"],
            retention=self.retention(),
        )

    def settings(self) -> BrokerSettings:
        return BrokerSettings(
            max_message_size=self["max-message-size"],
            max_header_bytes=self["max-header-bytes"],
            dedup_window=self["dedup-window"],
            dedup_max_ids=self["dedup-max-ids"],
            compact=(KV_PATTERN, *self["compact"]),
            tombstone_retention=self["tombstone-retention"],
            handshake_timeout=self["handshake-timeout"],
            max_topics=self["max-topics"],
            max_anonymous_connections=self["max-anonymous-connections"],
            retention=self.retention(),
            max_prefetch=self["max-prefetch"],
            dead_letter_topic=self["dead-letter-topic"] or None,
            max_inflight_bytes=self["max-inflight-bytes"],
            slow_consumer_timeout=self["slow-consumer-timeout"],
            disconnect_slow_consumers=bool(self["disconnect-slow-consumers"]),
            max_pending_input=self["max-pending-input"],
            frame_timeout=self["frame-timeout"],
            tls_identity=self["tls-identity"],
            drain_timeout=self["drain-timeout"],
            durable_idle=self["durable-idle"],
            slow_consumer_lag=self["slow-consumer-lag"],
            delivery=DeliverySettings(
                ack_delay=self["ack-delay"],
                ack_timeout=self["ack-timeout"],
                max_deliveries=self["max-deliveries"],
                dead_letter_expired=bool(self["dead-letter-expired"]),
            ),
        )

    def tls(self) -> ServerTLS | None:
        if self["tls-cert"] is None:
            return None
        return ServerTLS(
            cert=Path(self["tls-cert"]),
            key=Path(self["tls-key"]) if self["tls-key"] else None,
            ca=Path(self["tls-ca"]) if self["tls-ca"] else None,
        )


def _default_node_name(ports: list[str]) -> str:
    """HOST:PORT of the first listening port: unique per node, and the same
    after a restart."""
    first = ports[0] if ports else "3000"
    port = next((part for part in first.split(":") if part.isdigit()), first)
    return f"{socket.gethostname()}:{port}"


def _config_argument(arguments: list[str]) -> str | None:
    """The value of --config (or -c) among command-line arguments, if any."""
    for index, argument in enumerate(arguments):
        if argument in ("--config", "-c") and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--config="):
            return argument.split("=", 1)[1]
        if argument == "--":
            break
    return None


def makeService(options: Options) -> IService:
    """The broker listening where each --port says, its topics where
    --data-dir says, logging as --log-format and --log-level say."""
    data_dir = options["data-dir"]
    twistd = getattr(options, "parent", None) or {}
    observer = log_observer(
        options["log-format"],
        options["log-level"],
        log_file(twistd.get("logfile"), daemon=not twistd.get("nodaemon", True)),
    )
    return BrokerService(
        options["ports"],
        options.settings(),
        data_dir=Path(data_dir) if data_dir else None,
        file_settings=options.file_settings(),
        redis=options.redis_settings(),
        tls=options.tls(),
        users_file=Path(options["users"]) if options["users"] else None,
        monitor=options["monitor"],
        monitor_hosts=options["monitor-hosts"],
        log_observer=observer,
        mqtt_ports=options["mqtt-ports"],
        ws_ports=options["ws-ports"],
        ws_origins=options["ws-origins"],
    )

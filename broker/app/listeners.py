"""Where the broker listens: each --port value as a Twisted server endpoint.

3000                             TCP on every interface (listen backlog 1024)
tls:3001[:interface=…][:backlog=…] TLS with --tls-cert/--tls-key (and --tls-ca)
anything else                    a Twisted server endpoint string
                                 (tcp:…, unix:…, ssl:…)
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint

# Twisted's default of 50 made 10,000 subscribers connecting at once take 41 s.
BACKLOG = 1024


class ListenerError(ValueError):
    """A --port value that cannot be used; the message says why."""


def endpoint_description(port: str) -> str:
    """A plain port number means TCP on every interface, with a listen
    backlog fit for crowds of clients; anything else is kept as it is."""
    return f"tcp:{port}:backlog={BACKLOG}" if port.isdigit() else port


def monitor_description(monitor: str) -> str:
    """A plain --monitor port number means TCP on the loopback interface
    only (as NATS's monitoring port); an endpoint string is kept as it is."""
    return f"tcp:{monitor}:interface=127.0.0.1" if monitor.isdigit() else monitor


def listen_interface(port: str) -> str | None:
    """The interface an endpoint string names (None: every interface)."""
    found = _INTERFACE.search(port)
    return None if found is None else found.group(1).replace("\\", "")


def is_tls(port: str) -> bool:
    return port.startswith("tls:")


_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\.|[^:])*)")


_FIELD_SEPARATOR = re.compile(r"(?<!\\):")
_PORTED_KINDS = ("tcp", "tcp6", "ssl", "tls")


def check_port_number(value: str, option: str) -> None:
    """ListenerError unless the TCP port a --port or --monitor value names
    (a bare number, or tcp:/tcp6:/ssl:/tls: with PORT or port=PORT) is
    0-65535: the socket would refuse it only when the broker starts, with a
    traceback. Values that name no TCP port (unix:...) pass."""
    if value.strip().lstrip("+-").isdigit():
        number = value.strip()
    else:
        kind, _, rest = value.partition(":")
        if kind not in _PORTED_KINDS or not rest:
            return
        fields = _FIELD_SEPARATOR.split(rest)
        named = [field[5:] for field in fields if field.startswith("port=")]
        positional = [field for field in fields if "=" not in field]
        number = (named or positional or [""])[0]
    try:
        port = int(number)
    except ValueError:
        return  # not a number: the endpoint parser says so, in one line
    if not 0 <= port <= 65535:
        raise ListenerError(f"{option} {value}: a port number is 0-65535")


def is_local_only(port: str) -> bool:
    """Whether a --port value listens only to this machine: a UNIX socket,
    or an interface that is a loopback address (or "localhost")."""
    if port.startswith("unix:"):
        return True
    interface = listen_interface(port)
    if interface is None:
        return False  # every interface
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def server_endpoint(
    port: str, reactor: Any, tls: IOpenSSLContextFactory | None = None
) -> IStreamServerEndpoint:
    """The endpoint a --port value names."""
    if not is_tls(port):
        try:
            return serverFromString(reactor, endpoint_description(port))
        except (ValueError, TypeError, KeyError) as error:
            raise ListenerError(f"--port {port}: {error}") from None
    if tls is None:
        raise ListenerError(f"--port {port}: TLS needs --tls-cert (and --tls-key)")
    fields = port.split(":")[1:]
    if not fields or not fields[0].isdigit():
        raise ListenerError(f"--port {port}: write tls:PORT[:interface=ADDRESS][:backlog=N]")
    options: dict[str, str] = {}
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals or name not in ("interface", "backlog"):
            raise ListenerError(f"--port {port}: unknown option {field!r}")
        options[name] = value
    return SSL4ServerEndpoint(
        reactor,
        int(fields[0]),
        tls,
        backlog=int(options.get("backlog", BACKLOG)),
        interface=options.get("interface", ""),
    )

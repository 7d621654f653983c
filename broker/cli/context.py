"""Where the broker is and who the command is to it: `--url`, `--user`,
`--password` or `--token`, `--ca`, each also from a BROKER_* variable, so
that a shell can set them once."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Context:
    """How to reach and sign in to one broker."""

    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    ca: Path | None = None
    timeout: float = 10.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for a tls:// URL (trusting `ca`, if given)."""
        if not self.url.startswith("tls://"):
            if self.ca is not None:
                raise click.UsageError("--ca is for a tls:// URL")
            return None
        return ssl.create_default_context(cafile=str(self.ca) if self.ca else None)

    def options(self) -> dict[str, Any]:
        """The connect() arguments of broker.aio and broker.sync."""
        return {
            "user": self.user,
            "password": self.password,
            "token": self.token,
            "ssl": self.ssl_context(),
            "timeout": self.timeout,
        }


def connection_options(command: F) -> F:
    """Add the connection options to a command, gathered as `context`."""
    options = [
        click.option(
            "--url",
            envvar="BROKER_URL",
            default="tcp://localhost:3000",
            show_default=True,
            help="The broker: tcp://HOST:PORT or tls://HOST:PORT [env BROKER_URL].",
        ),
        click.option(
            "--user", envvar="BROKER_USER", help="Sign in as this user [env BROKER_USER]."
        ),
        click.option(
            "--password",
            envvar="BROKER_PASSWORD",
            help="The user's password [env BROKER_PASSWORD; better than the option, "
            "which other users may see in the process list].",
        ),
        click.option(
            "--token", envvar="BROKER_TOKEN", help="Sign in with a token [env BROKER_TOKEN]."
        ),
        click.option(
            "--ca",
            envvar="BROKER_CA",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Trust the broker's certificate if this PEM file's CAs signed it [env BROKER_CA].",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds to wait for the broker to answer.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def context_of(
    url: str,
    user: str | None,
    password: str | None,
    token: str | None,
    ca: Path | None,
    timeout: float,
) -> Context:
    if (user is None) != (password is None):
        raise click.UsageError("give --user and --password together (or BROKER_PASSWORD)")
    return Context(url, user, password, token, ca, timeout)

"""Named contexts, as the `nats` CLI has them: where a broker and its
monitor are and who the command is to them, kept in a TOML file
($XDG_CONFIG_HOME/broker/contexts.toml, written readable by its owner
alone), so that `broker --context prod topics ls` needs nothing else.

    current = "prod"

    [contexts.prod]
    url = "tls://broker.example:3000"
    monitor = "https://broker.example:8222"
    user = "ops"
    password = "..."
    ca = "/etc/broker/ca.pem"

A command line option, then a BROKER_* variable, then the context: the
first that says something wins.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker.toml_file import read_toml

FIELDS = ("url", "monitor", "user", "password", "token", "ca")


class ContextError(ValueError):
    """The contexts file, or a context in it, cannot be used."""


def contexts_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "broker" / "contexts.toml"


def load(path: Path | None = None) -> dict[str, Any]:
    """The file's document ({} if there is none), checked."""
    path = path or contexts_path()
    if not path.exists():
        return {"contexts": {}}
    document = read_toml(path, "contexts", ContextError)
    contexts = document.get("contexts", {})
    if not isinstance(contexts, dict) or not all(isinstance(c, dict) for c in contexts.values()):
        raise ContextError(f"{path}: [contexts.NAME] tables, each of {', '.join(FIELDS)}")
    for name, context in contexts.items():
        unknown = sorted(set(context) - set(FIELDS))
        if unknown:
            raise ContextError(f"{path}: [contexts.{name}]: unknown field {unknown[0]!r}")
    document["contexts"] = contexts
    return document


def save(document: dict[str, Any], path: Path | None = None) -> None:
    """Write the document atomically, readable by its owner alone."""
    path = path or contexts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if document.get("current"):
        lines.append(f"current = {json.dumps(document['current'])}\n")
    for name, context in sorted(document["contexts"].items()):
        lines.append(f"\n[contexts.{json.dumps(name)}]\n")
        for field in FIELDS:
            if context.get(field) is not None:
                lines.append(f"{field} = {json.dumps(str(context[field]))}\n")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".contexts-")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("".join(lines))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def defaults(
    name: str | None, url: str | None = None, monitor: str | None = None
) -> dict[str, Any]:
    """Click's default_map of every command for context `name` (None: the
    current one, if any), its address and monitor replaced by `url` and
    `monitor` if given (`broker --url ... pub`)."""
    document = load()
    name = name or document.get("current")
    context: dict[str, Any] = {}
    if name:
        found = document["contexts"].get(name)
        if found is None:
            raise ContextError(f"no context {name!r} in {contexts_path()} (see broker context ls)")
        context = dict(found)
    if url is not None:
        context["url"] = url
    if monitor is not None:
        context["monitor"] = monitor
    if not context:
        return {}
    connection = {field: context.get(field) for field in ("url", "user", "password", "token", "ca")}
    connection = {key: value for key, value in connection.items() if value is not None}
    admin = {field: context.get(field) for field in ("user", "password", "token")}
    admin = {key: value for key, value in admin.items() if value is not None}
    if context.get("monitor"):
        admin["monitor_url"] = context["monitor"]
    return {
        "pub": connection,
        "sub": connection,
        "top": admin,
        "topics": {command: admin for command in ("ls", "info", "peek", "create", "purge", "rm")},
        "consumers": {command: admin for command in ("ls", "reset", "rm")},
        "conns": {command: admin for command in ("ls", "kick")},
    }


@click.group(help="Named brokers and credentials, like the nats CLI's contexts.")
def context() -> None:
    pass


@context.command(name="add", help="Add (or replace) a context; the first becomes current.")
@click.argument("name")
@click.option("--url", help="tcp://HOST:PORT or tls://HOST:PORT")
@click.option("--monitor", help="http(s)://HOST:PORT of its monitor")
@click.option("--user")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--token")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
def add(
    name: str,
    url: str | None,
    monitor: str | None,
    user: str | None,
    password_stdin: bool,
    token: str | None,
    ca: str | None,
) -> None:
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    if (user is None) != (password is None):
        raise click.UsageError("give --user with --password-stdin")
    document = load()
    document["contexts"][name] = {
        "url": url,
        "monitor": monitor,
        "user": user,
        "password": password,
        "token": token,
        "ca": ca,
    }
    if not document.get("current"):
        document["current"] = name
    save(document)
    click.echo(f"context {name} saved in {contexts_path()}")


@context.command(name="ls", help="The contexts; * marks the current one.")
def ls() -> None:
    document = load()
    table = Table(title=str(contexts_path()), title_justify="left")
    for column in ("", "name", "url", "monitor", "user"):
        table.add_column(column)
    for name, saved in sorted(document["contexts"].items()):
        mark = "*" if name == document.get("current") else ""
        who = saved.get("user") or ("(token)" if saved.get("token") else "")
        table.add_row(mark, name, saved.get("url") or "", saved.get("monitor") or "", who)
    Console().print(table)


@context.command(name="use", help="Make a context the current one.")
@click.argument("name")
def use(name: str) -> None:
    document = load()
    if name not in document["contexts"]:
        raise click.UsageError(f"no context {name!r} (see broker context ls)")
    document["current"] = name
    save(document)
    click.echo(f"using context {name}")


@context.command(name="rm", help="Remove a context.")
@click.argument("name")
def rm(name: str) -> None:
    document = load()
    if document["contexts"].pop(name, None) is None:
        raise click.UsageError(f"no context {name!r} (see broker context ls)")
    if document.get("current") == name:
        document["current"] = None
    save(document)
    click.echo(f"removed context {name}")

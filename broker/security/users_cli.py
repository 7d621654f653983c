"""`broker users` (also `python -m broker.security.users`): add, list,
remove users of a users file and change their secrets, editing the file in
place: comments, the order of the tables and the other users stay as they
were, and an edit that would change anything else is refused (the file is
then left alone)."""

from __future__ import annotations

import copy
import dataclasses
import getpass
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from broker.security.permissions import PatternError, Rules
from broker.security.users import (
    USER_NAME,
    Users,
    UsersFileError,
    hash_secret,
    hash_token,
    load_users,
    new_token,
    user_entry,
)
from broker.toml_file import read_toml

PROG = "broker users"

_FILE = click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The users file (the one given to twistd broker --users).",
)
_PASSWORD_STDIN = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin (for scripts), "
    "instead of asking for it twice at the terminal.",
)
_TOKEN = click.option(
    "--token",
    is_flag=True,
    help="Make a token instead of a password, and print it once (only its hash is stored).",
)


@click.group(
    help="Manage the users file of twistd broker --users. Passwords are stored "
    "as scrypt hashes, tokens as SHA-256 hashes, never as they are. Send the "
    "broker SIGHUP afterwards to apply a change.",
    epilog="Example: printf '%s\\n' \"$PASSWORD\" | broker users add alice "
    "--file users.toml --publish 'orders.>' --subscribe 'orders.>' --password-stdin",
    context_settings={"help_option_names": ["-h", "--help"]},
)
def users() -> None:
    pass


@users.command(help="Append a user, asking for its password (or making a token).")
@click.argument("name")
@_FILE
@click.option("--publish", multiple=True, help="A topic pattern it may publish to (repeatable).")
@click.option("--subscribe", multiple=True, help="A topic pattern it may read (repeatable).")
@_PASSWORD_STDIN
@_TOKEN
def add(
    name: str,
    path: Path,
    publish: tuple[str, ...],
    subscribe: tuple[str, ...],
    password_stdin: bool,
    token: bool,
) -> None:
    _check_name(name)
    try:
        for pattern in (*publish, *subscribe):
            Rules.of([pattern])
    except PatternError as error:
        raise click.UsageError(str(error)) from None
    existing = _load(path) if path.exists() else Users({})
    if name in existing.by_name:
        raise click.UsageError(f"{name} is in {path} already")
    shown, field, secret_hash = _new_secret(name, password_stdin, token)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    entry = user_entry(name, field, secret_hash, list(publish), list(subscribe))
    edited = text + ("\n" if text.strip() else "") + entry
    _write(
        path, edited, name, lambda after: name in after.by_name and _others_equal(existing, after)
    )
    click.echo(f"added {name} to {path}")
    _show_token(shown)


@users.command(name="ls", help="Show each user: its kind of secret and its topic patterns.")
@_FILE
def list_users(path: Path) -> None:
    _load(path)  # every error said as the broker would say it
    tables = read_toml(path, "users", UsersFileError).get("users", {})
    rows = [("USER", "SECRET", "PUBLISH", "SUBSCRIBE")]
    for name, entry in tables.items():
        secret = "password" if "password" in entry else "token" if "token" in entry else "none"
        rows.append(
            (
                name,
                secret,
                _patterns(entry.get("publish", []), entry.get("deny_publish", [])),
                _patterns(entry.get("subscribe", []), entry.get("deny_subscribe", [])),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        click.echo("  ".join([*padded, row[3]]))


@users.command(name="rm", help="Take a user out of the file; the other users and comments stay.")
@click.argument("name")
@_FILE
def remove(name: str, path: Path) -> None:
    before = _load(path)
    lines, start, end = _table(path, before, name)
    # Comments at the end of the table are those of the next one.
    while end > start + 1 and lines[end - 1].lstrip().startswith("#"):
        end -= 1
    if lines[end - 1].strip() and start > 0 and not lines[start - 1].strip():
        start -= 1  # one blank line goes with the table, so that none pile up
    edited = "".join(lines[:start] + lines[end:])
    _write(
        path,
        edited,
        name,
        lambda after: (
            set(after.by_name) == set(before.by_name) - {name}
            and _others_equal(before, after, name)
        ),
    )
    click.echo(f"removed {name} from {path}")


@users.command(help="Give a user a new password (or, with --token, a new token).")
@click.argument("name")
@_FILE
@_PASSWORD_STDIN
@_TOKEN
def passwd(name: str, path: Path, password_stdin: bool, token: bool) -> None:
    before = _load(path)
    lines, start, end = _table(path, before, name)
    shown, field, secret_hash = _new_secret(name, password_stdin, token)
    assignment = re.compile(rf'^(\s*{field}\s*=\s*)"[^"\\]*"(.*)$', re.DOTALL)
    for index in range(start + 1, end):
        found = assignment.match(lines[index])
        if found:
            lines[index] = f'{found.group(1)}"{secret_hash}"{found.group(2)}'
            break
    else:
        lines.insert(start + 1, f'{field} = "{secret_hash}"\n')
    old = before.by_name[name]
    if field == "token":
        expected = dataclasses.replace(old, token_hash=secret_hash)
    else:
        expected = dataclasses.replace(old, password_hash=secret_hash)
    _write(
        path,
        "".join(lines),
        name,
        lambda after: after.by_name.get(name) == expected and _others_equal(before, after, name),
    )
    click.echo(f"changed the {field} of {name} in {path}")
    _show_token(shown)


def _check_name(name: str) -> None:
    if not USER_NAME.match(name):
        raise click.UsageError("a user name is 1-64 of A-Z a-z 0-9 _ . @ -")


def _load(path: Path) -> Users:
    try:
        return load_users(path)
    except UsersFileError as error:
        raise click.ClickException(str(error)) from None


def _new_secret(name: str, password_stdin: bool, token: bool) -> tuple[str | None, str, str]:
    """(the token to show once or None, the field, its hash)."""
    if token and password_stdin:
        raise click.UsageError("--token makes the secret: give it without --password-stdin")
    if token:
        made = new_token()
        return made, "token", hash_token(made)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("no password on stdin (one line is read)")
    elif not sys.stdin.isatty():
        raise click.UsageError(
            "stdin is not a terminal: give --password-stdin to read the password from it"
        )
    else:
        try:
            password = getpass.getpass(f"password for {name}: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            raise click.Abort() from None
        if again != password:
            raise click.UsageError("the passwords differ")
        if not password:
            raise click.UsageError("an empty password")
    return None, "password", hash_secret(password)


def _show_token(token: str | None) -> None:
    if token is not None:
        click.echo(f"its token (shown once, keep it secret): {token}")


def _patterns(allow: list[str], deny: list[str]) -> str:
    shown = ",".join([*allow, *(f"!{pattern}" for pattern in deny)])
    return shown or "-"


def _is_blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


_ANY_HEADER = re.compile(r"^\s*\[")


def _table(path: Path, users: Users, name: str) -> tuple[list[str], int, int]:
    """The file's lines, and where the [users.NAME] table starts and ends."""
    _check_name(name)
    if name not in users.by_name:
        raise click.UsageError(f"no user {name} in {path}")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    quoted = re.escape(name)
    header = re.compile(
        rf"""^\s*\[\s*users\s*\.\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*\]\s*(?:#.*)?$""",
        re.DOTALL,
    )
    for start, line in enumerate(lines):
        if header.match(line):
            end = next(
                (i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])),
                len(lines),
            )
            return lines, start, end
    raise _cannot_edit(path, name)


def _cannot_edit(path: Path, name: str) -> click.ClickException:
    return click.ClickException(
        f"{path}: {name} is not written as a [users.{name}] table this command "
        "can edit safely; edit it by hand"
    )


def _others_equal(before: Users, after: Users, changed: str | None = None) -> bool:
    return all(
        after.by_name.get(other) == user
        for other, user in before.by_name.items()
        if other != changed
    )


def _write(path: Path, text: str, name: str, holds: Callable[[Users], bool]) -> None:
    """Replace the file with `text` at once (a broker reloading it sees the
    old or the new, never half), if the users it holds are as `holds` says."""
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        try:
            after = load_users(Path(temporary))
        except UsersFileError:
            after = None
        if after is None or not holds(after):
            raise click.ClickException(
                f"{path}: editing {name} would change more than {name}; edit it by hand"
            )
        if path.exists():
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# The names these commands had before `broker users`, still understood.
for _name, _command in (("list", list_users), ("remove", remove)):
    _alias = copy.copy(_command)
    _alias.hidden = True
    users.add_command(_alias, name=_name)


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit code (0, 1 for a file problem, 2 for a usage error)."""
    try:
        users.main(args=argv, prog_name=PROG)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The users file and topic permissions, as pure pieces (the broker does not
use them yet): patterns against a plain reference matcher, deny over allow,
hashes, clear errors for bad files, and the command that adds a user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

from broker.security.permissions import PatternError, Rules, check_pattern, matches
from broker.security.users import (
    ANONYMOUS,
    UsersFileError,
    hash_secret,
    load_users,
    verify_secret,
    verify_token,
)
from broker.security.users_cli import main
from tests.strategies import PATTERNS, TOPICS

FAST = {"n": 2**4, "r": 1, "p": 1}  # scrypt made cheap for tests


def reference_match(pattern: str, topic: str) -> bool:
    """NATS's rules, written the slow and obvious way."""
    p, t = pattern.split("."), topic.split(".")
    if p[-1] == ">":
        head = p[:-1]
        return len(t) > len(head) and all(a in ("*", b) for a, b in zip(head, t, strict=False))
    return len(p) == len(t) and all(a in ("*", b) for a, b in zip(p, t, strict=True))


@settings(max_examples=300, deadline=None)
@given(pattern=PATTERNS, topic=TOPICS)
def test_patterns_match_as_the_reference_says(pattern, topic):
    assert matches(check_pattern(pattern), topic) == reference_match(pattern, topic)


def test_pattern_edge_cases():
    assert matches("orders.*", "orders.eu") and not matches("orders.*", "orders")
    assert not matches("orders.*", "orders.eu.paris")
    assert matches("orders.>", "orders.eu.paris") and not matches("orders.>", "orders")
    assert matches(">", "anything.at.all") and matches("*", "one")
    for bad in ["", "a..b", "a.>.b", "a*", "orders.>x", ">.a"]:
        with pytest.raises(PatternError):
            check_pattern(bad)


def test_deny_wins_over_allow():
    rules = Rules.of(allow=["orders.>"], deny=["orders.secret", "orders.*.internal"])
    assert rules.permits("orders.eu")
    assert not rules.permits("orders.secret")
    assert not rules.permits("orders.eu.internal")
    assert not rules.permits("billing")
    assert rules.forbidden(["orders.a", "billing", "orders.secret"]) == ["billing", "orders.secret"]


def test_secrets_are_hashed_and_checked():
    stored = hash_secret("s3cret", **FAST)
    assert stored.startswith("scrypt$16$1$1$") and "s3cret" not in stored
    assert verify_secret("s3cret", stored)
    assert not verify_secret("S3cret", stored)
    assert not verify_secret("s3cret", "scrypt$bad")
    assert not verify_secret("s3cret", "plain")
    assert hash_secret("s3cret", **FAST) != stored  # salted


def test_a_users_file_loads_with_its_permissions(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text(
        f"""
[users.alice]
password = "{hash_secret("pw", **FAST)}"
publish = ["orders.>"]
subscribe = ["orders.>"]
deny_subscribe = ["orders.secret"]
max_connections = 3

[users.{ANONYMOUS}]
subscribe = ["public.>"]
"""
    )
    users = load_users(path)
    alice = users.by_name["alice"]
    assert verify_secret("pw", alice.password_hash)
    assert alice.publish.permits("orders.eu") and not alice.subscribe.permits("orders.secret")
    assert alice.max_connections == 3
    assert users.anonymous.subscribe.permits("public.news")
    assert not users.anonymous.publish.permits("public.news")


@pytest.mark.parametrize(
    "text, said",
    [
        ("[users.alice\n", "not valid TOML"),
        ('[users.alice]\npassword = "hunter2"\n', "never the secret"),
        ('[users.alice]\npublish = "orders"\n', "a list of topic patterns"),
        ('[users.alice]\npublish = ["a.>.b"]\n', "'>' must be the last token"),
        ("[users.alice]\nmax_connections = 0\n", "max_connections must be a positive"),
        ("[users.alice]\nsuperuser = true\n", "unknown field 'superuser'"),
        ('[users.alice]\nadmin = "yes"\n', "admin must be true or false"),
        ('[users."bad name"]\n', "a user name is"),
        ("[groups.x]\n", "unknown table 'groups'"),
    ],
)
def test_a_bad_users_file_says_where_and_why(tmp_path, text, said):
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=said):
        load_users(path)


def test_without_an_anonymous_entry_anonymous_may_do_nothing(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text("")
    anonymous = load_users(path).anonymous
    assert not anonymous.publish.permits("x") and not anonymous.subscribe.permits("x")


def test_the_add_command_appends_a_hashed_user(tmp_path):
    path = tmp_path / "users.toml"
    for name in ("alice", "bob"):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "broker",
                "users",
                "add",
                name,
                "--file",
                str(path),
                "--publish",
                "orders.>",
                "--subscribe",
                "orders.*",
                "--password-stdin",
            ],
            input=f"{name}-pw\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    users = load_users(path)
    assert "alice-pw" not in path.read_text()
    assert verify_secret("bob-pw", users.by_name["bob"].password_hash)
    assert users.by_name["alice"].subscribe.permits("orders.eu")
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "users",
            "add",
            "alice",
            "--file",
            str(path),
            "--password-stdin",
        ],
        input="x\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "alice is in" in again.stderr


def test_the_add_command_makes_a_token_shows_it_once_and_stores_its_hash(tmp_path, capsys):
    path = tmp_path / "users.toml"
    assert main(["add", "ingest", "--file", str(path), "--token", "--publish", "metrics.>"]) == 0
    token = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    assert len(token) >= 40 and token not in path.read_text()
    ingest = load_users(path).by_name["ingest"]
    assert ingest.password_hash is None and ingest.token_hash is not None
    assert verify_token(token, ingest.token_hash)
    assert not verify_token(token + "x", ingest.token_hash)
    assert ingest.publish.permits("metrics.cpu") and not ingest.subscribe.permits("metrics.cpu")


def users_command(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m broker users ARGUMENTS` with `stdin` piped in, as a script runs it."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "users", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


SHARED_FILE = """# users of the staging broker: keep this comment
[users.alice]  # billing
password = "{alice}"   # rotated 2026-11
publish = ["orders.>"]
subscribe = ["orders.>"]
max_connections = 3

# the ingest service
[users.ingest]
token = "sha256$00"
publish = ["metrics.>"]

[users.anonymous]
subscribe = ["news"]
"""


def shared_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(SHARED_FILE.format(alice=hash_secret("alice-pw", **FAST)))
    return path


def test_piped_input_without_password_stdin_is_a_clear_error_not_a_traceback(tmp_path):
    path = tmp_path / "users.toml"
    run = users_command("add", "alice", "--file", str(path), stdin="pw\npw\n")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "--password-stdin" in run.stderr.splitlines()[-1]
    assert not path.exists()
    empty = users_command("add", "alice", "--file", str(path), "--password-stdin", stdin="")
    assert empty.returncode == 2 and "no password on stdin" in empty.stderr
    assert "Traceback" not in empty.stderr and not path.exists()


def test_help_names_every_command_in_whole_sentences():
    run = users_command("--help")
    assert run.returncode == 0
    for command in ("add", "ls", "passwd", "rm"):
        assert f"  {command} " in run.stdout
    assert "Manage the users file of twistd broker --users." in " ".join(run.stdout.split())
    add_help = " ".join(users_command("add", "--help").stdout.split())
    assert "--password-stdin Read the password from the first line of stdin" in add_help


def test_list_shows_each_user_its_secret_kind_and_patterns_never_a_hash(tmp_path):
    path = shared_file(tmp_path)
    run = users_command("ls", "--file", str(path))
    assert run.returncode == 0, run.stderr
    lines = [line.split() for line in run.stdout.splitlines()]
    assert lines[0] == ["USER", "SECRET", "PUBLISH", "SUBSCRIBE"]
    assert lines[1:] == [
        ["alice", "password", "orders.>", "orders.>"],
        ["ingest", "token", "metrics.>", "-"],
        ["anonymous", "none", "-", "news"],
    ]
    assert "scrypt" not in run.stdout and "sha256" not in run.stdout


def test_remove_takes_out_one_user_and_keeps_the_rest_of_the_file_as_it_was(tmp_path):
    path = shared_file(tmp_path)
    before = path.read_text()
    run = users_command("remove", "ingest", "--file", str(path))
    assert run.returncode == 0, run.stderr
    assert "removed ingest" in run.stdout
    after = path.read_text()
    assert sorted(load_users(path).by_name) == ["alice", "anonymous"]
    ingest_table = '[users.ingest]\ntoken = "sha256$00"\npublish = ["metrics.>"]\n\n'
    assert after == before.replace(ingest_table, "")
    missing = users_command("remove", "bob", "--file", str(path))
    assert missing.returncode == 2 and "no user bob in" in missing.stderr
    assert path.read_text() == after


def test_passwd_changes_one_password_in_place_and_keeps_comments_and_others(tmp_path):
    path = shared_file(tmp_path)
    before = path.read_text()
    run = users_command("passwd", "alice", "--file", str(path), "--password-stdin", stdin="new\n")
    assert run.returncode == 0, run.stderr
    alice = load_users(path).by_name["alice"]
    assert verify_secret("new", alice.password_hash) and alice.max_connections == 3
    assert not verify_secret("alice-pw", alice.password_hash)
    after = path.read_text()
    old_hash = before.split('password = "')[1].split('"')[0]
    assert after == before.replace(old_hash, alice.password_hash)
    token = users_command("passwd", "ingest", "--file", str(path), "--token")
    assert token.returncode == 0, token.stderr
    new_token = token.stdout.rsplit(": ", 1)[1].strip()
    ingest = load_users(path).by_name["ingest"]
    assert verify_token(new_token, ingest.token_hash)
    assert path.read_text().count("# the ingest service") == 1
    unknown = users_command("passwd", "bob", "--file", str(path), "--password-stdin", stdin="x\n")
    assert unknown.returncode == 2 and "no user bob in" in unknown.stderr


def test_a_table_the_command_cannot_edit_safely_is_left_alone(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text(f'users.alice.password = "{hash_secret("pw", **FAST)}"\n')
    before = path.read_text()
    run = users_command("remove", "alice", "--file", str(path))
    assert run.returncode == 1
    assert "edit it by hand" in run.stderr and "Traceback" not in run.stderr
    assert path.read_text() == before

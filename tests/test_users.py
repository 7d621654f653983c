"""The users file and topic permissions, as pure pieces (the broker does not
use them yet): patterns against a plain reference matcher, deny over allow,
hashes, clear errors for bad files, and the command that adds a user."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings

from broker.permissions import PatternError, Rules, check_pattern, matches
from broker.users import (
    ANONYMOUS,
    UsersFileError,
    hash_secret,
    load_users,
    main,
    verify_secret,
    verify_token,
)
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
        ("[users.alice]\nadmin = true\n", "unknown field 'admin'"),
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
                "broker.users",
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
            "broker.users",
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

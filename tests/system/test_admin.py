"""The admin API on a real `twistd broker --monitor` with a users file, and
the `broker topics|consumers|conns` commands over it: refused without the
admin right, and what it does changes what the broker holds."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from broker.sansio.messages import BrokerError
from broker.security.users import hash_secret, user_entry
from broker.wire import StartAt
from tests.clients import BrokerProcess, accepts, client_of, in_thread, wait_until
from tests.process import free_port
from tests.system.test_cli import broker_command

ADMIN = {"BROKER_USER": "root", "BROKER_PASSWORD": "adm1n"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("admin")
    users = (
        user_entry("root", "password", hash_secret("adm1n"), [">"], [">"])
        + "admin = true\n"
        + user_entry("watcher", "password", hash_secret("w"), [], [])
        + "monitor = true\n"
    )
    (workdir / "users.toml").write_text(users)
    monitor = free_port()
    process = BrokerProcess(
        workdir,
        "--users",
        str(workdir / "users.toml"),
        "--monitor",
        f"tcp:{monitor}:interface=127.0.0.1",
        "--data-dir",
        str(workdir / "data"),
    ).start()
    wait_until(lambda: accepts(monitor), what="the monitor listening")
    process.monitor = f"http://127.0.0.1:{monitor}"  # type: ignore[attr-defined]
    yield process
    process.stop()


def call(
    process: BrokerProcess,
    method: str,
    path: str,
    user: tuple[str, str] | None = None,
    json_body: bool = True,
) -> tuple[int, object]:
    request = urllib.request.Request(process.monitor + path, method=method)  # type: ignore[attr-defined]
    if json_body:
        request.add_header("content-type", "application/json")
    if user is not None:
        pair = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("authorization", f"Basic {pair}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def admin_command(process: BrokerProcess, *arguments: str):
    env = {**ADMIN, "BROKER_MONITOR": process.monitor, "BROKER_URL": process.url}  # type: ignore[attr-defined]
    return broker_command(*arguments, env=env)


def test_the_admin_api_needs_the_admin_right(guarded):
    assert call(guarded, "GET", "/admin/topics")[0] == 401
    status, said = call(guarded, "GET", "/admin/topics", user=("watcher", "w"))
    assert status == 403 and "may not act on the broker" in str(said)
    assert call(guarded, "GET", "/varz", user=("watcher", "w"))[0] == 200  # the monitor, yes
    assert call(guarded, "GET", "/admin/topics", user=("root", "wrong"))[0] == 401
    assert call(guarded, "GET", "/admin/topics", user=("root", "adm1n"))[0] == 200


def test_a_change_must_say_it_sends_json(guarded):
    status, said = call(guarded, "PUT", "/admin/topics/x", ("root", "adm1n"), json_body=False)
    assert status == 415 and "application/json" in str(said)
    status, made = call(guarded, "PUT", "/admin/topics/made%2Fhere", ("root", "adm1n"))
    assert status == 201 and made["name"] == "made/here"  # type: ignore[index]


@in_thread
def test_topics_are_listed_peeked_purged_and_deleted_from_the_terminal(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        for n in range(3):
            client.publish("cli.admin", f"m{n}".encode())
        listed = admin_command(guarded, "topics", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {t["name"]: t for t in json.loads(listed.stdout)["topics"]}
        assert rows["cli.admin"]["messages"] == 3
        peeked = admin_command(guarded, "topics", "peek", "cli.admin", "--from", "1", "--json")
        assert [m["data"] for m in json.loads(peeked.stdout)["messages"]] == ["m1", "m2"]
        sub = client.subscribe(["cli.admin"])
        refused = admin_command(guarded, "topics", "rm", "cli.admin", "--yes")
        assert refused.returncode == 1
        assert "has 1 reader(s)" in refused.stderr
        sub.close()
    purged = admin_command(guarded, "topics", "purge", "cli.admin", "--yes")
    assert purged.stdout.strip() == "purged cli.admin: 3 message(s) dropped"
    assert admin_command(guarded, "topics", "rm", "cli.admin", "--yes").returncode == 0
    listed = json.loads(admin_command(guarded, "topics", "ls", "--json").stdout)
    assert "cli.admin" not in {t["name"] for t in listed["topics"]}


@in_thread
def test_a_topic_is_compacted_from_the_terminal(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        for n in range(3):
            client.publish("cli.settings", b"v%d" % n, {"Key": "colour"})
        turned = admin_command(guarded, "topics", "compact", "cli.settings", "--json")
        assert turned.returncode == 0, turned.stderr
        assert json.loads(turned.stdout) == {"topic": "cli.settings", "compacted": True}

        # Compacted at once (in the background): the two older values of
        # the key become gaps.
        def shown() -> list[object]:
            peeked = admin_command(guarded, "topics", "peek", "cli.settings", "--json")
            return [m.get("data", "gap") for m in json.loads(peeked.stdout)["messages"]]

        wait_until(lambda: shown() == ["gap", "gap", "v2"], what="the compaction")
        with pytest.raises(BrokerError, match="takes messages with a Key header"):
            client.publish("cli.settings", b"no key")
        off = admin_command(guarded, "topics", "compact", "cli.settings", "--off")
        assert off.stdout.strip() == "cli.settings is not compacted"
        assert client.publish("cli.settings", b"no key") == 3


@in_thread
def test_a_durable_consumer_reset_from_the_terminal_resumes_where_it_was_put(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        for n in range(4):
            client.publish("cli.jobs", f"j{n}".encode())
        sub = client.subscribe(["cli.jobs"], durable="billing", start=StartAt.BEGINNING)
        assert [g.offset for g in sub.take(3)] == [0, 1, 2]
        sub.close()
    reset = admin_command(
        guarded, "consumers", "reset", "cli.jobs", "root:billing", "--offset", "1"
    )
    assert reset.returncode == 0, reset.stderr
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        sub = client.subscribe(["cli.jobs"], durable="billing", start=StartAt.BEGINNING)
        assert [g.offset for g in sub.take(3)] == [1, 2, 3]


@in_thread
def test_a_durable_consumer_reset_to_a_time_resumes_at_the_first_message_since(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        for _ in range(2):
            client.publish("cli.timed", b"before")
        between = time.time()
        wait_until(lambda: time.time() > between + 0.005, what="the clock passing")
        for _ in range(2):
            client.publish("cli.timed", b"after")
        sub = client.subscribe(["cli.timed"], durable="audit", start=StartAt.BEGINNING)
        assert len(sub.take(4)) == 4
        sub.close()
    when = datetime.fromtimestamp(between + 0.001, timezone.utc).isoformat()
    reset = admin_command(guarded, "consumers", "reset", "cli.timed", "root:audit", "--time", when)
    assert reset.returncode == 0, reset.stderr
    assert "resumes at offset 2" in reset.stdout
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        sub = client.subscribe(["cli.timed"], durable="audit", start=StartAt.BEGINNING)
        assert [(g.offset, g.data) for g in sub.take(2)] == [(2, b"after"), (3, b"after")]
    # A duration ago: an hour back is before everything.
    reset = admin_command(guarded, "consumers", "reset", "cli.timed", "root:audit", "--time", "1h")
    assert "resumes at offset 0" in reset.stdout
    bad = admin_command(guarded, "consumers", "reset", "cli.timed", "root:audit", "--time", "soon")
    assert bad.returncode == 2 and "neither a time" in bad.stderr


def test_a_reset_says_what_it_needs(guarded):
    for body in (b"{}", b'{"offset": 1, "time": 5}', b'{"time": "yesterday"}', b'{"offset": -1}'):
        request = urllib.request.Request(
            guarded.monitor + "/admin/consumers/t/d/reset", data=body, method="POST"
        )
        request.add_header("content-type", "application/json")
        pair = base64.b64encode(b"root:adm1n").decode()
        request.add_header("authorization", f"Basic {pair}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400, body


@in_thread
def test_a_connection_is_closed_from_the_terminal_and_its_client_comes_back(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        client.publish("cli.kicked", b"before")
        listed = json.loads(admin_command(guarded, "conns", "ls", "--json").stdout)
        (mine,) = [c["id"] for c in listed["connections"] if c["user"] == "root"]
        kicked = admin_command(guarded, "conns", "kick", str(mine))
        assert kicked.returncode == 0, kicked.stderr

        def gone() -> bool:
            now = json.loads(admin_command(guarded, "conns", "ls", "--json").stdout)
            return mine not in [c["id"] for c in now["connections"]]

        wait_until(gone, what="the kicked connection gone")
        assert client.publish("cli.kicked", b"after") == 1  # on a new connection
    missing = admin_command(guarded, "conns", "kick", "999999")
    assert missing.returncode == 1 and "no connection 999999" in missing.stderr


@in_thread
def test_top_shows_the_busiest_topics_to_a_monitor_user(guarded):
    with client_of("blocking", guarded.url, user="root", password="adm1n") as client:
        for _ in range(20):
            client.publish("cli.top", b"x")
    env = {
        "BROKER_MONITOR": guarded.monitor,  # type: ignore[attr-defined]
        "BROKER_USER": "watcher",
        "BROKER_PASSWORD": "w",
    }
    shown = broker_command("top", "--once", "--topics", "50", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "per second" in shown.stdout and "cli.top" in shown.stdout
    refused = broker_command("topics", "ls", env=env)  # top reads; acting needs admin
    assert refused.returncode == 4 and "may not act on the broker" in refused.stderr

"""The `broker` command as a terminal user runs it (`python -m broker`,
the console script's module) against a real `twistd broker`: what it
prints, and exit codes that mean something."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.security.users import hash_secret, user_entry
from tests.clients import BrokerProcess, accepts, wait_until
from tests.process import ROOT, free_port


def broker_command(
    *arguments: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("cli")).start()
    yield process
    process.stop()


def test_pub_prints_where_each_message_went_and_sub_prints_them_back(running):
    published = broker_command("pub", "cli.a", "hello {n}", "--count", "3", "--url", running.url)
    assert published.returncode == 0, published.stderr
    assert published.stdout.splitlines() == [
        "stored at cli.a#0",
        "stored at cli.a#1",
        "stored at cli.a#2",
    ]
    read = broker_command(
        "sub", "cli.a", "--from", "beginning", "--count", "3", "--json", "--url", running.url
    )
    assert read.returncode == 0, read.stderr
    assert [json.loads(line) for line in read.stdout.splitlines()] == [
        {"topic": "cli.a", "offset": n, "attempt": 1, "data": f"hello {n + 1}"} for n in range(3)
    ]


def test_pub_takes_each_line_of_stdin_and_sub_replays_from_an_offset(running):
    published = broker_command(
        "pub",
        "cli.lines",
        "-",
        "--json",
        stdin="one\ntwo\nthree\n",
        env={"BROKER_URL": running.url},
    )
    assert published.returncode == 0, published.stderr
    assert [json.loads(line)["offset"] for line in published.stdout.splitlines()] == [0, 1, 2]
    read = broker_command(
        "sub", "cli.lines", "--from", "1", "--wait", "1", "--raw", "--url", running.url
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["two", "three"]


def test_headers_are_published_with_h_and_shown_by_sub(running):
    published = broker_command(
        "pub",
        "cli.headed",
        "{}",
        "-H",
        "Content-Type=application/json",
        "-H",
        "k=a=b",
        "--url",
        running.url,
    )
    assert published.returncode == 0, published.stderr
    read = broker_command(
        "sub", "cli.headed", "--from", "beginning", "--count", "1", "--json", "--url", running.url
    )
    assert json.loads(read.stdout) == {
        "topic": "cli.headed",
        "offset": 0,
        "attempt": 1,
        "headers": [["Content-Type", "application/json"], ["k", "a=b"]],
        "data": "{}",
    }
    shown = broker_command(
        "sub", "cli.headed", "--from", "beginning", "--count", "1", "--url", running.url
    )
    assert "Content-Type: application/json" in shown.stdout
    for bad in ("novalue", "bad name=x"):
        refused = broker_command("pub", "cli.headed", "x", "-H", bad, "--url", running.url)
        assert refused.returncode == 2 and "--header" in refused.stderr, refused.stderr


def test_the_groups_url_beats_the_environment_for_every_command(running):
    nowhere = {"BROKER_URL": f"tcp://127.0.0.1:{free_port()}"}
    published = broker_command("--url", running.url, "pub", "cli.group-url", "x", env=nowhere)
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == "stored at cli.group-url#0"
    assert broker_command("pub", "cli.group-url", "x", env=nowhere).returncode == 3


def test_a_broker_not_there_is_exit_code_3_in_one_line():
    port = free_port()
    failed = broker_command("pub", "t", "x", "--url", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert failed.returncode == 3
    assert failed.stderr.startswith(f"broker: error: cannot reach tcp://127.0.0.1:{port} within 1")
    assert len(failed.stderr.splitlines()) == 1 and "Traceback" not in failed.stderr


def test_a_bad_command_line_is_exit_code_2_before_connecting():
    for arguments in (["pub", "", "x"], ["sub", "t", "--from", "later"], ["pub"]):
        failed = broker_command(*arguments, "--url", "tcp://127.0.0.1:1", "--timeout", "1")
        assert failed.returncode == 2, (arguments, failed.stderr)
        assert "cannot reach" not in failed.stderr


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("cli-guarded")
    entry = user_entry("carol", "password", hash_secret("pw"), ["jobs"], ["jobs"])
    (workdir / "users.toml").write_text(entry)
    process = BrokerProcess(workdir, "--users", str(workdir / "users.toml")).start()
    yield process
    process.stop()


def test_refused_credentials_are_exit_code_4_and_a_refused_publish_1(guarded):
    wrong = broker_command(
        "pub", "jobs", "x", "--url", guarded.url, "--user", "carol", env={"BROKER_PASSWORD": "no"}
    )
    assert wrong.returncode == 4, wrong.stderr
    assert "refused the credentials" in wrong.stderr
    signed_in = {"BROKER_USER": "carol", "BROKER_PASSWORD": "pw", "BROKER_URL": guarded.url}
    assert broker_command("pub", "jobs", "x", env=signed_in).returncode == 0
    refused = broker_command("pub", "payroll", "x", env=signed_in)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "broker: error: permission denied: publish to 'payroll'"


def test_serve_runs_the_broker_in_the_foreground(tmp_path: Path):
    port = free_port()
    served = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--port", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: accepts(port) or served.poll() is not None, what="the broker listening")
        published = broker_command("pub", "served", "x", "--url", f"tcp://127.0.0.1:{port}")
        assert published.stdout.strip() == "stored at served#0"
        assert not (tmp_path / "twistd.pid").exists()  # in the foreground, no pid file
    finally:
        served.terminate()
        served.wait(15)


def test_the_command_says_its_version():
    shown = broker_command("--version")
    assert shown.returncode == 0 and shown.stdout.startswith("broker, version ")


def test_the_readmes_asyncio_example_runs_as_printed(running, tmp_path: Path):
    """The first screen's example, against a broker: it publishes, then
    prints what it reads back from the beginning (and waits for more)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    use_it = readme.split("## Use it", 1)[1]
    example = use_it.split("```python\n", 1)[1].split("```", 1)[0]
    assert "import twisted" not in example and "broker.aio.connect(" in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("tcp://localhost:3000", running.url))
    child = subprocess.Popen(
        [sys.executable, "-u", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    deadline = threading.Timer(30, child.kill)  # a hung example fails, never hangs the suite
    deadline.start()
    try:
        assert child.stdout is not None
        first = child.stdout.readline()  # it waits for more after this line
        assert first.strip() == "orders 0 b'one pizza'"
    finally:
        deadline.cancel()
        child.kill()
        child.wait(15)


def test_a_named_context_carries_the_address_and_the_credentials(guarded, tmp_path: Path):
    config = {"XDG_CONFIG_HOME": str(tmp_path)}
    added = broker_command(
        "context",
        "add",
        "guarded",
        "--url",
        guarded.url,
        "--user",
        "carol",
        "--password-stdin",
        stdin="pw\n",
        env=config,
    )
    assert added.returncode == 0, added.stderr
    saved = tmp_path / "broker" / "contexts.toml"
    assert saved.stat().st_mode & 0o777 == 0o600  # it holds a password
    published = broker_command("pub", "jobs", "by context", env=config)
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("stored at jobs#")
    # A variable says more than the context.
    elsewhere = broker_command(
        "pub", "jobs", "x", "--timeout", "1", env={**config, "BROKER_URL": "tcp://127.0.0.1:1"}
    )
    assert elsewhere.returncode == 3
    missing = broker_command("--context", "nope", "pub", "jobs", "x", env=config)
    assert missing.returncode == 1 and "no context 'nope'" in missing.stderr

"""The scripts: the workloads of scripts/count_instructions.py do what they
count; broker-bench says in one line what stops it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.process import ROOT, free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "count_instructions.py"


def load_script():
    spec = importlib.util.spec_from_file_location("count_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["count_instructions"] = module
    spec.loader.exec_module(module)
    return module


def test_the_counted_workloads_move_every_message():
    script = load_script()
    extended = script.ExtendedFlow()
    extended.run()
    assert extended.acked == 1000 and extended.window.in_flight == 0
    assert extended.subscriber.session.delivered_messages == 1000
    plain = script.PlainFlow()
    plain.run()
    assert plain.subscriber.session.delivered_messages == 1000
    for name in ("decode", "acks", "window"):
        script.run_inside(name, 1)


def test_broker_bench_against_a_port_where_nothing_listens_says_so_in_one_line():
    port = free_port()  # nothing listens on it
    run = subprocess.run(
        [sys.executable, "-m", "broker.bench", "fanout", "--broker", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"broker-bench: cannot reach a broker at 127.0.0.1:{port}: connection refused"
    ]


def test_broker_bench_clients_moves_every_message_through_each_client_it_names():
    """Each workload consumes what it published (with headers, each checked
    by its consumer), on a broker the bench starts: a client that lost one
    would never finish, or fail its check."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.bench",
            "clients",
            "--client",
            "twisted-batch",
            "--client",
            "blocking",
            "--messages",
            "3000",
            "--runs",
            "1",
            "--headers",
            "unique",
            "--json",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout)
    assert (figures["messages"], sorted(figures["clients"])) == (
        3000,
        ["blocking", "twisted-batch"],
    )
    for measured in figures["clients"].values():
        assert measured["publish_rate"] > 0 and measured["consume_rate"] > 0


def test_broker_bench_refuses_a_broker_address_without_a_port():
    run = subprocess.run(
        [sys.executable, "-m", "broker.bench", "fanout", "--broker", "localhost"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "--broker is HOST:PORT, not 'localhost'" in run.stderr
    assert "Traceback" not in run.stderr


def readme_shell_blocks() -> list[list[str]]:
    """The README's ```sh blocks, as lines with continuations joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [block.replace("\\\n", " ").splitlines() for block in blocks]


def test_the_readmes_brokers_in_one_directory_have_a_pidfile_each_and_are_signalled_by_it():
    for lines in readme_shell_blocks():
        started = [line for line in lines if line.lstrip().startswith("twistd ")]
        if len(started) > 1:
            pidfiles = [re.search(r"--pidfile[= ](\S+)", line) for line in started]
            assert all(pidfiles), started
            assert len({found.group(1) for found in pidfiles if found}) == len(started)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pgrep" not in readme  # it signals every broker on the host
    assert "kill -HUP $(cat " in readme


def test_the_readme_shows_every_users_command_and_password_stdin():
    from broker.security.users_cli import users

    shown = {
        line.split("broker users ", 1)[1].split()[0]
        for lines in readme_shell_blocks()
        for line in lines
        if "broker users " in line
    }
    assert shown == {name for name, command in users.commands.items() if not command.hidden}
    assert any("--password-stdin" in line for lines in readme_shell_blocks() for line in lines)

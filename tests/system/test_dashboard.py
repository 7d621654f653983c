"""The live dashboard in a real headless Chromium (Debian's, which .ci/run
installs; marked slow: `pytest -m slow`), against a broker service in this
process under a workload: the rendered page shows the topic, its rate and a
subscriber's lag; it copes with no topics and with a thousand. A screenshot
is kept as a test artifact (in $TEST_ARTIFACTS, else the test's
temporary directory)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from broker.app.service import BrokerService
from broker.client import connect
from broker.log.positions import Position
from broker.server import BrokerSettings
from broker.wire import StartAt
from tests.conftest import HeldAnswers
from tests.devtools import DevTools
from tests.process import free_port
from tests.system.test_monitoring import users_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary (.ci/run installs it)"),
    pytest.mark.slow,  # a browser per page: CI runs these with `pytest -m slow`
]
# As the machine's notes advise: no sandbox as root, and no calls home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=4000",
]
# Driven over DevTools (tests/devtools.py): real time, no budget.
INTERACTIVE = [flag for flag in FLAGS if not flag.startswith("--virtual-time")]


async def chromium(tmp_path: Path, *arguments: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    out, err, code = await getProcessOutputAndValue(
        CHROMIUM, [*FLAGS, f"--user-data-dir={profile}", *arguments], env=dict(os.environ)
    )
    assert code == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8", errors="replace")


async def started(users: Path | None = None) -> tuple[BrokerService, int, str]:
    port, monitor = free_port(), free_port()
    service = BrokerService(
        [f"tcp:{port}:interface=127.0.0.1"],
        BrokerSettings(),
        monitor=f"tcp:{monitor}:interface=127.0.0.1",
        users_file=users,
    )
    service.privilegedStartService()
    service.startService()
    return service, port, f"http://127.0.0.1:{monitor}/"


def rows(dom: str, table: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body, f"no {table} in the page"
    return [
        [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    ]


@pytest_twisted.ensureDeferred
async def test_the_page_shows_topics_rates_and_who_falls_behind(tmp_path):
    service, port, url = await started()
    held = HeldAnswers()

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=16)
    try:
        await client.subscribe(["orders"], held, start=StartAt.BEGINNING)
        for n in range(400):
            client.publish("orders", b"order %d" % n)
        await client.publish("orders", b"last")
        await held.until(16)
        while len(service.rates.samples) < 3:  # two rates for the plot
            await deferLater(reactor, 0.05, lambda: None)
        dom = await chromium(tmp_path, "--dump-dom", url)
        topics = rows(dom, "topic-table")
        orders = next(row for row in topics if row[0] == "orders")
        assert orders[1] == "401" and float(orders[2]) > 0  # messages, rate
        readers = rows(dom, "subscriber-table")
        assert readers[0][0] == "orders" and readers[0][4] == "385"  # 401 - 16 in flight
        assert 'class="state serving"' in dom and "<polyline" in dom
        artifacts = Path(os.environ.get("TEST_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "dashboard.png"
        await chromium(tmp_path, "--window-size=1280,1000", f"--screenshot={shot}", url)
        assert shot.stat().st_size > 10_000
    finally:
        held.answer_all()
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_page_copes_with_no_topics_and_with_a_thousand(tmp_path):
    service, port, url = await started()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    try:
        empty = await chromium(tmp_path, "--dump-dom", url)
        assert rows(empty, "topic-table") == [["no topics yet"]]
        assert rows(empty, "subscriber-table") == [["no subscribers"]]
        for n in range(999):
            client.publish(f"topic-{n:04d}", b"x")
        await client.publish("topic-0999", b"x")
        crowded = await chromium(tmp_path, "--dump-dom", url)
        assert len(rows(crowded, "topic-table")) == 50
        assert "1000 topics; the 50 busiest shown" in crowded
    finally:
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_page_works_behind_the_monitors_password(tmp_path):
    service, _, url = await started(users=users_file(tmp_path))
    signed_in = url.replace("http://", "http://alice:watch-it@")
    try:
        # Without credentials the browser is asked for them (a prompt, which
        # headless Chromium shows as an empty page).
        assert "topic-table" not in await chromium(tmp_path, "--dump-dom", url)
        dom = await chromium(tmp_path, "--dump-dom", signed_in)
        # The page's own requests for the reports were let in too.
        assert 'class="state serving"' in dom
        assert rows(dom, "topic-table") == [["no topics yet"]]
    finally:
        await service.stopService()


ROW_BUTTON = """
(() => {{
  const row = [...document.querySelectorAll("#{table} tbody tr")]
    .find((tr) => tr.cells[0] && tr.cells[0].textContent === {first});
  const button = row && [...row.querySelectorAll("button")].find((b) => b.textContent === {label});
  if (!button) return false;
  button.click();
  return true;
}})()
"""


def click(table: str, first: str, label: str) -> str:
    """JavaScript that clicks `label` in the row of `table` starting with `first`."""
    return ROW_BUTTON.format(table=table, first=json.dumps(first), label=json.dumps(label))


@pytest_twisted.ensureDeferred
async def test_an_admin_purges_and_deletes_a_topic_and_closes_a_connection_from_the_page(
    tmp_path,
):
    service, port, url = await started()
    registry = service.factory.broker.registry
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    browser = DevTools()
    try:
        for n in range(3):
            await client.publish("doomed", b"m%d" % n)
        await browser.start(CHROMIUM, INTERACTIVE, tmp_path / "profile-clicks")
        page = await browser.open(url)
        # Without a users file the page may act: its buttons show.
        await browser.until(page, "document.body.classList.contains('admin')")
        await browser.until(page, click("topic-table", "doomed", "purge"))
        await until(lambda: registry.get("doomed").log.first_offset == 3)
        status = "document.getElementById('action-status').textContent"
        assert "done: POST topics/doomed/purge" in await browser.until(page, status)
        # The publisher's connection: closed from its row; the client comes back.
        (connection,) = [p.number for p in service.factory.connections]
        await browser.until(page, click("connection-table", str(connection), "close"))
        await until(lambda: connection not in [p.number for p in service.factory.connections])
        await browser.until(page, click("topic-table", "doomed", "delete"))
        await until(lambda: "doomed" not in registry)
        assert await client.publish("doomed", b"again") == 0  # a new topic, from 0
    finally:
        await browser.stop()
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_monitor_user_sees_no_actions_and_consumers_with_their_lag(tmp_path):
    service, port, url = await started(users=users_file(tmp_path))
    signed_in = url.replace("http://", "http://alice:watch-it@")
    client = connect(reactor, f"127.0.0.1:{port}", user="bob", password="publish-it")
    broker = service.factory.broker
    try:
        for n in range(5):
            await client.publish("jobs", b"j%d" % n)
        broker.groups.positions.put("jobs", "bob:billing", Position(2, delivered=2))
        dom = await chromium(tmp_path, "--dump-dom", signed_in)
        assert re.search(r'<body(?![^>]*class="[^"]*admin)', dom)  # no admin class: no buttons
        consumers = rows(dom, "consumer-table")
        assert consumers[0][:6] == ["jobs", "bob:billing", "yes", "0", "2", "3"]
        cards = dict(
            re.findall(
                r'<div class="label">([^<]+)</div><div class="value" id="[^"]+">([^<]*)<', dom
            )
        )
        assert set(cards) >= {"acks / s", "nacks / s", "dead letters / s", "failed sign-ins / s"}
    finally:
        await client.close()
        await service.stopService()


async def until(condition, timeout: float = 15) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "the broker did not change in time"
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05

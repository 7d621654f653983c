"""The monitoring site of a broker service in this process, over loopback:
exact Prometheus counts after a known workload, lag in /connz and /topicz,
pagination and bad queries, /healthz through a graceful drain."""

from __future__ import annotations

import json
import os
import signal

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, readBody

from broker.client import Message, connect
from broker.delivery import DeliverySettings
from broker.server import BrokerSettings
from broker.service import BrokerService
from broker.wire import StartAt
from tests.conftest import HeldAnswers, Inbox
from tests.process import free_port


async def get(port: int, path: str) -> tuple[int, bytes]:
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    return response.code, await readBody(response)


async def get_json(port: int, path: str) -> dict:
    code, body = await get(port, path)
    assert code == 200, body
    return json.loads(body)


async def started(**settings) -> tuple[BrokerService, int, int]:
    port, monitor = free_port(), free_port()
    service = BrokerService(
        [f"tcp:{port}:interface=127.0.0.1"],
        BrokerSettings(**settings),
        monitor=f"tcp:{monitor}:interface=127.0.0.1",
    )
    service.privilegedStartService()
    service.startService()
    return service, port, monitor


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest_twisted.ensureDeferred
async def test_metrics_count_a_known_workload_exactly():
    service, port, monitor = await started(
        delivery=DeliverySettings(ack_delay=0.05, max_deliveries=2)
    )
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    try:
        refused_once: set[int] = set()

        def nack_the_fourth_once(message: Message) -> bool:
            if message.offset == 3 and 3 not in refused_once:
                refused_once.add(3)
                return False
            return True

        orders = Inbox(answer=nack_the_fourth_once)
        poison = Inbox(answer=False)
        await client.subscribe(["orders"], orders, start=StartAt.BEGINNING)
        await client.subscribe(["poison"], poison, start=StartAt.BEGINNING)
        for n in range(10):
            await client.publish("orders", b"order-%d" % n)
        await client.publish("poison", b"never acked")
        await orders.wait(11)
        await poison.wait(2)
        while service.factory.stats.dead_letters < 1:
            await deferLater(reactor, 0.01, lambda: None)
        code, body = await get(monitor, "/metrics")
        assert code == 200
        found = samples(body)
        assert found[("broker_published_messages_total", ())] == 11
        assert found[("broker_published_bytes_total", ())] == 10 * 7 + len(b"never acked")
        assert found[("broker_delivered_messages_total", ())] == 13  # 10 + 1 again + 2 poison
        assert found[("broker_acks_total", ())] == 10
        assert found[("broker_nacks_total", ())] == 3
        assert found[("broker_redeliveries_total", ())] == 2
        assert found[("broker_dead_letters_total", ())] == 1
        assert found[("broker_topic_messages", (("topic", "orders"),))] == 10
        assert found[("broker_topic_next_offset", (("topic", "poison.dead-letter"),))] == 1
        assert found[("broker_connections", (("role", "subscriber"),))] == 1
        assert found[("broker_subscriptions", ())] == 2
        assert found[("broker_delivery_latency_seconds_count", ())] >= 1
        assert ("process_resident_memory_bytes", ()) in found
    finally:
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_lag_shows_in_topicz_and_connz_and_shrinks_when_the_subscriber_acks():
    service, port, monitor = await started()
    held = HeldAnswers()

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=4)
    try:
        await client.subscribe(["jobs"], held, start=StartAt.BEGINNING)
        for _ in range(20):
            await client.publish("jobs", b"job")
        await held.until(4)
        topics = await get_json(monitor, "/topicz?topic=jobs")
        (jobs,) = topics["items"]
        (reader,) = jobs["subscribers"]
        assert (jobs["messages"], reader["position"], reader["lag_messages"]) == (20, 4, 16)
        assert reader["lag_seconds"] >= 0
        connections = await get_json(monitor, "/connz?sort=in_flight")
        assert connections["items"][0]["in_flight"] == 4
        assert connections["items"][0]["role"] == "subscriber"
        held.answer_all()
        for _ in range(200):
            (jobs,) = (await get_json(monitor, "/topicz?topic=jobs"))["items"]
            if jobs["subscribers"][0]["lag_messages"] == 0:
                break
            held.answer_all()
            await deferLater(reactor, 0.01, lambda: None)
        assert jobs["subscribers"][0]["lag_messages"] == 0
    finally:
        held.answer_all()
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_pages_sort_and_refuse_bad_queries():
    service, port, monitor = await started()
    client = connect(reactor, f"127.0.0.1:{port}", extensions=True)
    try:
        for name in ["c", "a", "b"]:
            await client.publish(name, b"x" * ord(name))
        first = await get_json(monitor, "/topicz?sort=name&limit=2")
        assert [t["name"] for t in first["items"]] == ["a", "b"] and first["total"] == 3
        rest = await get_json(monitor, "/topicz?sort=name&limit=2&offset=2")
        assert [t["name"] for t in rest["items"]] == ["c"]
        biggest = await get_json(monitor, "/topicz?sort=bytes&order=desc&limit=1")
        assert biggest["items"][0]["name"] == "c"
        for query in ["limit=0", "limit=1001", "offset=-1", "limit=x", "sort=size", "order=up"]:
            code, body = await get(monitor, f"/topicz?{query}")
            assert code == 400 and json.loads(body)["error"], query
        code, body = await get(monitor, "/connz?sort=nope")
        assert code == 400 and b"sort must be one of" in body
        varz = await get_json(monitor, "/varz?history=1")
        assert varz["totals"]["published_messages"] == 3 and varz["state"] == "serving"
        assert isinstance(varz["history"], list)
    finally:
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_drain_lets_deliveries_in_flight_be_acked_while_healthz_says_503(log_lines):
    service, port, monitor = await started(drain_timeout=5.0)
    held = HeldAnswers()

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=8)
    assert (await get(monitor, "/healthz"))[0] == 200
    await client.subscribe(["work"], held, start=StartAt.BEGINNING)
    for n in range(12):
        await client.publish("work", b"w%d" % n)
    await held.until(8)
    stopping = service.stopService()
    code, body = await get(monitor, "/healthz")
    assert (code, json.loads(body)) == (503, {"status": "draining"})
    held.answer_all()
    await stopping
    assert len(held.messages) == 8  # nothing new was sent while draining
    assert service.factory.stats.acks == 8
    assert log_lines.matching("0 delivery(ies) not acked")
    assert service.state == "stopped"
    await client.close()


def test_the_dashboard_ships_with_the_package():
    from broker.monitoring.site import DASHBOARD

    names = {path.name for path in DASHBOARD.iterdir()}
    assert {"index.html", "dashboard.js", "dashboard.css"} <= names
    page = (DASHBOARD / "index.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # nothing from elsewhere


@pytest.fixture(autouse=True)
def _no_failures(logged_failures):
    yield
    logged_failures.assert_none()


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_cuts_the_drain_short(log_lines):
    service, port, _ = await started(drain_timeout=60.0)
    held = HeldAnswers()

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=4)
    await client.subscribe(["work"], held, start=StartAt.BEGINNING)
    for n in range(4):
        await client.publish("work", b"w%d" % n)
    await held.until(4)
    began = reactor.seconds()
    stopping = service.stopService()  # catches the next SIGTERM at once
    os.kill(os.getpid(), signal.SIGTERM)
    await stopping
    assert reactor.seconds() - began < 60  # not the drain timeout
    assert log_lines.matching("a second SIGTERM: stopping at once")
    assert log_lines.matching("4 delivery(ies) not acked")
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    held.answer_all()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_subscription_falling_far_behind_is_logged_once(log_lines):
    service, port, _ = await started(slow_consumer_lag=10)
    held = HeldAnswers()

    client = connect(reactor, f"127.0.0.1:{port}", extensions=True, prefetch=2)
    try:
        await client.subscribe(["far"], held, start=StartAt.BEGINNING)
        for _ in range(20):
            await client.publish("far", b"x")
        service.check_lag()
        service.check_lag()
        assert len(log_lines.matching("slow consumer: 18 messages behind on 'far'")) == 1
    finally:
        held.answer_all()
        await client.close()
        await service.stopService()

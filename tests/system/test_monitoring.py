"""The monitoring site of a broker service in this process, over loopback:
exact Prometheus counts after a known workload, lag in /connz and /topicz,
pagination and bad queries, /healthz through a graceful drain; who may read
it (users with the monitor right, by password or token; only the Host names
it serves), and idle and slow clients cut off."""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from broker.app.service import BrokerService
from broker.client import Message, connect
from broker.core.delivery import DeliverySettings
from broker.monitoring import site
from broker.security.users import UsersFileError, hash_secret, hash_token, load_users
from broker.server import BrokerSettings
from broker.wire import StartAt
from tests.conftest import HeldAnswers, Inbox
from tests.process import free_port, spawn_broker
from tests.raw import connect_raw


class _Body(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done, self.parts = done, []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response: IResponse) -> Deferred[bytes]:
    """A response's whole body (readBody without its deprecation warning for
    a transport that cannot abort, which the Agent's is)."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return done


async def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    response = await get_response(port, path, headers)
    return response.code, await read_body(response)


async def get_response(port: int, path: str, headers: dict[str, str] | None = None) -> IResponse:
    sent = Headers({name: [value] for name, value in (headers or {}).items()})
    return await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode(), sent)


async def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> dict:
    code, body = await get(port, path, headers)
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
        for _ in range(2):  # stored once
            await client.publish("once", b"1", headers={"Msg-Id": "the-one"})
        await orders.wait(11)
        await poison.wait(2)
        while service.factory.broker.stats.dead_letters < 1:
            await deferLater(reactor, 0.01, lambda: None)
        code, body = await get(monitor, "/metrics")
        assert code == 200
        found = samples(body)
        assert found[("broker_published_messages_total", ())] == 12
        assert found[("broker_published_bytes_total", ())] == 10 * 7 + len(b"never acked") + 1
        assert found[("broker_duplicate_publishes_total", ())] == 1
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
    assert service.factory.broker.stats.acks == 8
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


FAST = {"n": 2**4, "r": 1, "p": 1}  # scrypt made cheap for tests
SCRAPER_TOKEN = "t0k3n-of-the-prometheus-scraper"


def users_file(tmp_path: Path) -> Path:
    """alice and the scraper may read the monitor; bob may only publish."""
    path = tmp_path / "users.toml"
    path.write_text(
        f"""
[users.alice]
password = "{hash_secret("watch-it", **FAST)}"
monitor = true

[users.bob]
password = "{hash_secret("publish-it", **FAST)}"
publish = [">"]

[users.scraper]
token = "{hash_token(SCRAPER_TOKEN)}"
monitor = true
"""
    )
    return path


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


async def with_users(tmp_path: Path, hosts: tuple[str, ...] = ()) -> tuple[BrokerService, int]:
    monitor = free_port()
    service = BrokerService(
        [f"tcp:{free_port()}:interface=127.0.0.1"],
        BrokerSettings(),
        users_file=users_file(tmp_path),
        monitor=f"tcp:{monitor}:interface=127.0.0.1",
        **({"monitor_hosts": hosts} if hosts else {}),
    )
    service.privilegedStartService()
    service.startService()
    return service, monitor


@pytest_twisted.ensureDeferred
async def test_with_a_users_file_only_users_with_the_monitor_right_read_it(tmp_path):
    service, monitor = await with_users(tmp_path)
    try:
        for path in ["/", "/varz", "/connz", "/topicz", "/metrics", "/dashboard.js", "/nope"]:
            response = await get_response(monitor, path)
            assert response.code == 401, path
            assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Basic ")
            body = await read_body(response)
            assert b"broker" not in body and b"alice" not in body
        # /healthz is open, and says the state alone.
        assert await get(monitor, "/healthz") == (200, b'{"status": "serving"}')
        alice = basic("alice", "watch-it")
        assert (await get_json(monitor, "/varz", alice))["state"] == "serving"
        assert (await get(monitor, "/", alice))[0] == 200
        assert (await get(monitor, "/dashboard.js", alice))[0] == 200
        assert (await get(monitor, "/nope", alice))[0] == 404
        scraper = {"Authorization": f"Bearer {SCRAPER_TOKEN}"}
        code, metrics = await get(monitor, "/metrics", scraper)
        assert code == 200 and b"broker_published_messages_total" in metrics
        code, body = await get(monitor, "/connz", basic("bob", "publish-it"))
        assert (code, body) == (403, b"user bob may not read the monitor\n")
        for refused in [
            basic("alice", "wrong"),
            basic("nobody", "watch-it"),
            {"Authorization": "Bearer not-the-token"},
            {"Authorization": "Basic %%%"},
        ]:
            assert (await get(monitor, "/varz", refused))[0] == 401, refused
        # The monitor's failures slow down the next guesses from this address,
        # as sign-ins on --port do.
        assert service.factory.broker.authenticator.throttle.delay("127.0.0.1") > 0
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_monitor_answers_only_the_host_names_it_serves(tmp_path):
    service, _, monitor = await started()
    try:
        for host in ["localhost", f"localhost:{monitor}", "127.0.0.1", f"[::1]:{monitor}"]:
            assert (await get(monitor, "/varz", {"Host": host}))[0] == 200, host
        for host in ["evil.example", f"evil.example:{monitor}", "localhost.evil.example", "::1"]:
            code, body = await get(monitor, "/connz", {"Host": host})
            assert code == 421 and b"Host" in body and len(body) < 100, host
    finally:
        await service.stopService()
    service, monitor = await with_users(tmp_path, hosts=("broker.example",))
    try:
        alice = basic("alice", "watch-it")
        named = await get(monitor, "/varz", {**alice, "Host": f"Broker.Example:{monitor}"})
        assert named[0] == 200
        assert (await get(monitor, "/varz", {**alice, "Host": "evil.example"}))[0] == 421
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_bare_monitor_port_listens_on_loopback_and_beyond_it_is_warned_of(log_lines):
    monitor = free_port()
    service = BrokerService(
        [f"tcp:{free_port()}:interface=127.0.0.1"], BrokerSettings(), monitor=str(monitor)
    )
    service.privilegedStartService()
    service.startService()
    try:
        listening = await service._monitor._waitingForPort
        assert listening.getHost().host == "127.0.0.1"
        assert (await get(monitor, "/healthz"))[0] == 200
        assert not log_lines.matching("--monitor")
    finally:
        await service.stopService()
    everywhere = BrokerService(
        [f"tcp:{free_port()}:interface=127.0.0.1"], BrokerSettings(), monitor=f"tcp:{monitor}"
    )
    everywhere.privilegedStartService()
    everywhere.startService()
    await everywhere.stopService()
    assert log_lines.matching(f"anyone who can reach --monitor tcp:{monitor} may read")


@pytest_twisted.ensureDeferred
async def test_idle_and_slow_clients_are_cut_off_within_the_request_deadline(monkeypatch):
    monkeypatch.setattr(site, "REQUEST_DEADLINE", 0.5, raising=False)
    service, _, monitor = await started()
    dripping = []
    try:
        silent = [await connect_raw(monitor) for _ in range(150)]
        slow = [await connect_raw(monitor) for _ in range(150)]
        for number, connection in enumerate(slow):
            request = b"GET /varz HTTP/1.1\r\nHost: localhost\r\n"
            if number % 10 == 0:  # behind a whole request, answered first
                request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" + request
            connection.send(request)

        def drip() -> None:  # a header line every 0.1 s: never idle, never done
            for connection in slow:
                if connection.transport.connected:
                    connection.send(b"X-Slow: 1\r\n")

        dripper = LoopingCall(drip)
        dripper.clock = reactor
        dripping.append(dripper)
        dripper.start(0.1)
        began = reactor.seconds()
        closed = gatherResults([connection.closed for connection in silent + slow])
        await closed.addTimeout(15, reactor)
        assert reactor.seconds() - began < 10
        # A whole request is still answered.
        assert (await get_json(monitor, "/varz"))["state"] == "serving"
    finally:
        for dripper in dripping:
            dripper.stop()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_twistd_asks_for_credentials_on_a_bare_monitor_port(tmp_path):
    monitor = free_port()
    broker = spawn_broker(
        tmp_path,
        *("--port", f"tcp:{free_port()}:interface=127.0.0.1"),
        *("--users", str(users_file(tmp_path))),
        *("--monitor", str(monitor), "--monitor-host", "broker.example"),
    )
    try:
        await broker.line("Site starting on")
        assert f"Site starting on {monitor}" in broker.output
        assert (await get(monitor, "/varz"))[0] == 401
        alice = basic("alice", "watch-it")
        assert (await get_json(monitor, "/varz", {**alice, "Host": "broker.example"}))["pid"]
        assert (await get(monitor, "/varz", {**alice, "Host": "evil.example"}))[0] == 421
        assert (await get(monitor, "/healthz"))[0] == 200
    finally:
        broker.signal("TERM")
        await broker.ended
    assert "may read its user names" not in broker.output


def test_the_monitor_right_is_true_or_false(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text('[users.alice]\nmonitor = "yes"\n')
    with pytest.raises(UsersFileError, match=r"\[users.alice\]: monitor must be true or false"):
        load_users(path)


@pytest_twisted.ensureDeferred
async def test_anonymous_reads_the_monitor_only_if_the_users_file_says_so(tmp_path):
    users = users_file(tmp_path)
    users.write_text(users.read_text() + "\n[users.anonymous]\nmonitor = true\n")
    monitor = free_port()
    service = BrokerService(
        [f"tcp:{free_port()}:interface=127.0.0.1"],
        BrokerSettings(),
        users_file=users,
        monitor=f"tcp:{monitor}:interface=127.0.0.1",
    )
    service.privilegedStartService()
    service.startService()
    try:
        assert (await get_json(monitor, "/varz"))["state"] == "serving"
        assert (await get(monitor, "/varz", basic("alice", "wrong")))[0] == 401
    finally:
        await service.stopService()


def test_monitor_hosts_are_given_one_by_one_or_as_a_list():
    from broker.app.tap import Options

    options = Options()
    options.environment = {}
    options.parseOptions(
        ["--monitor", "8222", "--monitor-host", "a.example, b.example", "--monitor-host", "c"]
    )
    assert options["monitor-hosts"] == ["a.example", "b.example", "c"]

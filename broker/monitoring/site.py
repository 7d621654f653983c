"""The monitoring web site (`--monitor`): /metrics for Prometheus, /varz,
/connz, /topicz and /consumerz as JSON, the admin API at /admin/,
/healthz for orchestrators, and the live dashboard at /, every asset
shipped in the package. Who may read it is
decided in broker.monitoring.access; each request must arrive whole
within REQUEST_DEADLINE seconds, so idle and slow clients cannot hold
connections."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from broker.monitoring.access import Guarded, MonitorAccess
from broker.monitoring.admin import AdminAPI
from broker.monitoring.reports import BadQuery, connz, topicz, varz

if TYPE_CHECKING:
    from broker.monitoring.view import MonitoredBroker

DASHBOARD = Path(__file__).with_name("dashboard")
ASSET_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
ASSETS = frozenset(path.name for path in DASHBOARD.iterdir() if path.suffix in ASSET_TYPES)
# Seconds a client has to send a whole request (line, headers and body),
# counted from the connection's start or from the previous response.
REQUEST_DEADLINE = 10.0


def _query(request: Request) -> dict[str, str]:
    args = request.args or {}
    return {
        key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
        for key, values in args.items()
        if values
    }


class JSONReport(Resource):
    """A report as JSON; a bad query is answered 400 with the reason."""

    isLeaf = True

    def __init__(self, make: Callable[[dict[str, str]], dict[str, Any]]) -> None:
        super().__init__()
        self._make = make

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            report = self._make(_query(request))
        except BadQuery as error:
            request.setResponseCode(400)
            report = {"error": str(error)}
        return json.dumps(report, separators=(",", ":")).encode("utf-8")


class Health(Resource):
    """200 while the broker serves; 503 while it starts or drains."""

    isLeaf = True

    def __init__(self, service: MonitoredBroker) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        state = self._service.state
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if state != "serving":
            request.setResponseCode(503)
        return json.dumps({"status": state}).encode("utf-8")


class Asset(Resource):
    """One file of the dashboard, read from the package when asked for."""

    isLeaf = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", ASSET_TYPES[self._path.suffix])
        request.setHeader(b"cache-control", b"no-cache")
        return self._path.read_bytes()


class Dashboard(Resource):
    """The dashboard's files at / (index.html), beside the reports put as
    its children; any other name is not found."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        name = path.decode("utf-8", "replace") or "index.html"
        if name in ASSETS:
            return Asset(DASHBOARD / name)
        return pages.notFound()


class MonitorChannel(http.HTTPChannel):
    """An HTTPChannel that closes a connection whose next request has not
    arrived whole within REQUEST_DEADLINE seconds (of its start, or of the
    previous response): idle clients and ones that send headers slowly
    (slowloris) hold no connection for longer."""

    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._await_request()

    def _await_request(self) -> None:
        self._deadline = self.callLater(REQUEST_DEADLINE, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        cast(ITCPTransport, self.transport).abortConnection()

    def _stop_waiting(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allContentReceived(self) -> None:
        self._stop_waiting()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        # Unless a whole next request was buffered and is being answered:
        # after the last response, the next request (or the close) is awaited.
        if self._deadline is None and not self._handlingRequest:
            self._await_request()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_waiting()
        super().connectionLost(reason)


class QuietSite(Site):
    """A Site that writes no access log (the dashboard asks every second)
    and gives each request REQUEST_DEADLINE seconds to arrive."""

    protocol = MonitorChannel  # type: ignore[assignment]

    def log(self, request: http.Request) -> None:
        pass


def monitor_site(
    service: MonitoredBroker, hosts: Iterable[str] = (), interface: str | None = None
) -> Site:
    """The site, answering to the loopback names, `interface` (unless it is
    every interface) and `hosts`, and asking for credentials if the broker
    has a users file."""
    factory = service.factory
    root = Dashboard()
    root.putChild(b"metrics", MetricsResource(factory.broker.stats.registry))
    root.putChild(b"varz", JSONReport(lambda query: varz(service, "history" in query)))
    root.putChild(b"connz", JSONReport(lambda query: connz(factory, query)))
    root.putChild(b"topicz", JSONReport(lambda query: topicz(factory, query)))
    root.putChild(b"healthz", Health(service))
    admin = AdminAPI(factory)
    root.putChild(b"admin", admin)
    root.putChild(b"consumerz", JSONReport(lambda query: {"consumers": admin.consumers()}))
    served = [*hosts]
    if interface not in (None, "", "0.0.0.0", "::"):
        served.append(str(interface))
    access = MonitorAccess(served, factory.broker.authenticator)
    return QuietSite(Guarded(root, access), timeout=REQUEST_DEADLINE)

"""The monitoring web site (`--monitor`): /metrics for Prometheus, /varz,
/connz and /topicz as JSON, /healthz for orchestrators, and the live
dashboard at /, every asset shipped in the package."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.twisted import MetricsResource
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from broker.monitoring.reports import BadQuery, connz, topicz, varz

if TYPE_CHECKING:
    from broker.service import BrokerService

DASHBOARD = Path(__file__).with_name("dashboard")


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

    def __init__(self, service: BrokerService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        state = self._service.state
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if state != "serving":
            request.setResponseCode(503)
        return json.dumps({"status": state}).encode("utf-8")


class QuietSite(Site):
    """A Site that writes no access log: the dashboard asks every second."""

    def log(self, request: http.Request) -> None:
        pass


def monitor_site(service: BrokerService) -> Site:
    factory = service.factory
    root = File(str(DASHBOARD), defaultType="text/plain")
    root.indexNames = ["index.html"]
    root.putChild(b"metrics", MetricsResource(factory.stats.registry))
    root.putChild(b"varz", JSONReport(lambda query: varz(service, "history" in query)))
    root.putChild(b"connz", JSONReport(lambda query: connz(factory, query)))
    root.putChild(b"topicz", JSONReport(lambda query: topicz(factory, query)))
    root.putChild(b"healthz", Health(service))
    return QuietSite(root)

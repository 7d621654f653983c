"""The admin API: /admin/ on the monitor port, JSON in and out, for a user
with the `admin` right (broker.monitoring.access decides who). Documented in
docs/admin.md; each action is logged with who asked (broker.core.admin).

    GET    /admin/topics                       every topic
    PUT    /admin/topics/NAME                  create it (201; 200 if it was there)
    GET    /admin/topics/NAME                  offsets, size, readers, groups, durables
    GET    /admin/topics/NAME/messages?from=OFFSET&limit=N&max_bytes=B
    POST   /admin/topics/NAME/purge            drop every message (offsets go on)
    POST   /admin/topics/NAME/compaction       {"compacted": true|false}: the latest
                                               message of each key kept (until restart)
    DELETE /admin/topics/NAME                  remove it (409 while it is read)
    GET    /admin/consumers                    consumer groups and durable consumers
    POST   /admin/consumers/TOPIC/NAME/reset   {"offset": N} or {"time": T}: a durable
                                               consumer's place
    DELETE /admin/consumers/TOPIC/NAME         forget a durable consumer
    GET    /admin/connections                  every connection
    DELETE /admin/connections/ID               close one

NAME and TOPIC are percent-encoded path segments (`/` in a name as %2F).
Requests that change anything must say `Content-Type: application/json`:
a web page elsewhere cannot send that to the monitor without the
browser asking first, which the monitor never allows.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from broker.core.admin import MAX_PEEK_BYTES, Administration, AdminRefused
from broker.monitoring.access import who_asked
from broker.monitoring.reports import connection_report

if TYPE_CHECKING:
    from broker.server.factory import BrokerFactory

log = Logger()

# Bytes a request body may have (a reset's {"offset": N} needs a few).
MAX_BODY = 4096


class AdminAPI(Resource):
    """Every /admin/ request: routed by method and path, answered as JSON."""

    isLeaf = True

    def __init__(self, factory: BrokerFactory) -> None:
        super().__init__()
        self._factory = factory
        self._admin = Administration(factory.broker)

    def render(self, request: Request) -> Any:
        method = (request.method or b"GET").decode("ascii", "replace")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            path = _segments(request)
            if method != "GET":
                _require_json(request)
            answer = self._route(method, path, request)
        except AdminRefused as refused:
            return _error(request, refused.status, refused.text)
        if isinstance(answer, Deferred):
            answer.addCallbacks(
                lambda value: _finish(request, 200, value),
                lambda failure: _failed(request, failure),
            )
            return NOT_DONE_YET
        status, value = answer
        request.setResponseCode(status)
        return _json(value)

    def consumers(self) -> list[dict[str, Any]]:
        """Every consumer group and durable consumer (also /consumerz, which
        the monitor right reads)."""
        return self._admin.consumers_here()

    def _route(self, method: str, path: list[str], request: Request) -> Any:
        admin = self._admin
        who = who_asked(request)
        match method, path:
            case "GET", ["topics"]:
                return admin.topics().addCallback(lambda topics: {"topics": topics})
            case "GET", ["topics", name]:
                return admin.info(name)
            case "PUT", ["topics", name]:
                summary, made = admin.create(name, who)
                return (201 if made else 200), summary
            case "DELETE", ["topics", name]:
                return admin.delete(name, who).addCallback(lambda _: {"deleted": name})
            case "GET", ["topics", name, "messages"]:
                query = _query(request)
                return admin.peek(
                    name,
                    _integer(query, "from", None),
                    _integer(query, "limit", 10),
                    _integer(query, "max_bytes", MAX_PEEK_BYTES),
                )
            case "POST", ["topics", name, "purge"]:
                return admin.purge(name, who).addCallback(
                    lambda dropped: {"purged": name, "messages": dropped}
                )
            case "POST", ["topics", name, "compaction"]:
                compacted = _body(request).get("compacted")
                if not isinstance(compacted, bool):
                    raise AdminRefused(400, 'give {"compacted": true} or {"compacted": false}')
                return 200, admin.set_compaction(name, compacted, who)
            case "GET", ["consumers"]:
                return admin.consumers().addCallback(lambda rows: {"consumers": rows})
            case "POST", ["consumers", topic, name, "reset"]:
                offset, when = _reset_target(_body(request))
                if when is None:
                    return admin.reset_durable(topic, name, offset, who)
                return admin.offset_at(topic, when).addCallback(
                    lambda at: admin.reset_durable(topic, name, at, who)
                )
            case "DELETE", ["consumers", topic, name]:
                return admin.delete_durable(topic, name, who).addCallback(
                    lambda _: {"deleted": name, "topic": topic}
                )
            case "GET", ["connections"]:
                now = self._factory.broker.clock.seconds()
                connections = sorted(self._factory.broker.connections, key=lambda p: p.number)
                return 200, {"connections": [connection_report(p, now) for p in connections]}
            case "DELETE", ["connections", number]:
                return 200, self._close_connection(number, who)
        raise AdminRefused(404, f"no {method} /admin/{'/'.join(path)} (see docs/admin.md)")

    def _close_connection(self, number: str, who: str) -> dict[str, Any]:
        for protocol in self._factory.broker.connections:
            if str(protocol.number) == number:
                log.warn(
                    "{who} closed connection {number} ({peer})",
                    who=who,
                    number=number,
                    peer=protocol.peer,
                )
                protocol.close()
                return {"closed": protocol.number, "peer": protocol.peer}
        raise AdminRefused(404, f"no connection {number}")


def _segments(request: Request) -> list[str]:
    """The path after /admin/, each segment percent-decoded."""
    raw = (request.path or b"").split(b"?", 1)[0]
    parts = raw.split(b"/")[2:]  # b"", b"admin", ...
    if parts and parts[-1] == b"":
        parts.pop()
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in parts]
    except UnicodeDecodeError:
        raise AdminRefused(400, "a path segment is not UTF-8") from None


def _require_json(request: Request) -> None:
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        raise AdminRefused(
            415, "a request that changes something says Content-Type: application/json"
        )


def _body(request: Request) -> dict[str, Any]:
    content = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(content) > MAX_BODY:
        raise AdminRefused(413, f"a body of at most {MAX_BODY} bytes")
    try:
        body = json.loads(content or b"{}")
    except ValueError:
        raise AdminRefused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise AdminRefused(400, "the body is a JSON object")
    return body


def _reset_target(body: dict[str, Any]) -> tuple[int, float | None]:
    """A reset's {"offset": N} or {"time": T} (seconds since the epoch, or
    ISO 8601; UTC unless it says): (N, None) or (0, T)."""
    offset, when = body.get("offset"), body.get("time")
    if (offset is None) == (when is None):
        raise AdminRefused(400, 'give {"offset": N} or {"time": T}')
    if offset is not None:
        if type(offset) is not int or offset < 0:
            raise AdminRefused(400, "offset must be an integer, 0 or more")
        return offset, None
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return 0, float(when)
    if isinstance(when, str):
        try:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return 0, moment.timestamp()
    raise AdminRefused(400, "time must be seconds since the epoch or ISO 8601")


def _query(request: Request) -> dict[str, str]:
    args = request.args or {}
    return {
        key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
        for key, values in args.items()
        if values
    }


def _integer(query: dict[str, str], name: str, default: int | None) -> Any:
    value = query.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise AdminRefused(400, f"{name} must be an integer, 0 or more")
    return int(value)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _error(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    return _json({"error": text})


def _finish(request: Request, status: int, value: Any) -> None:
    if request.finished or request._disconnected:
        return
    request.setResponseCode(status)
    request.write(_json(value))
    request.finish()


def _failed(request: Request, failure: Failure) -> None:
    if request.finished or request._disconnected:
        return
    if failure.check(AdminRefused):
        refused = failure.value
        assert isinstance(refused, AdminRefused)
        request.write(_error(request, refused.status, refused.text))
        request.finish()
        return
    request.processingFailed(failure)  # logged, and answered 500

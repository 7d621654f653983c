"""A headless Chromium driven over the DevTools protocol, for tests that
click: the browser started with a debugging port, one WebSocket to it
(Autobahn's Twisted client), calls answered by id, events to handlers.
Only what the dashboard's tests need: open a page, evaluate JavaScript,
answer its dialogs."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class _Browser(ProcessProtocol):
    def __init__(self) -> None:
        self.output = ""
        self.address: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        found = LISTENING.search(self.output)
        if found and not self.address.called:
            self.address.callback(found.group(1))

    outReceived = errReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.address.called:
            self.address.errback(AssertionError(f"chromium ended first:\n{self.output[-2000:]}"))
        self.ended.callback(None)


class _Socket(WebSocketClientProtocol):
    owner: DevTools

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.owner._received(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.owner._closed()


class DevTools:
    """One browser; `call` sends a DevTools command (to a page's session,
    if given) and fires with its result."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, Deferred[dict[str, Any]]] = {}
        self._handlers: dict[str, Callable[[dict[str, Any], str | None], None]] = {}
        self._browser = _Browser()
        self._socket: WebSocketClientProtocol | None = None

    async def start(self, chromium: str, flags: list[str], profile: Path) -> DevTools:
        arguments = [chromium, *flags, "--remote-debugging-port=0", f"--user-data-dir={profile}"]
        reactor.spawnProcess(
            self._browser, chromium, [*arguments, "about:blank"], env=dict(os.environ)
        )
        address = await self._browser.address
        factory = WebSocketClientFactory(address)
        factory.protocol = _Socket
        factory.owner = self
        factory.opened = Deferred()
        connectWS(factory)
        self._socket = await factory.opened
        return self

    def on(self, event: str, handler: Callable[[dict[str, Any], str | None], None]) -> None:
        self._handlers[event] = handler

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Deferred[dict[str, Any]]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answered: Deferred[dict[str, Any]] = Deferred()
        self._waiting[number] = answered
        assert self._socket is not None
        self._socket.sendMessage(json.dumps(message).encode())
        return answered

    def _received(self, message: dict[str, Any]) -> None:
        if "id" in message:
            answered = self._waiting.pop(message["id"], None)
            if answered is None:
                return
            if "error" in message:
                answered.errback(AssertionError(f"DevTools said: {message['error']}"))
            else:
                answered.callback(message.get("result", {}))
            return
        handler = self._handlers.get(message.get("method", ""))
        if handler is not None:
            handler(message.get("params", {}), message.get("sessionId"))

    def _closed(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for answered in waiting.values():
            answered.errback(AssertionError("the browser went away"))

    async def open(self, url: str) -> str:
        """A new page at `url`, loaded, its dialogs accepted; its session id.
        Waiting for the load means that what a test evaluates next finds
        the document's body (a navigation answers when it commits)."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        self.on("Page.javascriptDialogOpening", self._accept)
        await self.call("Page.enable", session=session)
        navigated = await self.call("Page.navigate", {"url": url}, session=session)
        if "errorText" in navigated:
            raise AssertionError(f"{url} did not load: {navigated['errorText']}")
        await self.until(
            session,
            "location.href !== 'about:blank' && document.readyState === 'complete'",
        )
        return session

    def _accept(self, params: dict[str, Any], session: str | None) -> None:
        answer: dict[str, Any] = {"accept": True}
        if params.get("type") == "prompt":
            answer["promptText"] = params.get("defaultPrompt", "")
        self.call("Page.handleJavaScriptDialog", answer, session=session)

    async def evaluate(self, session: str, expression: str) -> Any:
        """The value of `expression` in the page (awaited if a promise)."""
        answer = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"the page threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def until(self, session: str, expression: str, timeout: float = 15) -> Any:
        """Evaluate `expression` until it is truthy; its value."""
        waited = 0.0
        while True:
            value = await self.evaluate(session, expression)
            if value:
                return value
            if waited >= timeout:
                raise AssertionError(f"{expression!r} stayed falsy for {timeout} s")
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05

    async def stop(self) -> None:
        if self._socket is not None:
            self._socket.sendClose()
        self._browser.transport.signalProcess("KILL")
        await self._browser.ended

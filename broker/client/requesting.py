"""Request and reply for the Twisted client: a request is published with
Reply-To (the client's inbox) and a Correlation-Id, and answered by the
first reply that names it; a responder is a subscription whose handler's
result is published to each request's inbox. The bookkeeping is sans-I/O
(broker.sansio.requests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.sansio.messages import Message, check_publish
from broker.sansio.requests import (
    DEFAULT_RESPONDERS,
    Reply,
    Requests,
    RequestTimedOut,
    reply_to_request,
)
from broker.wire import StartAt
from broker.wire.headers import HeaderPairs

log = Logger()


class BrokerClient(Protocol):
    """What request and reply need of the client (broker.client's BrokerClient)."""

    def publish(
        self, topic: str, payload: bytes, headers: HeaderPairs | None = None
    ) -> Deferred[int | None]: ...

    def subscribe(
        self, topics: Iterable[str], handler: Any, start: StartAt = StartAt.CURRENT
    ) -> Deferred[None]: ...


class Requester:
    """One client's requests: its inbox, subscribed to at the first request."""

    def __init__(self, client: BrokerClient, clock: Any) -> None:
        self._client = client
        self._clock = clock
        self._requests: Requests[Deferred[Message]] = Requests()
        self._inbox: Deferred[None] | None = None

    def request(
        self, topic: str, data: bytes, headers: HeaderPairs | None, timeout: float
    ) -> Deferred[Message]:
        check_publish(topic, data)
        requests = self._requests
        correlation = ""

        def cancelled(_: Deferred[Message]) -> None:
            requests.forget(correlation)

        answered: Deferred[Message] = Deferred(cancelled)
        correlation, payload = requests.prepare(data, headers, answered)
        timer = self._clock.callLater(timeout, self._timed_out, correlation, topic, timeout)

        def settled(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        answered.addBoth(settled)

        def send(_: object) -> Deferred[int | None]:
            return self._client.publish(topic, payload)

        def not_sent(failure: Failure) -> None:
            if requests.forget(correlation) is not None:
                answered.errback(failure)

        self._inbox_ready().addCallback(send).addErrback(not_sent)
        return answered

    def _inbox_ready(self) -> Deferred[None]:
        """Fires once the client is subscribed to its inbox (subscribed at
        the first request, kept for the client's life)."""
        if self._inbox is None:
            self._inbox = self._client.subscribe(
                [self._requests.inbox], self._replied, start=StartAt.CURRENT
            )

            def failed(failure: Failure) -> Failure:
                self._inbox = None  # the next request tries again
                return failure

            self._inbox.addErrback(failed)
        ready: Deferred[None] = Deferred()
        self._inbox.addCallbacks(
            lambda _: ready.callback(None), lambda failure: ready.errback(failure)
        )
        return ready

    def _replied(self, reply: Message) -> bool:
        settled = self._requests.answered(reply)
        if settled is not None:
            handle, outcome = settled
            if isinstance(outcome, Exception):
                handle.errback(outcome)
            else:
                handle.callback(outcome)
        return True

    def _timed_out(self, correlation: str, topic: str, timeout: float) -> None:
        handle = self._requests.forget(correlation)
        if handle is not None:
            handle.errback(RequestTimedOut(f"no reply from {topic!r} within {timeout:g} s"))

    def close(self, error: Exception) -> None:
        for handle in self._requests.fail_all(error):
            handle.errback(error)


def responder(
    client: BrokerClient, handler: Callable[[Message], Reply | Deferred[Reply]]
) -> Callable[[Message], Deferred[bool]]:
    """A subscription handler that answers each request with `handler`'s
    result, published to the request's inbox; the request is acked once
    its reply is confirmed (nacked, and so delivered again, if the handler
    failed)."""

    def on_request(request: Message) -> Deferred[bool]:
        def answer(reply: Any) -> Deferred[Any] | None:  # (a Reply)
            found = reply_to_request(request, reply)
            if found is None:
                return None
            inbox, payload = found

            def lost(failure: Failure) -> None:
                # Its requester is gone (or may not be answered): the request
                # is done all the same, not delivered again.
                log.warn(
                    "a reply to {inbox!r} was not sent: {error}",
                    inbox=inbox,
                    error=failure.getErrorMessage(),
                )

            return client.publish(inbox, payload).addErrback(lost)

        done: Deferred[Any] = maybeDeferred(handler, request).addCallback(answer)

        def failed(failure: Failure) -> bool:
            log.failure("a responder failed on {topic!r}", failure, topic=request.topic)
            return False

        return done.addCallbacks(lambda _: True, failed)

    return on_request


__all__ = ["DEFAULT_RESPONDERS", "Requester", "responder"]

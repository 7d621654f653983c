"""What a client asks for again after a reconnect (broker.sansio.subscriptions),
shared by the Twisted, asyncio and blocking clients."""

from __future__ import annotations

from broker.sansio.messages import Message
from broker.sansio.subscriptions import Subscriptions
from broker.wire import StartAt

GRANTED = {"patterns": True}


def test_a_pattern_from_the_beginning_is_asked_again_from_the_beginning():
    """Found by the simulator (tests/simulation): a pattern was asked again
    from now, so a topic it had not yet delivered from lost what came
    before the reconnect. The topics it brought resume by name; the pattern
    itself keeps its start (the broker leaves the topics held by name)."""
    subscriptions: Subscriptions[str] = Subscriptions()
    names, needs = subscriptions.plan_subscribe(["orders.*"], "h", StartAt.BEGINNING, 0, True)
    assert (names, needs) == (["orders.*"], "patterns")
    subscriptions.subscribed_to(names)
    for offset in (0, 1):
        assert subscriptions.handler_for(Message("orders.eu", b"m", offset)) == "h"
        subscriptions.progress["orders.eu"].answered(offset)
    assert subscriptions.resubscriptions(GRANTED) == [
        (["orders.eu"], StartAt.FROM64, 2),
        (["orders.*"], StartAt.BEGINNING, 0),
    ]


def test_a_pattern_from_now_is_asked_again_from_now():
    subscriptions: Subscriptions[str] = Subscriptions()
    names, _ = subscriptions.plan_subscribe(["orders.>"], "h", StartAt.CURRENT, 0, True)
    subscriptions.subscribed_to(names)
    assert subscriptions.resubscriptions(GRANTED) == [(["orders.>"], StartAt.CURRENT, 0)]

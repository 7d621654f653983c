"""Cursors, windows and timers, driven by a fake clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from broker.core.delivery import (
    DeadlineQueue,
    Delivery,
    DeliverySettings,
    DeliveryTimers,
    DeliveryWindow,
    ids_from,
)
from broker.core.topics import TopicRegistry
from broker.log import MemoryLog
from broker.wire import StartAt


class Subscriber:
    """A window with what it sent and dropped recorded."""

    def __init__(self, clock: Clock, registry: TopicRegistry, **settings) -> None:
        self.clock = clock
        self.registry = registry
        self.sent: list[tuple[float, str, bytes]] = []
        self.dropped: list[Delivery] = []
        self.timers = DeliveryTimers(clock, DeliverySettings(**settings))
        self.window = DeliveryWindow(
            self.timers, self._send, lambda delivery, reason: self.dropped.append(delivery)
        )

    def _send(self, delivery: Delivery) -> None:
        self.sent.append((self.clock.seconds(), delivery.topic.name, delivery.payload))

    def subscribe(self, topic: str, start=StartAt.BEGINNING, offset: int = 0) -> None:
        self.window.subscribe(self.registry.get(topic), start, offset)

    def payloads(self) -> list[bytes]:
        return [payload for _, _, payload in self.sent]


def setup(**settings) -> tuple[Clock, TopicRegistry, Subscriber]:
    clock = Clock()
    registry = TopicRegistry()
    return clock, registry, Subscriber(clock, registry, **settings)


def test_one_delivery_in_flight_and_acks_move_on_in_order():
    _clock, registry, sub = setup()
    registry.publish("t", [b"m0", b"m1", b"m2"])
    sub.subscribe("t")
    assert sub.payloads() == [b"m0"]
    assert sub.window.ack()
    assert sub.window.ack()
    assert sub.payloads() == [b"m0", b"m1", b"m2"]
    assert sub.window.ack()
    assert not sub.window.ack()  # nothing in flight


def test_replay_then_live_has_no_gap_and_no_duplicate():
    _clock, registry, sub = setup()
    registry.publish("t", [b"%d" % i for i in range(100)])
    sub.subscribe("t", StartAt.FROM, 90)
    for i in range(100, 105):
        registry.publish("t", [b"%d" % i])
    while sub.window.ack():
        pass
    assert sub.payloads() == [b"%d" % i for i in range(90, 105)]


def test_start_positions():
    _clock, registry, sub = setup()
    registry.publish("t", [b"old"])
    sub.subscribe("t", StartAt.CURRENT)
    assert sub.sent == []
    registry.publish("t", [b"new"])
    assert sub.payloads() == [b"new"]
    _, _, beyond = setup()
    beyond.registry = registry
    beyond.subscribe("t", StartAt.FROM, 60_000)  # past the end: live from now
    registry.publish("t", [b"next"])
    assert beyond.payloads() == [b"next"]


def test_nack_redelivers_after_the_ack_delay_and_others_flow_meanwhile():
    clock, registry, sub = setup()
    registry.publish("t", [b"a", b"b"])
    sub.subscribe("t")
    assert sub.window.nack()
    assert sub.sent == [(0, "t", b"a"), (0, "t", b"b")]
    sub.window.ack()  # b
    clock.advance(0.999)
    assert len(sub.sent) == 2
    clock.advance(0.001)
    assert sub.sent[-1] == (1.0, "t", b"a")


def test_no_answer_delivers_five_times_at_the_seeds_times_then_drops():
    clock, registry, sub = setup()
    registry.publish("t", [b"x", b"after"])
    sub.subscribe("t")
    clock.pump([0.5] * 40)
    times = [t for t, _, payload in sub.sent if payload == b"x"]
    assert times == [0, 3, 6, 9, 12]
    assert [d.payload for d in sub.dropped] == [b"x"]
    # The slot was held until the drop, 3 s after the fifth copy.
    assert sub.sent[5] == (15.0, "t", b"after")


def test_a_late_ack_answers_the_timed_out_message_not_a_later_one():
    clock, registry, sub = setup()
    registry.publish("t", [b"slow", b"next"])
    sub.subscribe("t")
    clock.advance(2.5)  # timed out, held for the ack delay
    assert sub.payloads() == [b"slow"]
    assert sub.window.ack()  # the late ack
    assert sub.payloads() == [b"slow", b"next"]
    clock.advance(10)
    assert sub.payloads().count(b"slow") == 1


def test_topics_of_a_connection_take_turns():
    _clock, registry, sub = setup()
    registry.publish("busy", [b"b%d" % i for i in range(5)])
    registry.publish("quiet", [b"q0", b"q1"])
    sub.subscribe("busy")
    sub.subscribe("quiet")
    while sub.window.ack():
        pass
    # "busy" was queued again behind b0 before "quiet" joined; then they alternate.
    assert sub.payloads() == [b"b0", b"b1", b"q0", b"b2", b"q1", b"b3", b"b4"]


def test_unsubscribe_and_close_release_everything():
    clock, registry, sub = setup()
    registry.publish("t", [b"a", b"b"])
    sub.subscribe("t")
    sub.window.nack()  # a waits for redelivery, b in flight
    assert sub.window.unsubscribe("t")
    assert not sub.window.unsubscribe("t")
    assert len(sub.timers.delays) == 0
    sub.window.close()
    assert sub.window.in_flight == 0
    assert registry.get("t").waiting == {}
    clock.advance(10)
    # The ack timeouts' entries (one per pump) came due and found nothing.
    assert len(sub.timers.timeouts) == 0 and sub.timers.ack_timeouts == 0
    assert sub.payloads() == [b"a", b"b"]


def test_waiting_redeliveries_are_bounded():
    clock, registry, sub = setup(max_waiting=3)
    registry.publish("t", [b"%d" % i for i in range(10)])
    sub.subscribe("t")
    for _ in range(3):
        sub.window.nack()
    assert sub.window.in_flight == 0  # three wait; the cursor does not move on
    clock.advance(1.0)
    assert sub.payloads()[-1] == b"0"


class SlowLog:
    """A log whose reads answer later, as a networked store would."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.first_offset = 0
        self.reads: list[Deferred] = []

    @property
    def next_offset(self) -> int:
        return len(self.messages)

    committed_offset = next_offset
    headered = False

    def append(self, payloads, headered=True):
        first = len(self.messages)
        self.messages.extend(payloads)
        return first

    def read(self, offset, max_messages):
        d: Deferred = Deferred()
        self.reads.append((d, self.messages[offset : offset + max_messages]))
        return d


def test_a_log_that_answers_reads_later():
    clock = Clock()
    slow = SlowLog()
    registry = TopicRegistry(make_log=lambda name: slow)
    sub = Subscriber(clock, registry)
    registry.publish("t", [b"a", b"b"])
    sub.subscribe("t")
    assert sub.sent == []
    d, batch = slow.reads.pop()
    d.callback(batch)
    assert sub.payloads() == [b"a"]
    sub.window.ack()
    assert sub.payloads() == [b"a", b"b"]


def test_deadline_queue_uses_one_timer_and_expires_in_order():
    clock = Clock()
    expired: list[str] = []
    queue: DeadlineQueue[str] = DeadlineQueue(clock, 1.0, expired.append)
    queue.add("a")
    clock.advance(0.4)
    queue.add("b")
    queue.add("c")
    queue.discard("b")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.6)
    assert expired == ["a"]
    clock.advance(0.4)
    assert expired == ["a", "c"]
    assert clock.getDelayedCalls() == []


def test_deadline_queue_survives_float_rounding():
    clock = Clock()
    expired: list[int] = []
    queue: DeadlineQueue[int] = DeadlineQueue(clock, 0.3, expired.append)
    clock.advance(0.1)
    queue.add(1)
    clock.advance(0.2)
    clock.advance(0.1)
    assert expired == [1]


def test_a_prefetch_window_acks_by_id_and_times_out_each_delivery():
    clock = Clock()
    registry = TopicRegistry()
    sent: list[Delivery] = []
    timers = DeliveryTimers(clock, DeliverySettings())
    window = DeliveryWindow(timers, sent.append, lambda d, reason: None, capacity=3)
    registry.publish("t", [b"%d" % i for i in range(6)])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [d.payload for d in sent] == [b"0", b"1", b"2"]
    assert window.ack(sent[1].id)  # out of order
    assert not window.ack(sent[1].id)  # only once
    assert [d.payload for d in sent] == [b"0", b"1", b"2", b"3"]
    clock.advance(1.0)
    window.ack(sent[3].id)  # b"4" goes out at t=1
    clock.advance(1.0)  # 0 and 2 time out at t=2 and keep their slots
    assert window.in_flight == 3 and len(sent) == 5
    clock.advance(1.0)  # t=3: 0 and 2 again, same ids, second attempt; 4 times out
    again = sent[5:]
    assert [(d.payload, d.attempts) for d in again] == [(b"0", 2), (b"2", 2)]
    assert {d.id for d in again} == {sent[0].id, sent[2].id}


def test_closing_with_a_redelivery_pending_leaves_no_timer_behind():
    clock, registry, sub = setup()
    registry.publish("t", [b"a", b"b"])
    sub.subscribe("t")
    sub.window.nack()  # a waits for its redelivery
    sub.window.close()
    assert len(sub.timers.delays) == 0
    clock.advance(10)  # nothing fires into the closed window
    assert len(sub.timers.timeouts) == 0 and sub.timers.ack_timeouts == 0
    assert clock.getDelayedCalls() == []
    assert sub.payloads() == [b"a", b"b"]


def _window(clock: Clock, capacity: int, max_bytes: int) -> tuple[DeliveryWindow, list[Delivery]]:
    sent: list[Delivery] = []
    timers = DeliveryTimers(clock, DeliverySettings())
    window = DeliveryWindow(
        timers, sent.append, lambda d, reason: None, capacity=capacity, max_bytes=max_bytes
    )
    return window, sent


def test_a_window_holds_at_most_its_bytes_whatever_its_prefetch():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=100, max_bytes=250)
    registry.publish("t", [b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 40])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [d.payload[:1] for d in sent] == [b"a", b"b"]  # c would make 300
    assert window.bytes_in_flight == 200
    window.ack_many([sent[0].id])
    window.pump()
    assert [d.payload[:1] for d in sent] == [b"a", b"b", b"c", b"d"]  # 240 bytes
    assert window.bytes_in_flight == 240 and window.in_flight == 3


def test_a_message_larger_than_the_byte_limit_goes_alone():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=100, max_bytes=10)
    registry.publish("t", [b"x" * 50, b"y"])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [d.payload for d in sent] == [b"x" * 50]
    window.ack(sent[0].id)
    assert [d.payload for d in sent][-1] == b"y"
    assert window.bytes_in_flight == 1


def test_a_paused_window_sends_nothing_new_nor_again_until_resumed():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=10, max_bytes=1 << 20)
    registry.publish("t", [b"1", b"2"])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert len(sent) == 2
    window.pause()
    registry.publish("t", [b"3"])
    clock.advance(2.0)  # both time out and keep their slots...
    clock.advance(1.0)  # ...until their ack delay passes
    assert window.in_flight == 0
    assert [d.payload for d in sent] == [b"1", b"2"]  # not sent into a full connection
    window.resume()
    assert [(d.payload, d.attempts) for d in sent[2:]] == [(b"1", 2), (b"2", 2), (b"3", 1)]


def test_read_ahead_is_bounded_in_bytes():
    from broker.core.delivery import READ_AHEAD_BYTES

    registry = TopicRegistry()
    window, sent = _window(Clock(), capacity=1, max_bytes=1 << 30)
    big = b"z" * (READ_AHEAD_BYTES // 4 + 1)
    registry.publish("t", [big] * 10)
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    subscription = window.subscriptions["t"]
    held = sum(len(p) for p in subscription._buffer[subscription._index :] if p)
    assert held <= READ_AHEAD_BYTES
    for _ in range(9):
        window.ack(sent[-1].id)
    assert len(sent) == 10 and all(d.payload == big for d in sent)
    assert [d.offset for d in sent] == list(range(10))


def test_ack_timeouts_keep_one_entry_per_pump_and_time_out_only_the_unanswered():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=5, max_bytes=1 << 20)
    registry.publish("t", [b"%d" % i for i in range(5)])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    timers = window._timers
    assert len(sent) == 5 and len(timers.timeouts) == 1  # one pump, one entry
    window.ack_many([sent[1].id, sent[3].id])
    clock.advance(1.0)
    window.pump()  # the two freed slots find nothing new: no entry
    assert len(timers.timeouts) == 1
    clock.advance(1.0)
    assert timers.ack_timeouts == 3
    assert window.in_flight == 3  # held for their redelivery after the ack delay
    clock.advance(1.0)
    assert [d.payload for d in sent[5:]] == [b"0", b"2", b"4"]
    assert [d.id for d in sent[5:]] == [sent[0].id, sent[2].id, sent[4].id]


def test_a_delivery_sent_again_is_timed_out_by_its_new_deadline_only():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=2, max_bytes=1 << 20)
    registry.publish("t", [b"a"])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    clock.advance(0.5)
    assert window.nack(sent[0].id)
    clock.advance(1.0)  # ack delay over: sent again at 1.5, unanswered until 3.5
    assert [d.payload for d in sent] == [b"a", b"a"]
    clock.advance(0.5)  # the first send's deadline (2.0) finds the second in flight
    assert window._timers.ack_timeouts == 0
    clock.advance(1.5)
    assert window._timers.ack_timeouts == 1


def test_ids_wrap_at_32_bits():
    assert list(ids_from(5, 8)) == [5, 6, 7]
    assert list(ids_from(2**32 - 2, 1)) == [2**32 - 2, 2**32 - 1, 0]
    assert list(ids_from(3, 3)) == []


class CorruptAtTwo(MemoryLog):
    """Reads offset 2 as a store reads a record that fails its checksum."""

    def read(self, offset, max_count):
        batch = super().read(offset, max_count)
        if offset <= 2 < offset + len(batch):
            batch[2 - offset] = None
        return batch


def test_a_run_skips_a_corrupt_record_and_keeps_the_offsets():
    clock = Clock()
    registry = TopicRegistry(make_log=lambda name: CorruptAtTwo())
    window, sent = _window(clock, capacity=10, max_bytes=1 << 20)
    registry.publish("t", [b"%d" % i for i in range(5)])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [(d.offset, d.payload) for d in sent] == [(0, b"0"), (1, b"1"), (3, b"3"), (4, b"4")]
    assert len({d.id for d in sent}) == 4 and window.in_flight == 4


def test_a_run_stops_at_the_byte_limit_and_goes_on_where_it_stopped():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=10, max_bytes=300)
    registry.publish("t", [bytes([65 + i]) * 100 for i in range(6)])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [d.offset for d in sent] == [0, 1, 2]
    window.ack_many([sent[0].id, sent[1].id])
    window.pump()
    assert [d.offset for d in sent] == [0, 1, 2, 3, 4]
    window.ack_many([d.id for d in sent[2:]])
    window.pump()
    assert [d.offset for d in sent] == [0, 1, 2, 3, 4, 5]
    assert [d.payload[:1] for d in sent] == [b"A", b"B", b"C", b"D", b"E", b"F"]


def test_ack_timeouts_close_together_fire_together_at_most_two_steps_late():
    clock = Clock()
    registry = TopicRegistry()
    window, sent = _window(clock, capacity=10, max_bytes=1 << 20)
    window.subscribe(registry.get("t"), StartAt.CURRENT)
    for i in range(10):  # ten pumps, a millisecond apart: one entry
        registry.publish("t", [b"%d" % i])
        clock.advance(0.001)
    assert len(sent) == 10
    timers = window._timers
    assert len(timers.timeouts) == 1
    clock.advance(2.0 - 0.01)  # t = 2.0: the first send's deadline
    assert timers.ack_timeouts == 0  # its entry is due at the last one's, 2.009
    clock.advance(0.005)
    assert timers.ack_timeouts == 0  # and the timer runs once per step
    clock.advance(0.005)
    assert timers.ack_timeouts == 10  # t = 2.01: 10 ms late for the first
    assert len(clock.getDelayedCalls()) == 1  # the ack delay's, for their redelivery
    clock.advance(1.0)
    assert [d.payload for d in sent[10:]] == [b"%d" % i for i in range(10)]


def test_entries_of_pumps_further_apart_than_a_step_stay_apart():
    clock = Clock()
    registry = TopicRegistry()
    window, _sent = _window(clock, capacity=10, max_bytes=1 << 20)
    window.subscribe(registry.get("t"), StartAt.CURRENT)
    registry.publish("t", [b"a"])
    clock.advance(0.5)
    registry.publish("t", [b"b"])
    assert len(window._timers.timeouts) == 2
    clock.advance(1.5)
    assert window._timers.ack_timeouts == 1  # a, at its deadline
    clock.advance(0.5)
    assert window._timers.ack_timeouts == 2  # b, at its own


def run_window(clock: Clock, registry: TopicRegistry, capacity: int = 100):
    """A window that takes runs, with what it sent recorded: runs as
    (offset, first id, payloads), single deliveries as Delivery objects."""
    runs: list[tuple[int, int, list[bytes]]] = []
    single: list[Delivery] = []
    window = DeliveryWindow(
        DeliveryTimers(clock, DeliverySettings()),
        single.append,
        lambda d, reason: None,
        capacity=capacity,
        send_run=lambda subscription, offset, first_id, payloads: runs.append(
            (offset, first_id, payloads)
        ),
    )
    return window, runs, single


def test_a_whole_run_is_handed_over_at_once_and_acked_like_single_deliveries():
    clock = Clock()
    registry = TopicRegistry(
        make_log=lambda name: CorruptAtTwo() if name == "dirty" else MemoryLog()
    )
    window, runs, single = run_window(clock, registry)
    registry.publish("clean", [b"a", b"b", b"c"])
    window.subscribe(registry.get("clean"), StartAt.BEGINNING)
    assert runs == [(0, 0, [b"a", b"b", b"c"])]
    assert window.in_flight == 3 and window.bytes_in_flight == 3 and not single
    window.ack_many([1, 2, 0])
    assert window.in_flight == 0 and window.bytes_in_flight == 0
    registry.publish("clean", [b"d", b"e", b"f"])
    assert runs[1:] == [(3, 3, [b"d", b"e", b"f"])]
    # A read-ahead with a corrupt record in it goes one by one, skipping it.
    window.subscribe(registry.get("dirty"), StartAt.BEGINNING)
    registry.publish("dirty", [b"0", b"1", b"2", b"3"])
    assert [(d.offset, d.payload, d.id) for d in single] == [
        (0, b"0", 6),
        (1, b"1", 7),
        (3, b"3", 8),
    ]


def test_what_a_run_sent_is_nacked_timed_out_and_redelivered_as_any_delivery():
    clock = Clock()
    registry = TopicRegistry()
    window, runs, single = run_window(clock, registry)
    registry.publish("t", [b"a", b"b", b"c"])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert runs == [(0, 0, [b"a", b"b", b"c"])]
    assert window.nack(1)  # b: sent again after the ack delay
    window.ack_many([2])  # c: done; a: left to time out
    clock.advance(1.0)
    assert [(d.payload, d.id, d.attempts, d.offset) for d in single] == [(b"b", 1, 2, 1)]
    clock.advance(1.0)  # a's deadline: it keeps its slot for the ack delay
    assert window._timers.ack_timeouts == 1 and window.in_flight == 2
    window.ack_many([0])  # a late ack of the timed-out a still answers it
    assert window.in_flight == 1
    clock.advance(1.0)
    assert [d.payload for d in single] == [b"b"]  # a was answered: not sent again
    window.ack(1)
    assert window.in_flight == 0 and window.bytes_in_flight == 0


def test_a_window_closed_with_a_run_in_flight_releases_it():
    clock = Clock()
    registry = TopicRegistry()
    window, runs, _ = run_window(clock, registry)
    registry.publish("t", [b"a", b"b"])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert len(runs) == 1 and window.in_flight == 2
    window.close()
    assert window.in_flight == 0 and window.bytes_in_flight == 0
    clock.advance(10)
    assert window._timers.ack_timeouts == 0


def two_runs_in_flight():
    """A window with two runs in flight: ids 0-2 (a, bb, ccc) and 3-4 (dddd, eeeee)."""
    clock = Clock()
    registry = TopicRegistry()
    window, runs, _ = run_window(clock, registry, capacity=10)
    window.subscribe(registry.get("t"), StartAt.CURRENT)
    registry.publish("t", [b"a", b"bb", b"ccc"])
    registry.publish("t", [b"dddd", b"eeeee"])
    return clock, registry, window, runs


def test_acks_of_runs_in_any_order_free_each_delivery_once():
    clock, _, window, runs = two_runs_in_flight()
    assert [(offset, first_id) for offset, first_id, _ in runs] == [(0, 0), (3, 3)]
    assert window.in_flight == 5 and window.bytes_in_flight == 15
    window.ack_many([4, 0, 0, 99, 2])  # across runs, twice, and an id never sent
    assert window.in_flight == 2 and window.bytes_in_flight == 6
    # Only what is unanswered stays held (b and d), however the run was acked.
    held = [p for run in window._runs for p in run.payloads if p is not None]
    assert held == [b"bb", b"dddd"]
    assert runs[0][2] == [b"a", b"bb", b"ccc"]  # what the sender was given is its own
    assert window.ack()  # the seed's ack answers the oldest: b
    assert window.bytes_in_flight == 4
    window.ack_many([1, 3])  # b again (ignored) and d
    assert window.in_flight == 0 and window.bytes_in_flight == 0
    assert not window._runs and not window.ack()
    clock.advance(10)  # every run answered: nothing times out
    assert window._timers.ack_timeouts == 0


def test_a_run_frees_room_as_it_is_acked_and_the_next_run_follows():
    clock = Clock()
    registry = TopicRegistry()
    window, runs, _ = run_window(clock, registry, capacity=4)
    registry.publish("t", [bytes([i]) for i in range(10)])
    window.subscribe(registry.get("t"), StartAt.BEGINNING)
    assert [(offset, first_id, len(p)) for offset, first_id, p in runs] == [(0, 0, 4)]
    window.ack_many([1, 2])
    window.pump()
    assert runs[1][:2] == (4, 4) and len(runs[1][2]) == 2 and window.in_flight == 4
    window.ack_many([0, 3, 4, 5])
    window.pump()
    assert [(offset, len(p)) for offset, _, p in runs[2:]] == [(6, 4)]


def test_acks_counting_up_answer_a_run_at_once_or_one_by_one_where_they_must():
    clock, registry, window, _ = two_runs_in_flight()
    window.ack_many(range(0, 2))  # within the first run
    assert window.in_flight == 3 and window.bytes_in_flight == 12
    window.ack_many(range(1, 4))  # 1 again and across both runs: one by one
    assert window.in_flight == 1 and window.bytes_in_flight == 5
    clock.advance(2.0)  # 4 times out: taken out of its run, it keeps its slot
    assert window._timers.ack_timeouts == 1 and window.in_flight == 1 and not window._runs
    window.ack_many(range(4, 5))  # a late ack still answers it
    assert window.in_flight == 0 and window.bytes_in_flight == 0
    clock.advance(10)
    assert window._timers.redeliveries == 0
    registry.publish("t", [b"f", b"g"])
    registry.publish("t", [b"h", b"i", b"j"])
    assert window.in_flight == 5 and len(window._runs) == 2
    window.ack_many(range(5, 10))  # across two runs, each at once
    assert window.in_flight == 0 and window.bytes_in_flight == 0 and not window._runs

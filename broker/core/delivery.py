"""Subscriptions as cursors into topic logs, and each connection's window of
deliveries in flight: ack, nack, ack timeout, redelivery, maximum deliveries.

Knows nothing of sockets: a window is handed a function that sends. Time
comes from an injected IReactorTime, and all connections share two timers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Generic, Protocol, TypeVar, cast

from mypy_extensions import mypyc_attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from broker.core.timing import Later, any_timed, timing_of
from broker.core.topics import Topic
from broker.wire import StartAt, total_size
from broker.wire.headers import Headered

log = Logger()

K = TypeVar("K", bound=Hashable)

# How many payloads a cursor reads from its log at a time, and how many
# bytes of them it keeps at most (one payload at least): what it holds stays
# alive even once retention has dropped it from the log.
READ_AHEAD = 64
READ_AHEAD_BYTES = 1 << 20
# Bytes of payload the pump hands to be sent at once, before it looks again
# whether the connection can take more.
RUN_BYTES = 64 * 1024
# Bytes in flight per connection by default: enough for a prefetch of 256
# messages of 32 KiB.
DEFAULT_MAX_INFLIGHT_BYTES = 8 << 20
# Delivery ids are u32s; they wrap.
_ID_LIMIT = 1 << 32
# The ack timeout runs once per step at most, whatever the rate (and a
# delivery times out at most twice this late).
TIMER_STEP = 0.01
# Deadlines within this many seconds of now count as reached (float rounding).
_EPSILON = 1e-9


@dataclass(frozen=True)
class DeliverySettings:
    """The timers and limits of delivery, as the seed defines them."""

    ack_delay: float = 1.0
    """Seconds between a nack (or an ack timeout) and the redelivery."""
    ack_timeout: float = 2.0
    """Seconds a delivery may stay unanswered before it counts as nacked."""
    max_deliveries: int = 5
    """Deliveries of one message to one subscriber, the first included."""
    max_waiting: int = 1000
    """Nacked messages one connection may have waiting for redelivery before
    its subscriptions stop moving on to new messages."""
    max_delayed: int = 1_000_000
    """Delayed messages (Not-Before) one connection may hold until they are
    due before its subscriptions stop moving on to new messages."""
    dead_letter_expired: bool = False
    """Whether an expired message goes to its dead-letter topic (else it is
    only counted)."""


class DeadlineQueue(Generic[K]):
    """Keys that expire a fixed delay after they are added, with one timer.

    Because the delay is the same for every key, the order of insertion is
    the order of expiry: a FIFO replaces a heap, and removing a key (an ack)
    costs O(1).
    """

    def __init__(self, clock: IReactorTime, delay: float, expired: Callable[[K], None]) -> None:
        self._clock = clock
        self.delay = delay
        self._expired = expired
        self._deadlines: OrderedDict[K, float] = OrderedDict()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._deadlines)

    def add(self, key: K) -> None:
        """Add a key that is not in the queue (a key comes back only after it left)."""
        self._deadlines[key] = self._clock.seconds() + self.delay
        if self._call is None:
            self._call = self._clock.callLater(self.delay, self._fire)

    def discard(self, key: K) -> None:
        self._deadlines.pop(key, None)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._deadlines.clear()

    def _fire(self) -> None:
        self._call = None
        deadlines = self._deadlines
        now = self._clock.seconds() + _EPSILON
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            del deadlines[key]
            self._expired(key)
        if deadlines and self._call is None:
            first = next(iter(deadlines.values()))
            self._call = self._clock.callLater(max(0.0, first - now), self._fire)


class _Sent:
    """Deliveries of one window with their ack deadline: a run of ids
    (`first` up to `end`), or the listed `ids` of messages sent again."""

    __slots__ = ("due", "end", "first", "ids", "opened", "window")

    def __init__(
        self, due: float, window: DeliveryWindow, first: int, end: int, ids: list[int] | None
    ) -> None:
        self.due = due  # the latest deadline among them
        self.opened = due  # the earliest
        self.window = window
        self.first = first
        self.end = end
        self.ids = ids


class AckTimeouts:
    """The ack timeout of every window's deliveries, with one timer.

    Every delivery has the same timeout, so deadlines come in the order
    deliveries go. A pump adds one entry (its window, the ids it sent, their
    deadline), not one per delivery, and the next pumps of that window within
    TIMER_STEP extend it; an ack costs nothing here: it takes its delivery
    out of the window's slots, and when the entry comes due the window looks
    up which of its ids are still unanswered. A closed window's entries stay
    until they come due (within `delay` seconds) and find nothing. The timer
    runs at most once per TIMER_STEP: a delivery times out at most twice
    TIMER_STEP after its deadline.
    """

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self._clock = clock
        self.delay = delay
        self._entries: deque[_Sent] = deque()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        """Entries not yet due."""
        return len(self._entries)

    def deadline(self) -> float:
        """The deadline of deliveries sent now."""
        return self._clock.seconds() + self.delay

    def add_run(self, deadline: float, window: DeliveryWindow, first: int, end: int) -> None:
        """`window` sent new deliveries, ids `first` up to `end` (mod 2**32),
        with `deadline` (from `deadline()`)."""
        entries = self._entries
        if entries:
            last = entries[-1]
            if (
                last.window is window
                and last.end == first
                and last.ids is None
                and first < end
                and deadline - last.opened <= TIMER_STEP
            ):
                last.end = end
                last.due = deadline
                return
        self._append(_Sent(deadline, window, first, end, None))

    def add_again(self, deadline: float, window: DeliveryWindow, ids: list[int]) -> None:
        """`window` sent deliveries `ids` again, with `deadline`."""
        self._append(_Sent(deadline, window, 0, 0, ids))

    def _append(self, sent: _Sent) -> None:
        self._entries.append(sent)
        if self._call is None:
            self._call = self._clock.callLater(self.delay, self._fire)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._entries.clear()

    def _fire(self) -> None:
        self._call = None
        entries = self._entries
        now = self._clock.seconds() + _EPSILON
        while entries and entries[0].due <= now:
            sent = entries.popleft()
            ids = sent.ids if sent.ids is not None else ids_from(sent.first, sent.end)
            sent.window.check_timeouts(ids, now)
        if entries and self._call is None:
            # Not sooner than TIMER_STEP: at thousands of pumps a second the
            # timer would otherwise be set again once per pump.
            wait = max(TIMER_STEP, entries[0].due - now)
            self._call = self._clock.callLater(wait, self._fire)


def ids_from(first: int, end: int) -> Iterable[int]:
    """Ids from `first` up to `end`, across the wrap at 2**32."""
    if first <= end:
        return range(first, end)
    return chain(range(first, 1 << 32), range(end))


class Delivery:
    """One message on its way to one subscriber, and how often it went."""

    __slots__ = ("attempts", "deadline", "held", "id", "offset", "payload", "subscription")

    def __init__(
        self,
        subscription: Subscription,
        offset: int,
        payload: bytes,
        attempts: int = 0,
        delivery_id: int = -1,
        deadline: float = 0.0,
    ) -> None:
        self.subscription = subscription
        self.offset = offset
        self.payload = payload
        self.attempts = attempts  # more than 0 for a message a consumer group hands on
        # Given at the first dispatch; kept through redeliveries (acks name it).
        self.id = delivery_id
        # Timed out, but keeps its slot until its redelivery (see DeliveryWindow).
        self.held = False
        # When the current send goes unanswered (see AckTimeouts).
        self.deadline = deadline

    @property
    def window(self) -> DeliveryWindow:
        # Only a window makes deliveries, so its subscriptions' owner is one.
        return cast(DeliveryWindow, self.subscription.window)

    @property
    def topic(self) -> Topic:
        return self.subscription.topic


class DeliveryTimers:
    """The two timers every window shares: ack timeout and ack delay."""

    def __init__(self, clock: IReactorTime, settings: DeliverySettings) -> None:
        self.settings = settings
        self.clock = clock
        # Counted here, where they happen, for the broker's metrics.
        self.ack_timeouts = 0
        self.redeliveries = 0
        self.expired = 0
        self.delayed = 0
        self.timeouts = AckTimeouts(clock, settings.ack_timeout)
        self.delays: DeadlineQueue[Delivery] = DeadlineQueue(
            clock, settings.ack_delay, lambda d: d.window.delay_over(d)
        )
        self.later = Later(clock, lambda d: d.window.came_due(d))
        """Delayed deliveries of every window, until they are due."""

    def forget(self, delivery: Delivery) -> None:
        """`delivery` left its window's slots (its ack timeout then finds nothing)."""
        if delivery.held:
            self.delays.discard(delivery)

    def stop(self) -> None:
        self.timeouts.stop()
        self.delays.stop()
        self.later.stop()


class SubscriptionOwner(Protocol):
    """Who a subscription wakes when it has messages: its window, or a
    consumer group for the group's own cursor."""

    def _wake(self, subscription: Subscription) -> None: ...


class Joinable(Protocol):
    """A consumer group, as a window joins it (broker.core.groups.ConsumerGroup):
    named here so that this module need not import the groups, which build
    on it."""

    topic: Topic

    def join(self, window: DeliveryWindow) -> Subscription: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # a consumer group's member is one
class Subscription:
    """One connection's cursor into one topic's log.

    It holds an offset, not copies: a subscriber that falls behind costs a
    cursor and at most READ_AHEAD references to payloads the log holds.
    """

    __slots__ = (
        "_buffer",
        "_fetching",
        "_index",
        "active",
        "give_back",
        "on_done",
        "position",
        "queued",
        "takes_runs",
        "topic",
        "window",
    )

    def __init__(self, topic: Topic, window: SubscriptionOwner, position: int) -> None:
        self.topic = topic
        self.window = window
        self.position = position
        # Set here, not as class attributes a subclass overrides: a compiled
        # (mypyc) class reads its own attributes, whatever a subclass says.
        self.takes_runs = True
        """Reads its topic's log itself, so the pump may take runs (`take_run`)."""
        self.on_done: Callable[[Delivery], None] | None = None
        """Told of each delivery acked or given up on (a group counts them)."""
        self.give_back: Callable[[Delivery], None] | None = None
        """Takes back what the subscription leaves unacked (a consumer group's
        member hands it to the group); None: it stays in the topic's log."""
        self.active = True
        self.queued = False
        self._buffer: list[bytes | None] = []
        self._index = 0
        self._fetching = False

    def log_grew(self) -> None:
        self.window._wake(self)

    def take(self) -> tuple[int, bytes] | tuple[int, bytes, int] | None:
        """The next (offset, payload), or None once caught up (then it waits)."""
        while True:
            if self._index < len(self._buffer):
                payload = self._buffer[self._index]
                self._index += 1
                offset = self.position
                self.position += 1
                if payload is None:
                    continue  # a corrupt record: the store logged it; never served
                return offset, payload
            if not self._read_ahead():
                return None

    def take_run(self, limit: int) -> tuple[int, list[bytes | None]] | None:
        """Up to `limit` next payloads, with the offset of the first (a
        corrupt record reads as None: skip it); None once caught up (then it
        waits), as `take`."""
        if self._index >= len(self._buffer) and not self._read_ahead():
            return None
        index = self._index
        run = self._buffer[index : index + limit]
        offset = self.position
        self._index = index + len(run)
        self.position = offset + len(run)
        return offset, run

    def _read_ahead(self) -> bool:
        """Read the next payloads from the log; False if there are none yet
        (the cursor then waits for the log to grow or a read to finish)."""
        if self._fetching:
            return False
        log_ = self.topic.log
        # Retention may have removed what the cursor points at; a shared
        # store that lost its unreplicated tail gives those offsets out again.
        self.position = min(max(self.position, log_.first_offset), log_.next_offset)
        if self.position >= log_.committed_offset:
            self.topic.wait(self)
            return False
        try:
            batch = log_.read(self.position, READ_AHEAD)
        except Exception:
            self._fetch_failed(Failure())
            return False
        if isinstance(batch, Deferred):
            self._fetching = True
            batch.addCallbacks(self._fetched, self._fetch_failed)
            return False
        self._fill(batch)
        return True

    def untake(self, count: int) -> None:
        """Put back the last `count` payloads `take_run` gave (in the same pump)."""
        self._index -= count
        self.position -= count

    def _fill(self, batch: list[bytes | None]) -> None:
        try:
            small = total_size(batch) <= READ_AHEAD_BYTES  # type: ignore[arg-type]
        except TypeError:  # a corrupt record (None) among them
            small = False
        if not small and len(batch) > 1:
            kept = 0
            for count, payload in enumerate(batch):
                kept += len(payload) if payload is not None else 0
                if kept > READ_AHEAD_BYTES and count:
                    del batch[count:]  # read again when the cursor gets there
                    break
        self._buffer = batch
        self._index = 0

    def _fetched(self, batch: list[bytes | None]) -> None:
        self._fetching = False
        if self.active:
            self._fill(batch)
            self.window._wake(self)

    def _fetch_failed(self, failure: Failure) -> None:
        self._fetching = False
        log.failure(
            "reading {topic!r} at offset {offset} failed",
            failure,
            topic=self.topic.name,
            offset=self.position,
        )
        if self.active:
            self.topic.wait(self)  # try again after the next append

    def close(self) -> None:
        self.active = False
        self.topic.stop_waiting(self)
        self._buffer = []
        self._index = 0


def start_position(topic: Topic, start: StartAt, offset: int = 0) -> int:
    """The offset a cursor starting at `start` (and `offset`) reads first: at
    or past the end means "live from now"; before the start (removed by
    retention) means the oldest message still held."""
    log_ = topic.log
    if start == StartAt.BEGINNING:
        return int(log_.first_offset)
    if start == StartAt.CURRENT:
        return int(log_.next_offset)
    return int(min(max(offset, log_.first_offset), log_.next_offset))


class _Run:
    """First deliveries sent in one run, ids `first_id` up to `first_id +
    count` (never across the wrap), kept as one record until each is answered
    or needed as a Delivery: a run costs no Python object and no dict entry
    per delivery, and acks in order answer it by index."""

    __slots__ = ("deadline", "first_id", "left", "offset", "payloads", "subscription")

    def __init__(
        self,
        subscription: Subscription,
        offset: int,
        first_id: int,
        payloads: list[bytes | None],
        deadline: float,
    ) -> None:
        self.subscription = subscription
        self.offset = offset
        self.first_id = first_id
        self.payloads = list(payloads)
        """The unanswered deliveries' payloads (a copy: what the run was sent
        with stays the sender's); None once answered or taken out as a
        Delivery, so that only what is in flight stays held."""
        self.deadline = deadline
        self.left = len(payloads)
        """Deliveries of the run still unanswered."""

    def index_of(self, delivery_id: int) -> int:
        """The position of `delivery_id` in the run, or -1 if it is not unanswered there."""
        index = delivery_id - self.first_id
        if 0 <= index < len(self.payloads) and self.payloads[index] is not None:
            return index
        return -1

    def first_unanswered(self) -> int:
        """The id of the run's oldest delivery still unanswered (there is one)."""
        for index, payload in enumerate(self.payloads):
            if payload is not None:
                return self.first_id + index
        raise AssertionError("a run with nothing in flight is dropped")

    def take(self, index: int) -> bytes:
        """Answer the delivery at `index` (unanswered); its payload."""
        payload = self.payloads[index]
        assert payload is not None
        self.payloads[index] = None
        self.left -= 1
        return payload

    def as_delivery(self, index: int) -> Delivery:
        """Take the delivery at `index` out of the run, as a Delivery."""
        return Delivery(
            self.subscription,
            self.offset + index,
            self.take(index),
            1,
            self.first_id + index,
            self.deadline,
        )


class DeliveryWindow:
    """One connection's deliveries: which subscription goes next, what is in flight.

    Up to `capacity` deliveries occupy slots at once, holding at most
    `max_bytes` of payload between them (a larger message still goes when
    nothing else is in flight). While `paused` (the connection's output is
    full) nothing new is sent. The seed's acks carry
    no id, so a plain window has one slot and an ack answers the oldest; an
    extended window names deliveries by id. A delivery that times out keeps
    its slot until it is sent again after the ack delay, so that a late ack
    still answers that message and never one sent after it. A nacked delivery
    frees its slot at once, and the others flow while it waits. Subscriptions
    with messages ready take turns, so one busy topic cannot starve the others.
    """

    def __init__(
        self,
        timers: DeliveryTimers,
        send: Callable[[Delivery], None],
        dropped: Callable[[Delivery, str], None],
        capacity: int = 1,
        flush: Callable[[], None] = lambda: None,
        max_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        send_run: Callable[[Subscription, int, int, list[bytes]], None] | None = None,
    ) -> None:
        self._timers = timers
        self._settings = timers.settings
        self._send = send
        self._send_run = send_run
        """Sends a run: first deliveries of one subscription, given its first
        offset and id (both counting up by one) and the payloads."""
        self._flush = flush
        self._dropped = dropped
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes_in_flight = 0
        self.paused = False
        # Taken from its queue but over the byte limit: goes first next time.
        self._parked: Delivery | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self._ready: deque[Subscription] = deque()
        self._due: deque[Delivery] = deque()
        self._slots: dict[int, Delivery] = {}
        """Deliveries in flight one by one, by id."""
        self._runs: list[_Run] = []
        """Runs with deliveries in flight, oldest first: a few at a time (a
        list, not a deque, whose first block costs an idle connection 0.6 KB)."""
        self._in_runs = 0
        """Deliveries in flight in runs."""
        self._waiting: dict[Delivery, None] = {}
        self._later = 0
        """Delayed deliveries held until due (in the timers' `later`)."""
        self._next_id = 0
        self._pumping = False

    @property
    def in_flight(self) -> int:
        return len(self._slots) + self._in_runs

    def pause(self) -> None:
        """Send nothing new until `resume`: the connection cannot take more."""
        self.paused = True

    def resume(self) -> None:
        """Send again, at once."""
        self.paused = False
        self._pump()

    def subscribe(self, topic: Topic, start: StartAt, offset: int = 0) -> Subscription:
        """Start (or move) this connection's cursor on `topic`."""
        old = self.subscriptions.pop(topic.name, None)
        if old is not None:
            old.close()
        subscription = Subscription(topic, self, start_position(topic, start, offset))
        self.subscriptions[topic.name] = subscription
        self._wake(subscription)
        return subscription

    def join_group(self, group: Joinable) -> Subscription:
        """Take `group`'s topic from the group, as one of its members."""
        old = self.subscriptions.pop(group.topic.name, None)
        if old is not None:
            self._leave(old)
        member = group.join(self)
        self.subscriptions[group.topic.name] = member
        self._wake(member)
        return member

    def unsubscribe(self, name: str) -> bool:
        """Stop the cursor on topic `name`; False if there was none."""
        subscription = self.subscriptions.pop(name, None)
        if subscription is None:
            return False
        self._leave(subscription)
        return True

    def _leave(self, subscription: Subscription) -> None:
        give_back = subscription.give_back
        if give_back is not None:
            # A group member hands back all it has not acked, in flight too
            # (a late ack of one is ignored), before it leaves the group.
            for delivery_id, delivery in list(self._slots.items()):
                # (A member never takes runs: its deliveries are all here.)
                if delivery.subscription is subscription:
                    self._timers.forget(delivery)
                    self.bytes_in_flight -= len(delivery.payload)
                    del self._slots[delivery_id]
                    give_back(delivery)
            for delivery in [*self._due, *([self._parked] if self._parked else [])]:
                if delivery.subscription is subscription:
                    give_back(delivery)
        for delivery in [d for d in self._waiting if d.subscription is subscription]:
            self._forget_waiting(delivery)
            if give_back is not None:
                give_back(delivery)
        subscription.close()

    def ack(self, delivery_id: int | None = None) -> bool:
        """The subscriber acked a delivery (the oldest, if no id is given);
        False if there is no such delivery in flight."""
        delivery = self._take_slot(delivery_id)
        if delivery is None:
            return False
        self._timers.forget(delivery)
        on_done = delivery.subscription.on_done
        if on_done is not None:
            on_done(delivery)
        self._pump()
        return True

    def ack_many(self, delivery_ids: Sequence[int]) -> None:
        """Acks by id, many at once; the freed slots wait for `pump()`.
        Ids not in flight (late acks of messages given up on) are ignored."""
        if isinstance(delivery_ids, range) and delivery_ids.step == 1:
            delivery_ids = self._ack_counting_up(delivery_ids)
        slots = self._slots
        runs = self._runs
        forget = self._timers.forget
        freed = 0
        answered_in_runs = 0
        run: _Run | None = runs[0] if runs else None
        for delivery_id in delivery_ids:
            if slots:
                delivery = slots.pop(delivery_id, None)
                if delivery is not None:
                    freed += len(delivery.payload)
                    if delivery.held:
                        forget(delivery)
                    on_done = delivery.subscription.on_done
                    if on_done is not None:
                        on_done(delivery)
                    continue
            # Sent in a run (nothing else to tell): most likely the run of
            # the previous id. (_Run.index_of and take, inline: once per ack.)
            if run is None or not 0 <= delivery_id - run.first_id < len(run.payloads):
                run = self._run_of(delivery_id)
                if run is None:
                    continue
            index = delivery_id - run.first_id
            payloads = run.payloads
            payload = payloads[index]
            if payload is None:
                continue  # answered already
            payloads[index] = None
            freed += len(payload)
            answered_in_runs += 1
            run.left -= 1
            if not run.left:
                self._drop_run(run)
                run = None
        self.bytes_in_flight -= freed
        self._in_runs -= answered_in_runs

    def nack(self, delivery_id: int | None = None, pump: bool = True) -> bool:
        """The subscriber nacked a delivery (the oldest, if no id is given).
        With pump=False the freed slot waits for `pump()` (once per read)."""
        delivery = self._take_slot(delivery_id)
        if delivery is None:
            return False
        self._timers.forget(delivery)
        # A late nack of one that timed out: it holds no slot now, and waits
        # as a nacked one does (found by the simulator, seed 3).
        delivery.held = False
        if delivery.attempts >= self._settings.max_deliveries:
            self._give_up(delivery, "nacked")
        elif delivery.subscription.active:
            self._waiting[delivery] = None
            self._timers.delays.add(delivery)
        if pump:
            self._pump()
        return True

    def pump(self) -> None:
        """Fill the free slots."""
        self._pump()

    def _take_slot(self, delivery_id: int | None) -> Delivery | None:
        slots = self._slots
        if delivery_id is None:
            # The seed's ack: its windows send one by one (runs need ids).
            if slots:
                delivery_id = next(iter(slots))
            elif self._runs:
                delivery_id = self._runs[0].first_unanswered()
            else:
                return None
        delivery = slots.pop(delivery_id, None)
        if delivery is None:
            run = self._run_of(delivery_id)
            if run is None:
                return None
            delivery = self._out_of_run(delivery_id, run)
        self.bytes_in_flight -= len(delivery.payload)
        return delivery

    def _ack_counting_up(self, delivery_ids: range) -> range:
        """Ack the leading ids of a range counting up by one that are
        unanswered in runs, a run's part at a time with no step per id (a
        consumer acking in order); the ids left to ack one by one."""
        position = delivery_ids.start
        stop = delivery_ids.stop
        while position < stop:
            run = self._run_of(position)
            if run is None:
                break
            start = position - run.first_id
            payloads = run.payloads
            acked = payloads[start : stop - run.first_id]
            # Payloads are never empty (publishers' empty messages are
            # refused), so all() tells that none of them is answered (None).
            if not all(acked):
                break
            payloads[start : start + len(acked)] = [None] * len(acked)
            self.bytes_in_flight -= total_size(acked)  # type: ignore[arg-type]
            self._in_runs -= len(acked)
            run.left -= len(acked)
            if not run.left:
                self._drop_run(run)
            position += len(acked)
        return range(position, stop)

    def _run_of(self, delivery_id: int) -> _Run | None:
        """The run `delivery_id` is unanswered in, if any."""
        for run in self._runs:
            if run.index_of(delivery_id) >= 0:
                return run
        return None

    def _out_of_run(self, delivery_id: int, run: _Run) -> Delivery:
        """Take unanswered `delivery_id` out of `run` as a Delivery (still
        counted in bytes_in_flight)."""
        delivery = run.as_delivery(delivery_id - run.first_id)
        self._in_runs -= 1
        if not run.left:
            self._drop_run(run)
        return delivery

    def _drop_run(self, run: _Run) -> None:
        """`run` has no delivery left in flight."""
        if self._runs[0] is run:
            del self._runs[0]
        else:
            self._runs.remove(run)

    def close(self) -> None:
        """Release everything at once: the connection is gone (what a group
        member had not acked goes back to its group)."""
        for subscription in list(self.subscriptions.values()):
            if subscription.give_back is not None:
                self._leave(subscription)
        for delivery in self._slots.values():
            self._timers.forget(delivery)
        for delivery in self._waiting:
            self._timers.delays.discard(delivery)
        self._slots.clear()
        self._runs.clear()
        self._in_runs = 0
        self.bytes_in_flight = 0
        self._parked = None
        self._waiting.clear()
        self._due.clear()
        self._ready.clear()
        for subscription in self.subscriptions.values():
            subscription.close()
        self.subscriptions.clear()

    # Called by the timers.

    def check_timeouts(self, ids: Iterable[int], now: float) -> None:
        """Of deliveries `ids`, those still unanswered at their deadline time out."""
        slots = self._slots
        run: _Run | None = None
        for delivery_id in ids:
            if not slots and not self._runs:
                return
            entry = slots.get(delivery_id)
            if entry is not None:
                if not entry.held and entry.deadline <= now:
                    self.timed_out(entry)
                continue
            # The ids come in order: most likely in the run of the previous one.
            if run is None or run.index_of(delivery_id) < 0:
                run = self._run_of(delivery_id)
            if run is not None and run.deadline <= now:
                # It keeps its slot (and its bytes in flight) as a Delivery.
                delivery = self._out_of_run(delivery_id, run)
                slots[delivery_id] = delivery
                self.timed_out(delivery)

    def timed_out(self, delivery: Delivery) -> None:
        """`delivery` went unanswered for the ack timeout: it keeps its slot
        for the ack delay, then goes again."""
        delivery.held = True
        self._timers.ack_timeouts += 1
        self._timers.delays.add(delivery)

    def delay_over(self, delivery: Delivery) -> None:
        """The ack delay of a nacked or timed-out `delivery` has passed."""
        if delivery.held:
            del self._slots[delivery.id]
            self.bytes_in_flight -= len(delivery.payload)
            if delivery.attempts >= self._settings.max_deliveries:
                self._give_up(delivery, "timed out")
            elif not delivery.subscription.active:
                pass
            elif self.paused:
                # Not sent again into a full connection: it goes on resume, in turn.
                self._timers.redeliveries += 1
                self._due.append(delivery)
            else:
                self._timers.redeliveries += 1
                self._dispatch(delivery)
        else:
            del self._waiting[delivery]
            if delivery.subscription.active:
                self._timers.redeliveries += 1
                self._due.append(delivery)
        self._pump()

    # The pump.

    def _wake(self, subscription: Subscription) -> None:
        if subscription.active and not subscription.queued:
            subscription.queued = True
            self._ready.append(subscription)
            self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        slots = self._slots
        capacity = self.capacity
        max_bytes = self.max_bytes
        next_delivery = self._next
        send = self._send
        timeouts = self._timers.timeouts
        deadline = timeouts.deadline()  # one clock reading for the whole pump
        first_new_id = self._next_id
        sent_again: list[int] | None = None
        ready = self._ready
        max_waiting = self._settings.max_waiting
        max_delayed = self._settings.max_delayed
        try:
            while len(slots) + self._in_runs < capacity and not self.paused:
                if (
                    capacity > 1  # a run of one saves nothing
                    and len(ready) == 1
                    and self._parked is None
                    and not self._due
                    and len(self._waiting) < max_waiting
                    and self._later < max_delayed
                    and ready[0].takes_runs
                    and ready[0].active
                    and ready[0].on_done is None
                ):
                    # One subscription with messages ready takes no turns:
                    # what it read ahead goes as a run.
                    if self._send_a_run(ready[0], capacity - self.in_flight, deadline):
                        continue
                    break
                next_one = next_delivery()
                if next_one is None:
                    break
                delivery = next_one
                size = len(delivery.payload)
                if (slots or self._in_runs) and self.bytes_in_flight + size > max_bytes:
                    self._parked = delivery
                    break
                # What _dispatch does, inline: this loop runs once per delivery.
                if delivery.id < 0:
                    delivery.id = self._next_id
                    self._next_id = (self._next_id + 1) & 0xFFFFFFFF
                elif sent_again is None:
                    sent_again = [delivery.id]
                else:
                    sent_again.append(delivery.id)
                delivery.attempts += 1
                delivery.held = False
                delivery.deadline = deadline
                slots[delivery.id] = delivery
                self.bytes_in_flight += size
                send(delivery)
        finally:
            self._pumping = False
            if self._next_id != first_new_id:
                timeouts.add_run(deadline, self, first_new_id, self._next_id)
            if sent_again:
                timeouts.add_again(deadline, self, sent_again)
        self._flush()

    def _send_a_run(self, subscription: Subscription, room: int, deadline: float) -> bool:
        """Send up to `room` of what `subscription` has next, as first
        deliveries; False once the pump should stop (the subscription is
        caught up, or the byte limit is reached)."""
        run = subscription.take_run(room)
        if run is None:  # caught up: it waits, and nothing else is ready
            self._ready.popleft()
            subscription.queued = False
            return False
        offset, payloads = run
        count = len(payloads)
        send_run = self._send_run
        # all(): no corrupt record (None) among them, checked by truth, not
        # by comparing each with None (payloads are never empty; one that
        # were would only take the slower path below).
        if (
            send_run is not None
            and self._next_id + count <= _ID_LIMIT
            and all(payloads)
            and not (subscription.topic.log.headered and any_timed(payloads))
        ):
            total = total_size(payloads)  # type: ignore[arg-type]
            if total <= RUN_BYTES and self.bytes_in_flight + total <= self.max_bytes:
                # All of it goes, as one record: no Python step per delivery.
                first_id = self._next_id
                self._runs.append(_Run(subscription, offset, first_id, payloads, deadline))
                self._in_runs += count
                self._next_id = (first_id + count) & 0xFFFFFFFF
                self.bytes_in_flight += total
                send_run(subscription, offset, first_id, payloads)  # type: ignore[arg-type]
                return True
        return self._send_one_by_one(subscription, offset, payloads, deadline)

    def _send_one_by_one(
        self, subscription: Subscription, offset: int, payloads: list[bytes | None], deadline: float
    ) -> bool:
        """A run with a corrupt record in it, near the byte limits, or with
        ids wrapping: delivery by delivery; what is not sent goes back."""
        slots = self._slots
        send = self._send
        max_bytes = self.max_bytes
        next_id = self._next_id
        in_flight_bytes = self.bytes_in_flight
        run_end = in_flight_bytes + RUN_BYTES
        left = len(payloads)
        full = False
        for payload in payloads:
            if payload is None or (
                type(payload) is Headered and self._timed(subscription, offset, payload, 0)
            ):  # a corrupt record (never served), or expired or delayed
                offset += 1
                left -= 1
                continue
            if in_flight_bytes >= run_end:
                break  # the rest after the pump looks whether the connection is full
            size = len(payload)
            if (slots or self._in_runs) and in_flight_bytes + size > max_bytes:
                full = True
                break
            delivery = Delivery(subscription, offset, payload, 1, next_id, deadline)
            slots[next_id] = delivery
            send(delivery)
            next_id = (next_id + 1) & 0xFFFFFFFF
            in_flight_bytes += size
            offset += 1
            left -= 1
        self._next_id = next_id
        self.bytes_in_flight = in_flight_bytes
        if left:
            subscription.untake(left)
        return not full

    def _next(self) -> Delivery | None:
        parked = self._parked
        if parked is not None:
            self._parked = None
            if parked.subscription.active:
                return parked
        while self._due:
            delivery = self._due.popleft()
            if delivery.subscription.active and not (
                type(delivery.payload) is Headered and self._expired_now(delivery)
            ):
                return delivery
        later = self._later
        settings = self._settings
        if len(self._waiting) >= settings.max_waiting or (later and later >= settings.max_delayed):
            return None
        ready = self._ready
        while ready:
            subscription = ready.popleft()
            item = subscription.take() if subscription.active else None
            if item is None:
                subscription.queued = False
                continue
            ready.append(subscription)
            if type(item[1]) is Headered and self._timed(
                subscription, item[0], item[1], item[2] if len(item) > 2 else 0
            ):
                continue
            return Delivery(subscription, *item)
        return None

    # Delays and expiry (broker.core.timing).

    def _timed(
        self, subscription: Subscription, offset: int, payload: bytes, attempts: int
    ) -> bool:
        """Whether a message about to go is held back: expired (skipped,
        counted, dead-lettered if so set), or delayed (held until due)."""
        timing = timing_of(payload)
        if timing is None:
            return False
        not_before, expires = timing
        timers = self._timers
        now = timers.clock.seconds()
        if expires <= now:
            self._expire(Delivery(subscription, offset, payload, attempts))
            return True
        if not_before > now:
            timers.delayed += 1
            self._later += 1
            timers.later.add(not_before, Delivery(subscription, offset, payload, attempts))
            return True
        return False

    def _expired_now(self, delivery: Delivery) -> bool:
        """Whether a delivery about to go again has expired meanwhile (then
        it is done with)."""
        timing = timing_of(delivery.payload)
        if timing is None or timing[1] > self._timers.clock.seconds():
            return False
        self._expire(delivery)
        return True

    def _expire(self, delivery: Delivery) -> None:
        self._timers.expired += 1
        if self._settings.dead_letter_expired:
            self._give_up(delivery, "expired")
            return
        on_done = delivery.subscription.on_done
        if on_done is not None:
            on_done(delivery)  # a group, a durable consumer: done with it

    def came_due(self, delivery: Delivery) -> None:
        """A delayed delivery is due: it goes next, as a first delivery (to
        another member of its group if its own left meanwhile)."""
        self._later -= 1
        subscription = delivery.subscription
        if subscription.active:
            self._due.append(delivery)
            self._pump()
        elif subscription.give_back is not None:
            subscription.give_back(delivery)

    def _dispatch(self, delivery: Delivery) -> None:
        if delivery.id < 0:
            delivery.id = self._next_id
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        delivery.attempts += 1
        delivery.held = False
        timeouts = self._timers.timeouts
        delivery.deadline = deadline = timeouts.deadline()
        self._slots[delivery.id] = delivery
        self.bytes_in_flight += len(delivery.payload)
        timeouts.add_again(deadline, self, [delivery.id])
        self._send(delivery)

    def _give_up(self, delivery: Delivery, reason: str) -> None:
        self._dropped(delivery, reason)
        on_done = delivery.subscription.on_done
        if on_done is not None:
            on_done(delivery)

    def _forget_waiting(self, delivery: Delivery) -> None:
        self._waiting.pop(delivery, None)
        self._timers.delays.discard(delivery)

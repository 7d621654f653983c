"""Publisher confirms: every publish answered, in publish order, once stored.

A confirming publisher gets exactly one answer per publish frame: a
Confirmed run (the next `count` publishes, stored at consecutive offsets of
one topic) or an Error. Answers of one read are computed together; they are
sent once the logs have committed what they confirm (under --fsync always,
once it is on disk), and never before the answers of an earlier read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, gatherResults

from broker.wire import encode_confirmed, encode_error

SYNC_FAILED = "could not store message: sync to disk failed"


@dataclass(slots=True)
class Answer:
    """`count` publishes confirmed from `first_offset`, or one refused with `error`."""

    count: int = 1
    first_offset: int = 0
    error: str | None = None


def answers_in_order(
    order: Sequence[tuple[str, bool]], firsts: dict[str, int | str]
) -> list[Answer]:
    """Answers for one read's publishes.

    `order` lists each publish in stream order as (topic, True), or
    (error text, False) if it was refused as it was read; `firsts` maps each
    topic to the offset its batch was stored at, or to the error that refused
    the whole batch. A topic's publishes got consecutive offsets in order.
    """
    answers: list[Answer] = []
    next_offset = dict(firsts)
    last_topic: str | None = None
    for text, is_topic in order:
        outcome = next_offset[text] if is_topic else text
        if isinstance(outcome, str):
            answers.append(Answer(error=outcome))
            last_topic = None
            continue
        next_offset[text] = outcome + 1
        if text == last_topic:
            answers[-1].count += 1
        else:
            answers.append(Answer(first_offset=outcome))
            last_topic = text
    return answers


class ConfirmQueue:
    """Sends answers in order, each batch once its logs have committed it."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._pending: deque[list] = deque()  # [answers, ready, sync failed]

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self, answers: list[Answer] | Deferred[list[Answer]], committed: list[Deferred[None]]
    ) -> None:
        """Queue `answers` (or a Deferred of them: a networked store gives out
        offsets later); send them once every Deferred in `committed` fired."""
        waiting = list(committed)
        entry: list = [answers, False, False]
        if isinstance(answers, Deferred):
            waiting.append(answers.addCallback(lambda known: entry.__setitem__(0, known)))
        self._pending.append(entry)
        if waiting:
            gatherResults(waiting, consumeErrors=True).addCallbacks(
                lambda _: self._ready(entry, False), lambda _: self._ready(entry, True)
            )
        else:
            entry[1] = True
        self._drain()

    def close(self) -> None:
        self._pending.clear()

    def _ready(self, entry: list, failed: bool) -> None:
        entry[1] = True
        entry[2] = failed
        self._drain()

    def _drain(self) -> None:
        pending = self._pending
        while pending and pending[0][1]:
            answers, _, failed = pending.popleft()
            self._write(b"".join(_encode(answer, failed) for answer in answers))


def _encode(answer: Answer, sync_failed: bool) -> bytes:
    if answer.error is not None:
        return encode_error(answer.error)
    if sync_failed:
        return encode_error(SYNC_FAILED) * answer.count
    return encode_confirmed(answer.count, answer.first_offset)

"""Publisher confirms: every publish answered once stored, in publish order
or, where the client asked ("confirm_order": "topic"), in order per topic.

A confirming publisher gets exactly one answer per publish frame: a
Confirmed run (the next `count` publishes, stored at consecutive offsets of
one topic) or an Error. Answers of one read are computed together; they are
sent once the logs have committed what they confirm (under --fsync always,
once it is on disk), and never before the answers of an earlier read.

By topic, each answer names the publish it answers (its sequence on the
connection, from 0): a ConfirmedAt run or a RefusedAt. Answers then wait
only for earlier answers of their own topic (their lane), so that a topic
whose store hangs (a Redis shard failing over) holds back no other topic's.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from twisted.internet.defer import Deferred, gatherResults

from broker.wire import encode_confirmed, encode_confirmed_at, encode_error, encode_refused_at

SYNC_FAILED = "could not store message: sync to disk failed"


@dataclass(slots=True)
class Answer:
    """`count` publishes confirmed from `first_offset`, or one refused with `error`."""

    count: int = 1
    first_offset: int = 0
    error: str | None = None
    sequence: int = -1
    """The first publish answered, counted from 0 on the connection (by topic)."""


Outcome = int | str | list[int | str]
"""What became of one topic's publishes of a read: stored at consecutive
offsets from an int, refused with an error's text, or, one by one, stored
at the offset listed (some were stored already: a message id seen before)
or refused with the error listed (a compacted topic's key check)."""


def answers_in_order(order: Sequence[tuple[str, bool]], firsts: dict[str, Outcome]) -> list[Answer]:
    """Answers for one read's publishes.

    `order` lists each publish in stream order as (topic, True), or
    (error text, False) if it was refused as it was read; `firsts` maps each
    topic to the outcome of its batch (Outcome), its publishes in order.
    """
    if any(isinstance(outcome, list) for outcome in firsts.values()):
        return _answers_listed(order, firsts)
    answers: list[Answer] = []
    next_offset = cast(dict[str, int | str], dict(firsts))  # (no list among them)
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


def _answers_listed(order: Sequence[tuple[str, bool]], firsts: dict[str, Outcome]) -> list[Answer]:
    """`answers_in_order` where some topic's outcome is listed publish by
    publish (the rarer case: a message id seen before, a key refused): each
    outcome taken in turn, a run only where offsets follow each other."""
    outcomes = {topic: _each(outcome) for topic, outcome in firsts.items()}
    answers: list[Answer] = []
    last_topic: str | None = None
    for text, is_topic in order:
        outcome = next(outcomes[text]) if is_topic else text
        if isinstance(outcome, str):
            answers.append(Answer(error=outcome))
            last_topic = None
            continue
        last = answers[-1] if answers else None
        if text == last_topic and last is not None and last.first_offset + last.count == outcome:
            last.count += 1
        else:
            answers.append(Answer(first_offset=outcome))
            last_topic = text
    return answers


def _each(outcome: Outcome) -> Iterator[int | str]:
    """An outcome publish by publish."""
    if isinstance(outcome, list):
        return iter(outcome)
    return itertools.count(outcome) if isinstance(outcome, int) else itertools.repeat(outcome)


def answers_of_topic(sequences: list[int], outcome: Outcome) -> list[Answer]:
    """Answers by sequence for one topic's publishes of one read (`sequences`,
    ascending), by the outcome of their batch (Outcome)."""
    answers: list[Answer] = []
    if isinstance(outcome, str):
        return [Answer(error=outcome, sequence=sequence) for sequence in sequences]
    if isinstance(outcome, int):
        for index, sequence in enumerate(sequences):
            last = answers[-1] if answers else None
            if last is not None and last.sequence + last.count == sequence:
                last.count += 1
            else:
                answers.append(Answer(first_offset=outcome + index, sequence=sequence))
        return answers
    for sequence, offset in zip(sequences, outcome, strict=True):
        if isinstance(offset, str):
            answers.append(Answer(error=offset, sequence=sequence))
            continue
        last = answers[-1] if answers else None
        if (
            last is not None
            and last.error is None
            and last.sequence + last.count == sequence
            and last.first_offset + last.count == offset
        ):
            last.count += 1
        else:
            answers.append(Answer(first_offset=offset, sequence=sequence))
    return answers


class ConfirmQueue:
    """Sends answers in order, each batch once its logs have committed it:
    one lane for all (publish order), or one lane per topic with `by_topic`."""

    def __init__(self, write: Callable[[bytes], None], by_topic: bool = False) -> None:
        self._write = write
        self.by_topic = by_topic
        self._lanes: dict[str | None, deque[list]] = {}  # [answers, ready, sync failed]

    def __len__(self) -> int:
        return sum(map(len, self._lanes.values()))

    def add(
        self,
        answers: list[Answer] | Deferred[list[Answer]],
        committed: list[Deferred[None]],
        lane: str | None = None,
    ) -> None:
        """Queue `answers` (or a Deferred of them: a networked store gives out
        offsets later) behind the earlier answers of `lane`; send them once
        every Deferred in `committed` fired."""
        waiting = list(committed)
        entry: list = [answers, False, False]
        if isinstance(answers, Deferred):
            waiting.append(answers.addCallback(lambda known: entry.__setitem__(0, known)))
        pending = self._lanes.get(lane)
        if pending is None:
            pending = self._lanes[lane] = deque()
        pending.append(entry)
        if waiting:
            gatherResults(waiting, consumeErrors=True).addCallbacks(
                lambda _: self._ready(lane, entry, False), lambda _: self._ready(lane, entry, True)
            )
        else:
            entry[1] = True
        self._drain(lane)

    def close(self) -> None:
        self._lanes.clear()

    def _ready(self, lane: str | None, entry: list, failed: bool) -> None:
        entry[1] = True
        entry[2] = failed
        self._drain(lane)

    def _drain(self, lane: str | None) -> None:
        pending = self._lanes.get(lane)
        if pending is None:
            return
        encode = _encode_at if self.by_topic else _encode
        while pending and pending[0][1]:
            answers, _, failed = pending.popleft()
            self._write(b"".join(encode(answer, failed) for answer in answers))
        if not pending:
            del self._lanes[lane]


def _encode(answer: Answer, sync_failed: bool) -> bytes:
    if answer.error is not None:
        return encode_error(answer.error)
    if sync_failed:
        return encode_error(SYNC_FAILED) * answer.count
    return encode_confirmed(answer.count, answer.first_offset)


def _encode_at(answer: Answer, sync_failed: bool) -> bytes:
    if answer.error is not None:
        return encode_refused_at(answer.sequence, answer.error)
    if sync_failed:
        first = answer.sequence
        return b"".join(encode_refused_at(first + n, SYNC_FAILED) for n in range(answer.count))
    return encode_confirmed_at(answer.sequence, answer.count, answer.first_offset)

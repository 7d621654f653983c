"""A publisher's session: publishes batched per read and topic, and, for a
confirming publisher, an answer to each, in order, once committed. With a
users file, a publish to a topic the user may not publish to is refused on
its own (an Error, or a failed confirm in its place); the check is made once
per topic of a read's batch, not once per message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from broker.core.confirms import (
    Answer,
    ConfirmQueue,
    Outcome,
    answers_in_order,
    answers_of_topic,
)
from broker.server.session import Session
from broker.server.transport import direct_writer
from broker.wire import ERR_EMPTY_MESSAGE, ERR_PERMISSION_DENIED, encode_error
from broker.wire.headers import Headered, message_key

if TYPE_CHECKING:
    from broker.security.permissions import Rules
    from broker.security.users import User
    from broker.server.connection import Connection

log = Logger()


class PublisherSession(Session):
    """Appends what each read brings, one batch per topic."""

    role = "publisher"

    def __init__(
        self,
        protocol: Connection,
        confirms: bool,
        may_publish: Rules | None = None,
        by_topic: bool = False,
    ) -> None:
        super().__init__(protocol)
        self._may_publish = may_publish
        """The user's publish rules; None: no users file, every topic allowed."""
        self._batch: dict[str, list[bytes]] = {}
        self._headered: set[str] = set()
        """The topics of this read's batch some publish to which has headers."""
        # Answers go out at once when nothing waits to be written before them.
        self._confirms = (
            ConfirmQueue(direct_writer(protocol.transport), by_topic) if confirms else None
        )
        self._sequence = 0
        """How many publishes were answered before this read's (confirms by topic)."""
        self.messages = 0
        self.bytes = 0
        # This read's publishes in order, for confirms: (topic, True) or (error, False).
        self._order: list[tuple[str, bool]] = []

    def published(self, topic: str, payloads: list[bytes]) -> None:
        if not all(payloads):
            # The seed ignores empty messages; a confirming publisher is
            # told, in their place. One with a key is a deletion (a
            # compacted topic's tombstone): taken.
            for payload in payloads:
                if payload or message_key(payload) is not None:
                    self._take(topic, [payload])
                elif self._confirms is not None:
                    self.refused(ERR_EMPTY_MESSAGE)
            return
        # `_take`, inline: this runs once per publish of the plain protocol.
        if self._confirms is not None:
            self._order += [(topic, True)] * len(payloads)
        # A run is all with headers or all without (the decoder's runs).
        if type(payloads[0]) is Headered:
            self._headered.add(topic)
        batch = self._batch.get(topic)
        if batch is None:
            self._batch[topic] = payloads
        else:
            batch += payloads

    def _take(self, topic: str, payloads: list[bytes]) -> None:
        if self._confirms is not None:
            self._order += [(topic, True)] * len(payloads)
        if type(payloads[0]) is Headered:
            self._headered.add(topic)
        batch = self._batch.get(topic)
        if batch is None:
            self._batch[topic] = payloads
        else:
            batch += payloads

    def refused(self, reason: str, detail: str | None = None) -> None:
        if self._confirms is None:
            super().refused(reason, detail)
            return
        self.protocol.log_refusal(detail or reason)
        self.broker.stats.refused(reason)
        self._order.append((reason, False))  # answered in its place

    def permissions_changed(self, user: User) -> None:
        self._may_publish = user.publish

    def end_of_read(self) -> None:
        if self._batch or self._order:
            self._publish_batch()

    def close(self) -> None:
        if self._confirms is not None:
            self._confirms.close()

    def _publish_batch(self) -> None:
        """Append what this read brought, one batch per topic; answer a
        confirming publisher once it is committed. A publisher whose user
        may publish nothing is closed once its refusals are answered: it
        holds a connection for nothing."""
        self._append_batch()
        may_publish = self._may_publish
        if may_publish is not None and not may_publish.allow:
            self.protocol.close()

    def _append_batch(self) -> None:
        batch = self._batch
        self._batch = {}
        headered = self._headered
        if headered:
            self._headered = set()
        confirms = self._confirms
        answered = confirms is not None
        may_publish = self._may_publish
        append = self.broker.append
        peer = self.peer
        firsts: dict[str, Outcome] = {}
        committed_of: dict[str, Deferred[None]] = {}
        stored_later: dict[str, Deferred[Any]] = {}
        for topic, payloads in batch.items():
            # (commit, headered: positional, the cheaper call on this path)
            appended = append(topic, payloads, may_publish, peer, answered, topic in headered)
            refusal = appended.refusal
            if refusal is not None:
                firsts[topic] = refusal
                if refusal.startswith(ERR_PERMISSION_DENIED):
                    self.protocol.log_refusal(f"{refusal} ({len(payloads)} message(s))")
                if not answered:
                    # Without confirms, one Error per message, as it counts them.
                    self.protocol.transport.write(encode_error(refusal) * len(payloads))
                continue
            self.messages += len(payloads)
            self.bytes += appended.size
            first = appended.first  # (a list: where each went, some stored already)
            # (isinstance of int, not of Deferred: an ABC's check costs more.)
            if isinstance(first, (int, list)):
                firsts[topic] = first
                if appended.committed is not None:
                    committed_of[topic] = appended.committed
                continue
            assert first is not None  # a networked store answers later:
            if not answered:
                first.addCallback(self._unanswered_later, len(payloads))
            stored_later[topic] = first
        if confirms is not None:
            order, self._order = self._order, []
            if confirms.by_topic:
                self._answer_by_topic(order, firsts, stored_later, committed_of)
                return
            committed = list(committed_of.values())
            if not stored_later:
                confirms.add(answers_in_order(order, firsts), committed)
                return

            def answers(outcomes: list[Outcome]) -> list[Answer]:
                firsts.update(zip(stored_later, outcomes, strict=True))
                return answers_in_order(order, firsts)

            confirms.add(gatherResults(list(stored_later.values())).addCallback(answers), committed)

    def _answer_by_topic(
        self,
        order: list[tuple[str, bool]],
        firsts: dict[str, Outcome],
        stored_later: dict[str, Deferred[Any]],
        committed_of: dict[str, Deferred[None]],
    ) -> None:
        """Each topic's answers in a lane of their own, waiting only for that
        topic's append; refusals made as the read was parsed go at once."""
        assert self._confirms is not None
        confirms = self._confirms
        sequences: dict[str, list[int]] = {}
        refusals: list[Answer] = []
        sequence = self._sequence
        for text, is_topic in order:
            if is_topic:
                sequences.setdefault(text, []).append(sequence)
            else:
                refusals.append(Answer(error=text, sequence=sequence))
            sequence += 1
        self._sequence = sequence
        if refusals:
            confirms.add(refusals, [])
        for topic, numbers in sequences.items():
            committed = [committed_of[topic]] if topic in committed_of else []
            later = stored_later.get(topic)
            if later is None:
                confirms.add(answers_of_topic(numbers, firsts[topic]), committed, topic)
            else:
                confirms.add(_answers_once(later, numbers), committed, topic)

    def _unanswered_later(self, outcome: Outcome, count: int) -> Outcome:
        """A publisher without confirms is told of a batch the store refused
        later by one Error per message."""
        if isinstance(outcome, str):
            self.protocol.transport.write(encode_error(outcome) * count)
        return outcome


def _answers_once(stored: Deferred[Any], sequences: list[int]) -> Deferred[list[Answer]]:
    """The answers of one topic's publishes once the store said where they went."""
    return stored.addCallback(lambda outcome: answers_of_topic(sequences, outcome))

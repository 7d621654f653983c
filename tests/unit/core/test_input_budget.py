"""The broker-wide budget for incomplete frames, as a pure piece."""

from __future__ import annotations

from broker.core.input_budget import InputBudget


class Reader:
    def __init__(self, name: str) -> None:
        self.name = name
        self.paused = False

    def pause_input(self) -> None:
        assert not self.paused
        self.paused = True

    def resume_input(self) -> None:
        assert self.paused
        self.paused = False


def test_under_the_limit_nobody_is_paused():
    budget = InputBudget(100)
    readers = [Reader(str(i)) for i in range(4)]
    for reader in readers:
        budget.update(reader, 25, 75)
    assert budget.total == 100 and not any(r.paused for r in readers)


def test_past_the_limit_every_reader_that_holds_more_is_paused():
    budget = InputBudget(100)
    a, b, c = Reader("a"), Reader("b"), Reader("c")
    budget.update(a, 60, 40)
    budget.update(b, 30, 70)
    assert not a.paused and not b.paused
    budget.update(c, 20, 80)  # 110: c pushed it over
    assert c.paused
    budget.update(b, 40, 60)  # b reads once more and is paused too
    assert b.paused and not a.paused
    assert budget.total == 120  # over by at most one read per connection


def test_completed_frames_let_the_closest_to_completion_read_again():
    budget = InputBudget(100)
    a, b, c = Reader("a"), Reader("b"), Reader("c")
    budget.update(a, 50, 10)
    budget.update(b, 40, 60)
    budget.update(c, 30, 5)  # 120: c paused
    budget.update(b, 45, 55)  # b paused
    assert (a.paused, b.paused, c.paused) == (False, True, True)
    budget.update(a, 0, 0)  # a's frame completed: 75 held
    # c misses 5 (75 + 5 fits); b would need 55 more (135): stays paused.
    assert (b.paused, c.paused) == (True, False)
    budget.update(c, 0, 0)  # 45 held: b's 55 fit now
    assert not b.paused


def test_with_nobody_read_the_closest_to_completion_reads_anyway():
    budget = InputBudget(100)
    a, b = Reader("a"), Reader("b")
    budget.update(a, 90, 900)
    budget.update(b, 20, 980)  # b paused; a still reads
    assert b.paused and not a.paused
    budget.update(a, 95, 895)  # a paused too: nobody would read, so one goes on
    assert a.paused != b.paused
    assert budget.paused == 1


def test_a_paused_reader_that_goes_away_frees_its_share():
    budget = InputBudget(10)
    a, b = Reader("a"), Reader("b")
    budget.update(a, 8, 100)
    budget.update(b, 8, 100)
    assert b.paused
    budget.remove(a)
    assert not b.paused
    budget.remove(b)
    assert budget.total == 0 and budget.paused == 0

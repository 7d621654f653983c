"""Topic patterns and the trie that finds the patterns a topic matches,
against the plain matcher, whatever patterns are added and removed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.subjects import PatternIndex, is_pattern, matches
from tests.strategies import PATTERNS, TOPICS


@settings(max_examples=150, deadline=None)
@given(
    held=st.lists(st.tuples(PATTERNS, st.integers(0, 5)), max_size=20),
    removed=st.lists(st.integers(0, 19), max_size=10),
    topics=st.lists(TOPICS, min_size=1, max_size=10),
)
def test_the_index_finds_exactly_the_matching_holders(held, removed, topics):
    index: PatternIndex[tuple[str, int]] = PatternIndex()
    live = set()
    for pattern, number in held:
        index.add(pattern, (pattern, number))
        live.add((pattern, number))
    for position in removed:
        if position < len(held):
            pattern, number = held[position]
            index.remove(pattern, (pattern, number))
            live.discard((pattern, number))
    assert len(index) == len(live)
    for topic in topics:
        expected = {holder for holder in live if matches(holder[0], topic)}
        found = index.match(topic)
        assert set(found) == expected and len(found) == len(expected)


def test_edge_cases_of_star_and_rest():
    index: PatternIndex[str] = PatternIndex()
    for pattern in [">", "orders.>", "orders.*", "*.eu", "orders.eu", "*", "orders.*.paris"]:
        index.add(pattern, pattern)
    assert sorted(index.match("orders")) == ["*", ">"]
    assert sorted(index.match("orders.eu")) == sorted(
        [">", "orders.>", "orders.*", "*.eu", "orders.eu"]
    )
    assert sorted(index.match("orders.eu.paris")) == sorted([">", "orders.>", "orders.*.paris"])
    index.remove("orders.*.paris", "orders.*.paris")
    index.remove("not.held", "x")
    assert sorted(index.match("orders.eu.paris")) == [">", "orders.>"]
    assert is_pattern("orders.*") and is_pattern(">") and not is_pattern("orders.eu*")

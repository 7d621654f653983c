"""Hypothesis strategies shared by tests: topic names and NATS-style
patterns over a few tokens, so that matches are frequent."""

from __future__ import annotations

from hypothesis import strategies as st

TOKENS = st.sampled_from(["a", "b", "orders", "eu"])
TOPICS = st.lists(TOKENS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.builds(
    lambda tokens, tail: ".".join(tokens + tail),
    st.lists(TOKENS | st.just("*"), min_size=0, max_size=3),
    st.sampled_from([[], [">"], ["*"]]),
).filter(bool)

"""MQTT topics and filters as this broker's names (broker.mqtt.topics)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.mqtt.topics import (
    InvalidTopic,
    starts_wild,
    to_broker_filters,
    to_broker_topic,
    to_mqtt_topic,
)


@pytest.mark.parametrize(
    ("mqtt", "name"),
    [
        ("orders/eu", "orders.eu"),
        ("orders", "orders"),
        ("/orders", "/.orders"),
        ("orders/", "orders./"),
        ("a//b", "a./.b"),
        ("v1.0/plant", "v1//0.plant"),
        ("/", "/./"),
    ],
)
def test_topic_names_map_as_nats_maps_them(mqtt, name):
    assert to_broker_topic(mqtt) == name
    assert to_mqtt_topic(name) == mqtt


@given(
    st.lists(
        st.text(
            st.characters(blacklist_characters="\x00/+#", blacklist_categories=("Cs",)), max_size=6
        ).filter(lambda level: level not in ("*", ">")),
        min_size=1,
        max_size=6,
    )
    .map("/".join)
    .filter(lambda topic: topic and not topic.startswith("$") and len(topic.encode()) < 120)
)
def test_every_mqtt_topic_comes_back_as_it_went(topic):
    assert to_mqtt_topic(to_broker_topic(topic)) == topic


@pytest.mark.parametrize(
    ("topic_filter", "names"),
    [
        ("orders/+/paid", ["orders.*.paid"]),
        ("orders/#", ["orders", "orders.>"]),
        ("#", [">"]),
        ("+", ["*"]),
        ("$share/g/jobs/#", ["$share/g/jobs", "$share/g/jobs.>"]),
        ("$SYS/#", ["$SYS", "$SYS.>"]),
    ],
)
def test_filters_map_to_topics_and_patterns(topic_filter, names):
    assert to_broker_filters(topic_filter) == names


@pytest.mark.parametrize(
    "bad", ["a/#/b", "a+/b", "a/b#", "", "$share/g", "$share//a", "a/*/b", ">"]
)
def test_filters_that_are_not_valid_are_refused(bad):
    with pytest.raises(InvalidTopic):
        to_broker_filters(bad)


@pytest.mark.parametrize("bad", ["a/+", "#", "", "$SYS/x", "a/>"])
def test_names_a_client_may_not_publish_to_are_refused(bad):
    with pytest.raises(InvalidTopic):
        to_broker_topic(bad)


def test_a_filter_starting_with_a_wildcard_is_told():
    assert starts_wild("#") and starts_wild("+/a") and starts_wild("$share/g/#")
    assert not starts_wild("a/#") and not starts_wild("$SYS/#")

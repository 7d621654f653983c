"""Every class that declares an interface provides it (zope.interface's
verifyObject checks the methods and attributes, not just the declaration)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from broker.client.reconnecting import _ReportingEndpoint
from broker.log import (
    FileStore,
    FileStoreSettings,
    IMessageLog,
    IMessageStore,
    ISharedGroupLog,
    MemoryLog,
    MemoryStore,
)
from broker.log.redis import RedisLog, RedisStore
from broker.log.redis_settings import RedisStoreSettings, parse_redis_url
from broker.server import BrokerFactory
from broker.testing import InMemoryBroker
from broker.transport import OutputBackpressure


def test_message_logs_provide_imessagelog(tmp_path):
    assert verifyObject(IMessageLog, MemoryLog())
    store = FileStore(tmp_path, FileStoreSettings(), reactor)
    try:
        assert verifyObject(IMessageLog, store.open("t"))
    finally:
        store.close()


def test_message_stores_provide_imessagestore(tmp_path):
    """Memory, files and Redis behind one interface (made, not opened: the
    Redis store connects only when started)."""
    redis = RedisStore(RedisStoreSettings(parse_redis_url("redis://127.0.0.1:1")))
    for store in (MemoryStore(), FileStore(tmp_path, FileStoreSettings(), reactor), redis):
        assert verifyObject(IMessageStore, store)
        assert store.status()["kind"] == store.kind
    assert redis.waiting_for() == "Redis"  # never started


def test_only_the_redis_log_keeps_consumer_groups_itself():
    assert verifyClass(ISharedGroupLog, RedisLog)
    assert not ISharedGroupLog.providedBy(MemoryLog())


def test_the_output_backpressure_is_a_push_producer():
    protocol = BrokerFactory(clock=Clock()).buildProtocol(None)
    assert verifyObject(IPushProducer, OutputBackpressure(protocol))


def test_the_client_endpoints_are_stream_client_endpoints():
    tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", 1)
    assert verifyObject(IStreamClientEndpoint, _ReportingEndpoint(tcp, lambda problem: None))
    assert verifyObject(IStreamClientEndpoint, InMemoryBroker().endpoint)

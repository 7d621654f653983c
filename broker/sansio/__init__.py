"""The client's protocol logic with no I/O of its own, shared by every client
the project ships: the Twisted one (broker.client), the asyncio one
(broker.aio) and the blocking one (broker.sync). Bytes come in through
`receive`, frames go out through a `write` function the client gives, and
what happened is told through callbacks; no socket, no event loop, no
Twisted, so that each client is a thin adapter and none can drift.

messages.py       Message, the errors a client raises, argument checks
connection.py     one connection's state: Hello, requests and their answers,
                  deliveries and their acks, confirms
publishing.py     publishes waiting for a connection or for their confirm,
                  resent after a reconnect until answered
subscriptions.py  what a client subscribed to, with which handler, and
                  where each topic resumes after a reconnect
"""

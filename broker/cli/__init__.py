"""The `broker` command: publish, subscribe, run and measure the broker,
and manage its users, from a terminal.

    broker pub orders "hello"                  # prints the offset it was stored at
    broker sub orders --from beginning --count 10
    broker serve --port 3000                   # twistd broker, for those who do not know twistd
    broker users add alice --file users.toml --publish 'orders.>'
    broker bench fanout --messages 100000
    broker topics ls                           # the admin API (docs/admin.md)
    broker top                                 # a live view: rates, topics

Where the broker is and who the command is to it come from `--url`,
`--user`, `--password` (or `--token`) and `--ca`, or BROKER_URL,
BROKER_USER, BROKER_PASSWORD, BROKER_TOKEN and BROKER_CA.

context.py   the connection options every messaging command shares
messaging.py pub and sub
running.py   serve and bench
admin.py     topics, consumers, conns: the admin API on the monitor port
top.py       top: a live view from the monitor
contexts.py  context: named brokers and credentials (--context, BROKER_CONTEXT)
main.py      the group, and exit codes that mean something
"""

from broker.cli.main import broker, main

__all__ = ["broker", "main"]

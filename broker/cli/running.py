"""`broker serve` (twistd broker, for those who do not know twistd) and
`broker bench` (broker-bench)."""

from __future__ import annotations

import sys

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="Run the broker in the foreground: the options of `twistd broker` "
    "(see `broker serve --help`), logging to the terminal.",
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def serve(options: tuple[str, ...]) -> None:
    from twisted.scripts.twistd import run

    sys.argv = ["broker serve", "--nodaemon", "--pidfile=", "broker", *options]
    run()


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="Measure a broker: throughput, latency, memory (see `broker bench --help`).",
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def bench(arguments: tuple[str, ...]) -> None:
    from broker.bench import main as bench_main

    bench_main(list(arguments))

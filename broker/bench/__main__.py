"""`python -m broker.bench`."""

from broker.bench.cli import main

main()

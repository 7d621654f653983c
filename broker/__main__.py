"""`python -m broker`: the `broker` command."""

from broker.cli import main

main()

"""A pub/sub message broker on Twisted that speaks the seed's wire protocol."""

__version__ = "0.1.0"

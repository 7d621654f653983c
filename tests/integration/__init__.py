"""Tests of the broker and the client together: in memory on a fake clock,
or on loopback in this process."""

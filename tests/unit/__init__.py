"""Tests of one piece alone: pure, fast, on a fake clock; no sockets."""

"""Tests of the real thing, started: twistd children, Redis servers, TLS,
Chromium, SIGHUP and SIGKILL."""

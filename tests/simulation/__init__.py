"""The deterministic simulator (world.py); `python -m tests.simulation --seed N`
replays one run exactly."""

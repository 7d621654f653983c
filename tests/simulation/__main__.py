"""`python -m tests.simulation --seed N [--steps K]`: replay one run exactly
(and, if it fails, the shortest run that still fails); `--seeds A-B` runs a
range and reports the steps, the faults by kind and any violation."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tests.simulation.world import Faults, Outcome, run, shortest_failing


def _run(seed: int, steps: int, crashes: float) -> Outcome:
    if not crashes:
        return run(seed, steps)
    with tempfile.TemporaryDirectory() as directory:
        return run(seed, steps, Faults(crash=crashes), Path(directory))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seed", type=int, help="one run")
    parser.add_argument("--seeds", default="0-9", help="a range of seeds, A-B")
    parser.add_argument("--steps", type=int, default=500, help="steps per run")
    parser.add_argument(
        "--crashes",
        type=float,
        default=0.0,
        help="chance per step that the broker process dies (over a file store in a "
        "temporary directory, rebuilt from its files)",
    )
    args = parser.parse_args()
    if args.seed is not None:
        seeds = [args.seed]
    else:
        low, _, high = args.seeds.partition("-")
        seeds = list(range(int(low), int(high or low) + 1))
    totals: dict[str, int] = {}
    failed = 0
    started = time.monotonic()
    for seed in seeds:
        outcome = _run(seed, args.steps, args.crashes)
        for name, value in asdict(outcome.counts).items():
            totals[name] = totals.get(name, 0) + value
        if outcome.violations:
            failed += 1
            shortest = shortest_failing(seed, outcome.steps, Faults(crash=args.crashes))
            print(
                f"seed {seed} FAILS after {outcome.steps} steps; shortest: {shortest.steps} steps"
            )
            for violation in shortest.violations[:10]:
                print(f"  {violation}")
            crashes = f" --crashes {args.crashes}" if args.crashes else ""
            print(
                f"  replay: python -m tests.simulation --seed {seed} --steps {shortest.steps}"
                + crashes
            )
    print(
        f"{len(seeds)} seed(s), {failed} failing, {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{name} {value}" for name, value in totals.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

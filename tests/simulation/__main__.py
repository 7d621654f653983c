"""`python -m tests.simulation --seed N [--steps K]`: replay one run exactly
(and, if it fails, the shortest run that still fails); `--seeds A-B` runs a
range and reports the steps, the faults by kind and any violation."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from tests.simulation.world import run, shortest_failing


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seed", type=int, help="one run")
    parser.add_argument("--seeds", default="0-9", help="a range of seeds, A-B")
    parser.add_argument("--steps", type=int, default=500, help="steps per run")
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
        outcome = run(seed, args.steps)
        for name, value in asdict(outcome.counts).items():
            totals[name] = totals.get(name, 0) + value
        if outcome.violations:
            failed += 1
            shortest = shortest_failing(seed, outcome.steps)
            print(
                f"seed {seed} FAILS after {outcome.steps} steps; shortest: {shortest.steps} steps"
            )
            for violation in shortest.violations[:10]:
                print(f"  {violation}")
            print(f"  replay: python -m tests.simulation --seed {seed} --steps {shortest.steps}")
    print(
        f"{len(seeds)} seed(s), {failed} failing, {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{name} {value}" for name, value in totals.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

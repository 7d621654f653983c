"""`python -m tests.simulation --seed N [--steps K]`: replay one run exactly
(and, if it fails, the shortest run that still fails); `--seeds A-B` runs a
range and reports the steps, the faults by kind and any violation. With
`--files`, over a file store on the simulated disk, with its faults."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from twisted.logger import globalLogBeginner

from broker.log import FsyncPolicy
from tests.simulation.disk import DiskFaults
from tests.simulation.world import Faults, run, shortest_failing


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seed", type=int, help="one run")
    parser.add_argument("--seeds", default="0-9", help="a range of seeds, A-B")
    parser.add_argument("--steps", type=int, default=500, help="steps per run")
    parser.add_argument("--files", action="store_true", help="a file store on the simulated disk")
    parser.add_argument(
        "--crashes", type=float, default=0.0, help="chance per step that the process dies"
    )
    parser.add_argument(
        "--power", type=float, default=0.0, help="chance per step that the machine loses power"
    )
    parser.add_argument(
        "--write-fails", type=float, default=0.0, help="chance that a write fails part way"
    )
    parser.add_argument("--fsync-fails", type=float, default=0.0, help="chance that an fsync fails")
    parser.add_argument(
        "--fsync", choices=[policy.value for policy in FsyncPolicy], default="always"
    )
    args = parser.parse_args()
    # The broker's log lines go to the world's observer only (it keeps the
    # errors), not to the terminal: a run's output is its counts.
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    if args.seed is not None:
        seeds = [args.seed]
    else:
        low, _, high = args.seeds.partition("-")
        seeds = list(range(int(low), int(high or low) + 1))
    faults = Faults(
        crash=args.crashes,
        power=args.power,
        disk=DiskFaults(write_fails=args.write_fails, fsync_fails=args.fsync_fails),
    )
    fsync = FsyncPolicy(args.fsync)
    options = " ".join(
        f"--{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name not in ("seed", "seeds", "steps", "files", "fsync") and value
    )
    if args.files:
        options += f" --files --fsync {args.fsync}"
    totals: dict[str, int] = {}
    failed = 0
    started = time.monotonic()
    for seed in seeds:
        outcome = run(seed, args.steps, faults, args.files, fsync)
        for name, value in asdict(outcome.counts).items():
            totals[name] = totals.get(name, 0) + value
        if outcome.violations:
            failed += 1
            shortest = shortest_failing(seed, outcome.steps, faults, args.files, fsync)
            print(
                f"seed {seed} FAILS after {outcome.steps} steps; shortest: {shortest.steps} steps"
            )
            for violation in shortest.violations[:10]:
                print(f"  {violation}")
            print(
                f"  replay: python -m tests.simulation --seed {seed} "
                f"--steps {shortest.steps} {options}".rstrip()
            )
    print(
        f"{len(seeds)} seed(s), {failed} failing, {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{name} {value}" for name, value in totals.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

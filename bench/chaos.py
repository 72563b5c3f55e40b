"""A long chaos run against ``darkroom up``: ``python bench/chaos.py --jobs 1000 --seconds 600``.

The same chaos as ``tests/chaos/test_chaos.py`` (shared code in ``harness/chaos.py``),
bounded in jobs and time. Prints the counts; exits 1 when a promise was broken.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

# The harness; it runs the repository's own code, not whatever darkroom is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.chaos import ChaosSettings, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--corrupt", type=int, help="planted corrupt images (default: 2.5%%)")
    parser.add_argument("--seconds", type=float, default=600.0, help="the whole run")
    parser.add_argument("--seed", type=int, help="replay a run's choices (default: random)")
    parser.add_argument("--workers", type=int, default=2, help="worker task loops")
    parser.add_argument("--keep", type=Path, help="keep the data and logs in this folder")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    corrupt = args.corrupt if args.corrupt is not None else max(1, args.jobs // 40)
    settings = ChaosSettings(
        jobs=args.jobs, corrupt=corrupt, seconds=args.seconds, seed=seed, workers=args.workers
    )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run_chaos(settings, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="darkroom-chaos-") as workdir:
            report = run_chaos(settings, Path(workdir))
    print(report.summary())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

"""Output-format throughput: the worker's processing of photo-like JPEGs into each format.

    python bench/output_formats.py [--images 8] [--rounds 3] [--op resize:1024x1024]

One process, no HTTP: ``process_image`` over the same preloaded images (``images.camera``,
2048x1536 q90) with ``OP,FORMAT`` for each output format, best of ``--rounds`` (the machine is
shared: the best round is the least disturbed). Prints images/s, CPU ms per image and the mean
result size per format. Bounded: images x rounds x formats calls.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "services"))

from darkroom.worker.operations import ProcessingSettings, process_image
from images import camera

FORMATS = ("jpeg", "webp", "avif", "png")


def measure(sources: list[bytes], pipeline: str, rounds: int) -> tuple[float, float, float]:
    """(images/s, CPU ms per image, mean result bytes), best round."""
    settings = ProcessingSettings()
    best: tuple[float, float, float] | None = None
    for _ in range(rounds):
        sizes = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for data in sources:
            result = io.BytesIO()
            process_image(io.BytesIO(data), result, pipeline, settings)
            sizes += result.tell()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        figures = (len(sources) / wall, cpu * 1000 / len(sources), sizes / len(sources))
        best = figures if best is None or figures[0] > best[0] else best
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--op", default="resize:1024x1024", help="steps before the format")
    args = parser.parse_args()
    sources = [camera(seed) for seed in range(args.images)]
    print(f"{args.images} photo-like 2048x1536 JPEGs, op={args.op},FORMAT, best of {args.rounds}")
    print("| output | images/s | CPU ms per image | mean result size |")
    print("|---|---|---|---|")
    for name in FORMATS:
        per_second, cpu_ms, size = measure(sources, f"{args.op},{name}", args.rounds)
        print(f"| `{name}` | {per_second:.1f} | {cpu_ms:.0f} | {size / 1024:.0f} KB |")


if __name__ == "__main__":
    main()

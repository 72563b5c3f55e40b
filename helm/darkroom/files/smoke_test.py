"""End-to-end check of a running Darkroom: upload a PNG, wait, download, compare the pixels.

The default operation swaps red and green and keeps alpha, so every output pixel must be
(G, R, B, A) of the input pixel. Used by the chart's `helm test` pod (inside the master image,
which has Pillow) and by scripts/podman-e2e.sh; only the standard library and Pillow.

    python3 smoke_test.py http://darkroom-master:3003      # the whole flow
    python3 smoke_test.py --write-sample in.png            # just the test image
    python3 smoke_test.py --verify in.png out.png          # just the pixel check

An API key, when the master requires one, comes from DARKROOM_API_KEY or the first of
DARKROOM_API_KEYS.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from PIL import Image

WIDTH, HEIGHT = 7, 5


def sample_png() -> bytes:
    """A small RGBA image whose channels all differ, with partly transparent pixels."""
    image = Image.new("RGBA", (WIDTH, HEIGHT))
    image.putdata(
        [
            ((37 * n) % 256, (91 * n + 17) % 256, (53 * n + 101) % 256, 64 + (29 * n) % 192)
            for n in range(WIDTH * HEIGHT)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def check_pixels(source: bytes, result: bytes) -> None:
    """Raise AssertionError unless result is source with red and green swapped, alpha kept."""
    before = Image.open(io.BytesIO(source)).convert("RGBA")
    after = Image.open(io.BytesIO(result))
    if after.size != before.size:
        raise AssertionError(f"result is {after.size}, expected {before.size}")
    pixels = before.tobytes()
    swapped = bytes(pixels[n + k] for n in range(0, len(pixels), 4) for k in (1, 0, 2, 3))
    expected = [tuple(swapped[n : n + 4]) for n in range(0, len(swapped), 4)]
    actual_bytes = after.convert("RGBA").tobytes()
    actual = [tuple(actual_bytes[n : n + 4]) for n in range(0, len(actual_bytes), 4)]
    wrong = [(n, e, a) for n, (e, a) in enumerate(zip(expected, actual, strict=True)) if e != a]
    if wrong:
        n, e, a = wrong[0]
        raise AssertionError(f"{len(wrong)} pixels differ; pixel {n}: expected {e}, got {a}")


def _headers() -> dict[str, str]:
    key = os.environ.get("DARKROOM_API_KEY") or os.environ.get("DARKROOM_API_KEYS", "")
    key = key.split(",")[0].strip()
    return {"X-API-Key": key} if key else {}


def _call(url: str, data: bytes | None = None, timeout: float = 30.0) -> bytes:
    headers = _headers()
    if data is not None:
        headers["Content-Type"] = "image/png"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def run_flow(master: str, timeout: float) -> None:
    master = master.rstrip("/")
    source = sample_png()
    task = _call(f"{master}/new", source).decode().strip()
    print(f"uploaded {len(source)} bytes: task {task}", flush=True)
    query = urllib.parse.urlencode({"id": task})
    deadline = time.monotonic() + timeout
    while _call(f"{master}/isReady?{query}").decode().strip() != "1":
        if time.monotonic() > deadline:
            status = _call(f"{master}/status?{query}").decode()
            raise AssertionError(f"task {task} not ready after {timeout:.0f} s: {status}")
        time.sleep(0.5)
    result = _call(f"{master}/get?{query}")
    check_pixels(source, result)
    print(f"task {task}: {len(result)} bytes, every pixel is (G, R, B) with alpha kept", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("master", nargs="?", help="base URL of the master, http://HOST:3003")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it")
    parser.add_argument("--write-sample", metavar="FILE", help="write the test PNG and stop")
    parser.add_argument("--verify", nargs=2, metavar=("INPUT", "OUTPUT"), help="check two files")
    args = parser.parse_args(argv)
    try:
        if args.write_sample:
            with open(args.write_sample, "wb") as file:
                file.write(sample_png())
        elif args.verify:
            with open(args.verify[0], "rb") as source, open(args.verify[1], "rb") as result:
                check_pixels(source.read(), result.read())
            print("every pixel is (G, R, B) with alpha kept")
        elif args.master:
            run_flow(args.master, args.timeout)
        else:
            parser.error("give the master's URL, --write-sample or --verify")
    except (AssertionError, urllib.error.URLError, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``darkroom submit``: upload an image to the master, follow the job, save the result."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import requests

POLL_SECONDS = 0.2
LONG_POLL_SECONDS = 25.0


def _error(response: requests.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body.get('title', '')}: {body.get('description', '')}"
    except ValueError:
        return f"{response.status_code} {response.text.strip()[:300]}"


def submit(
    file: Path,
    output: Path | None,
    master: str,
    op: str | None,
    timeout: float,
    api_key: str | None = None,
) -> int:
    base = f"http://{master}"
    session = requests.Session()
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    params = {"op": op} if op else {}
    try:
        with file.open("rb") as image:
            response = session.post(f"{base}/new", params=params, data=image, timeout=60)
    except OSError as exc:
        print(f"darkroom: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"darkroom: upload refused: {_error(response)}", file=sys.stderr)
        return 1
    task_id = response.text.strip()
    print(f"job {task_id}", file=sys.stderr)
    deadline = time.monotonic() + timeout
    last_state = ""
    while True:
        # Long polling: the master answers once the job leaves the state last seen.
        asked = time.monotonic()
        wait = max(min(LONG_POLL_SECONDS, deadline - asked), 0) if last_state else 0
        params = {"id": task_id, "wait": wait, "state": last_state or None}
        status = session.get(f"{base}/status", params=params, timeout=wait + 30)
        if status.status_code != 200:
            print(f"darkroom: {_error(status)}", file=sys.stderr)
            return 1
        task = status.json()
        changed = task["stateName"] != last_state
        if changed:
            last_state = task["stateName"]
            print(f"  {last_state} (attempt {task['attempts']})", file=sys.stderr)
        if last_state == "failed":
            print(f"darkroom: job failed: {task['error']}", file=sys.stderr)
            return 1
        if last_state == "finished":
            break
        if time.monotonic() > deadline:
            print(f"darkroom: still {last_state} after {timeout:g} s", file=sys.stderr)
            return 1
        if not changed and time.monotonic() - asked < 1:
            time.sleep(POLL_SECONDS)  # answered at once (the master is busy): do not spin
    with session.get(f"{base}/get", params={"id": task_id}, stream=True, timeout=60) as result:
        if result.status_code != 200:
            print(f"darkroom: download failed: {_error(result)}", file=sys.stderr)
            return 1
        extension = result.headers.get("Content-Type", "image/png").rsplit("/", 1)[-1]
        output = output or file.with_name(f"{file.stem}-darkroom.{extension}")
        with output.open("wb") as out:
            for chunk in result.iter_content(256 * 1024):
                out.write(chunk)
    print(str(output))
    return 0

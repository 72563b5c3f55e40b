"""``darkroom submit``: upload an image to the master, follow the job, save the result;
``darkroom cancel``: cancel a job.

On a terminal, tqdm shows the upload in bytes and the time waited; elsewhere only the job's
state changes are written, one line each. An upload carries an Idempotency-Key of its own, and
is sent again with the same key when the master was out of reach or busy: a try that reached it
but whose answer was lost gives the same job, not a second one.
"""

from __future__ import annotations

import mimetypes
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

from darkroom.contract.pipeline import MEDIA_TYPES
from darkroom.contract.tasks import IDEMPOTENCY_KEY_HEADER

POLL_SECONDS = 0.2
LONG_POLL_SECONDS = 25.0
# On a terminal the master is asked every second, so the elapsed time shown moves.
PROGRESS_POLL_SECONDS = 1.0
CHUNK_BYTES = 256 * 1024
# Waits before sending an upload again (one try more than there are waits), when the master
# was out of reach, timed out, or answered one of RETRIED_STATUSES.
UPLOAD_RETRY_DELAYS = (0.5, 1.0, 2.0)
RETRIED_STATUSES = frozenset({502, 503, 504})
# A 409 worth waiting out: the master is still storing an earlier try of this upload.
UPLOAD_IN_PROGRESS = "Upload in progress"


class SubmitError(Exception):
    """What went wrong, worded for the user."""


def _error(response: requests.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body.get('title', '')}: {body.get('description', '')}"
    except ValueError:
        return f"{response.status_code} {response.text.strip()[:300]}"


def _bar(show: bool, **kwargs: Any) -> tqdm:
    return tqdm(disable=not show, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _byte_bar(show: bool, desc: str, total: int | None) -> tqdm:
    return _bar(show, desc=desc, total=total, unit="B", unit_scale=True, unit_divisor=1024)


def _session(api_key: str | None) -> requests.Session:
    session = requests.Session()
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def submit(
    file: Path,
    output: Path | None,
    master: str,
    op: str | None,
    timeout: float,
    api_key: str | None = None,
    progress: bool | None = None,
    retry_delays: Sequence[float] = UPLOAD_RETRY_DELAYS,
    *,
    webhook: str | None = None,
) -> int:
    """Upload ``file``, wait up to ``timeout`` s, save the result; the exit code.

    ``progress``: show bars (default: when stderr is a terminal). ``webhook``: the URL the
    master POSTs the job's status to when it ends.
    """
    session = _session(api_key)
    show = sys.stderr.isatty() if progress is None else progress
    base = f"http://{master}"

    def run() -> str:
        params = {"op": op, "webhook": webhook}
        task_id = _upload(session, base, file, params, show, retry_delays)
        print(f"job {task_id}", file=sys.stderr)
        _wait_finished(session, base, task_id, timeout, show)
        return str(_download(session, base, task_id, output or file, output is None, show))

    return _run(master, run)


def cancel(task_id: str, master: str, api_key: str | None = None) -> int:
    """Cancel the job ``task_id``; the exit code."""
    session = _session(api_key)

    def run() -> str:
        response = session.post(f"http://{master}/cancel", params={"id": task_id}, timeout=30)
        if response.status_code != 200:
            raise SubmitError(f"job {task_id} not cancelled: {_error(response)}")
        return f"job {task_id} {response.json()['stateName']}"

    return _run(master, run)


def _run(master: str, action: Callable[[], str]) -> int:
    """Run ``action`` and print what it answers; its errors worded for the user; the exit code."""
    try:
        answer = action()
    except requests.ConnectionError:
        print(f"darkroom: the master at {master} is unreachable (is it running?)", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"darkroom: the master at {master} did not answer: {exc}", file=sys.stderr)
        return 1
    except SubmitError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output file
        print(f"darkroom: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(answer)
    return 0


def _upload(
    session: requests.Session,
    base: str,
    file: Path,
    params: dict[str, str | None],
    show: bool,
    retry_delays: Sequence[float],
) -> str:
    """The job id; the upload sent again, with the same Idempotency-Key, after each delay."""
    key = str(uuid.uuid4())
    for delay in (*retry_delays, None):
        try:
            response = _send(session, base, file, params, show, key)
        except (requests.ConnectionError, requests.Timeout):
            if delay is None:
                raise
        else:
            if response.status_code == 200:
                return response.text.strip()
            if delay is None or not _worth_retrying(response):
                raise SubmitError(f"upload refused: {_error(response)}")
        tqdm.write(f"  upload not answered; sending it again in {delay:g} s", file=sys.stderr)
        time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")


def _send(
    session: requests.Session,
    base: str,
    file: Path,
    params: dict[str, str | None],
    show: bool,
    key: str,
) -> requests.Response:
    try:
        image = file.open("rb")
    except OSError as exc:
        raise SubmitError(f"cannot read {file}: {exc.strerror}") from exc
    size = os.fstat(image.fileno()).st_size
    params = {name: value for name, value in params.items() if value}
    with image, _byte_bar(show, "upload", size) as bar:
        # requests still sends a Content-Length: the wrapper passes fileno() through.
        body = CallbackIOWrapper(bar.update, image, "read")
        return session.post(
            f"{base}/new",
            params=params,
            data=body,
            headers={IDEMPOTENCY_KEY_HEADER: key},
            timeout=60,
        )


def _worth_retrying(response: requests.Response) -> bool:
    if response.status_code in RETRIED_STATUSES:
        return True
    if response.status_code != 409:
        return False
    try:
        return response.json().get("title") == UPLOAD_IN_PROGRESS
    except ValueError:
        return False


def _wait_finished(
    session: requests.Session, base: str, task_id: str, timeout: float, show: bool
) -> None:
    deadline = time.monotonic() + timeout
    longest_poll = PROGRESS_POLL_SECONDS if show else LONG_POLL_SECONDS
    last_state = ""
    with _bar(show, desc="waiting", bar_format="{desc} {elapsed}") as bar:
        while True:
            # Long polling: the master answers once the job leaves the state last seen.
            asked = time.monotonic()
            wait = max(min(longest_poll, deadline - asked), 0) if last_state else 0
            params = {"id": task_id, "wait": wait, "state": last_state or None}
            status = session.get(f"{base}/status", params=params, timeout=wait + 30)
            if status.status_code != 200:
                raise SubmitError(_error(status))
            task = status.json()
            changed = task["stateName"] != last_state
            if changed:
                last_state = task["stateName"]
                tqdm.write(f"  {last_state} (attempt {task['attempts']})", file=sys.stderr)
                bar.set_description(last_state)
            bar.refresh()
            if last_state == "failed":
                raise SubmitError(f"job failed: {task['error']}")
            if last_state == "cancelled":
                raise SubmitError("job cancelled")
            if last_state == "finished":
                for note in task.get("notes", []):  # metadata removed, an animation kept, ...
                    tqdm.write(f"  {note}", file=sys.stderr)
                return
            if time.monotonic() > deadline:
                raise SubmitError(f"still {last_state} after {timeout:g} s")
            if not changed and time.monotonic() - asked < min(longest_poll, 1):
                time.sleep(POLL_SECONDS)  # answered at once (the master is busy): do not spin


def _download(
    session: requests.Session, base: str, task_id: str, target: Path, derive: bool, show: bool
) -> Path:
    """Save the result to ``target``, or beside it with the result's extension (``derive``)."""
    with session.get(f"{base}/get", params={"id": task_id}, stream=True, timeout=60) as result:
        if result.status_code != 200:
            raise SubmitError(f"download failed: {_error(result)}")
        media_type = result.headers.get("Content-Type", "image/png").split(";")[0].strip()
        if derive:
            target = target.with_name(f"{target.stem}-darkroom.{media_type.rsplit('/', 1)[-1]}")
        else:
            _warn_if_other_format(target, media_type)
        length = result.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        with target.open("wb") as out, _byte_bar(show, "download", total) as bar:
            for chunk in result.iter_content(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    return target


# The output step that makes each media type, for the warning's advice.
_OUTPUT_STEPS = {media_type: name for name, media_type in MEDIA_TYPES.items()}


def _warn_if_other_format(target: Path, media_type: str) -> None:
    named, _ = mimetypes.guess_type(target.name)
    if named and named.startswith("image/") and named != media_type:
        step = _OUTPUT_STEPS.get(named)
        advice = f" (add {step} to --op to convert)" if step else ""
        print(
            f"darkroom: warning: the result is {media_type} but {target.name} names {named};"
            f" saved as {media_type}{advice}",
            file=sys.stderr,
        )

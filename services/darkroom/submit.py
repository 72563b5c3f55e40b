"""``darkroom submit``: upload an image to the master, follow the job, save the result;
``darkroom cancel``: cancel a job.

The job is followed over the master's ``/events`` (Server-Sent Events): a line for each state
change and for each processing stage with its duration; a stream that ends early or drops is
opened again with Last-Event-ID, and a master without ``/events`` (older) or with no stream free
is long-polled on ``/status`` instead. On a terminal, tqdm shows the upload in bytes and the
time waited, with the state and the stage reached.

An upload carries an Idempotency-Key of its own, and is sent again with the same key when the
master was out of reach or busy: a try that reached it but whose answer was lost gives the same
job, not a second one.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
import sseclient
import urllib3
from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

from darkroom.contract.events import MEDIA_EVENT_STREAM, EventKind
from darkroom.contract.pipeline import MEDIA_TYPES
from darkroom.contract.tasks import IDEMPOTENCY_KEY_HEADER, TaskState

POLL_SECONDS = 0.2
LONG_POLL_SECONDS = 25.0
# On a terminal the bar is redrawn this often, so the time waited moves between events.
BAR_REFRESH_SECONDS = 1.0
# Waits before opening /events again after a stream that ended early or dropped, one per try
# in a row (a stream that brought an event starts them over); then long polls take over.
EVENTS_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
# What an older master, without /events, answers.
EVENTS_MISSING = frozenset({404, 405})
# A comment comes every 15 s on an idle stream: this long without a byte is a dead connection.
STREAM_READ_SECONDS = 35.0
STREAM_CHUNK_BYTES = 16 * 1024
# A stream dropped: requests' errors while connecting, urllib3's while reading the body.
STREAM_ERRORS = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError)
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
    event_retry_delays: Sequence[float] = EVENTS_RETRY_DELAYS,
) -> int:
    """Upload ``file``, wait up to ``timeout`` s, save the result; the exit code.

    ``progress``: show bars (default: when stderr is a terminal). ``webhook``: the URL the
    master POSTs the job's status to when it ends. ``retry_delays``, ``event_retry_delays``:
    the waits before sending the upload again, and before opening /events again.
    """
    session = _session(api_key)
    show = sys.stderr.isatty() if progress is None else progress
    base = f"http://{master}"

    def run() -> str:
        params = {"op": op, "webhook": webhook}
        task_id = _upload(session, base, file, params, show, retry_delays)
        print(f"job {task_id}", file=sys.stderr)
        _wait_finished(session, base, task_id, _Deadline(timeout), show, event_retry_delays)
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


class _Deadline:
    """The end of the wait for the job (``--timeout``)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def check(self, state: str) -> None:
        if time.monotonic() > self.at:
            raise SubmitError(f"still {state or 'waiting'} after {self.timeout:g} s")


class _Progress:
    """What the user sees of the job: a line per state change and per stage, and the bar's
    description naming the state and the stage reached."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.state = ""

    def state_changed(self, state: str, detail: str = "") -> bool:
        """Show ``state`` if it is new; whether it was."""
        if state == self.state:
            return False
        self.state = state
        tqdm.write(f"  {state}{detail}", file=sys.stderr)
        self.bar.set_description(state)
        return True

    def stage_done(self, name: str, duration_ms: float) -> None:
        tqdm.write(f"    {name} {_milliseconds(duration_ms)}", file=sys.stderr)
        self.bar.set_description(f"{self.state}: {name}")


def _milliseconds(ms: float) -> str:
    """A stage's duration as the web page words it: 0.6 ms, 12 ms, 1.3 s."""
    return f"{ms:.{1 if ms < 10 else 0}f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _wait_finished(
    session: requests.Session,
    base: str,
    task_id: str,
    deadline: _Deadline,
    show: bool,
    retry_delays: Sequence[float],
) -> None:
    """Follow the job until it ends, over /events, or with long polls where the master does
    not stream; SubmitError unless it finished."""
    with _bar(show, desc="waiting", bar_format="{desc} {elapsed}") as bar, _ticking(bar, show):
        progress = _Progress(bar)
        try:
            _follow_events(session, f"{base}/events", task_id, deadline, progress, retry_delays)
        except _EventsUnavailable as exc:
            if exc.reason:
                tqdm.write(f"  {exc.reason}: following the job with long polls", file=sys.stderr)
        # The end state's facts (the error, the notes) are in /status, not in the events.
        _poll_status(session, base, task_id, deadline, progress)


@contextlib.contextmanager
def _ticking(bar: tqdm, show: bool) -> Iterator[None]:
    """Redraw the bar every second while the job is followed, so the time waited moves."""
    if not show:
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(BAR_REFRESH_SECONDS):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="darkroom-submit-bar", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


class _EventsUnavailable(Exception):
    """The master does not stream the job's events: follow it with long polls instead.

    ``reason``: why, worth telling the user (empty for an older master without /events)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def _follow_events(
    session: requests.Session,
    url: str,
    task_id: str,
    deadline: _Deadline,
    progress: _Progress,
    retry_delays: Sequence[float],
) -> None:
    """Show the job's events until one tells it ended; a stream that ended early or dropped is
    opened again with Last-Event-ID, after each of ``retry_delays`` in a row at most."""
    last_id = ""
    delays = iter(retry_delays)
    while True:
        try:
            for event in _stream(session, url, task_id, last_id, deadline, progress):
                last_id = event.id or last_id
                delays = iter(retry_delays)  # it moved on: a later drop gets every retry
                if _show(event, progress):
                    return
        except _JobEnded:
            return
        except (_StreamEnded, *STREAM_ERRORS):
            pass  # ended early, or dropped
        delay = next(delays, None)
        if delay is None:
            raise _EventsUnavailable("the event stream keeps failing")
        time.sleep(min(delay, deadline.remaining()))
        deadline.check(progress.state)


class _JobEnded(Exception):
    """The master has no events after Last-Event-ID and the job has ended (204)."""


class _StreamEnded(Exception):
    """The stream ended before the job did."""


def _stream(
    session: requests.Session,
    url: str,
    task_id: str,
    last_id: str,
    deadline: _Deadline,
    progress: _Progress,
) -> Iterator[sseclient.Event]:
    """The events of one connection to /events, after ``last_id``."""
    headers = {"Accept": f"{MEDIA_EVENT_STREAM}, application/json"}  # JSON: a refusal
    if last_id:
        headers["Last-Event-ID"] = last_id
    # The master writes a comment on an idle stream every 15 s: silence longer than the read
    # timeout is a dead connection (and the read timeout never outlasts the deadline).
    read_timeout = max(min(STREAM_READ_SECONDS, deadline.remaining()), 0.1)
    with session.get(
        url, params={"id": task_id}, headers=headers, stream=True, timeout=(30, read_timeout)
    ) as response:
        if response.status_code == 204:
            raise _JobEnded
        if response.status_code in EVENTS_MISSING:
            raise _EventsUnavailable()
        if response.status_code == 503:
            raise _EventsUnavailable(f"no event stream free ({_error(response)})")
        if response.status_code != 200:
            raise SubmitError(_error(response))
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type != MEDIA_EVENT_STREAM:
            raise _EventsUnavailable(f"/events answered {media_type or 'no content type'}")
        # read1: what has arrived, where iter_content waits for a whole chunk of a stream that
        # is not chunked (HTTP/1.0, a proxy's)
        arrived = iter(lambda: response.raw.read1(STREAM_CHUNK_BYTES, decode_content=True), b"")
        yield from sseclient.SSEClient(_until(arrived, deadline, progress)).events()


def _until(chunks: Iterator[bytes], deadline: _Deadline, progress: _Progress) -> Iterator[bytes]:
    """The chunks, checking the deadline at each (the master's keep-alive comments too), then
    _StreamEnded: raised, not returned, so that SSEClient does not hand on as an event what
    the end of the stream cut off (its id would be taken as read; EventSource drops it too)."""
    for chunk in chunks:
        deadline.check(progress.state)
        yield chunk
    raise _StreamEnded


def _show(event: sseclient.Event, progress: _Progress) -> bool:
    """Show one event; whether it tells the job ended. Other kinds and bad data are skipped."""
    try:
        data = json.loads(event.data)
        if event.event == EventKind.STATE:
            progress.state_changed(data["state"])
            return TaskState.parse(data["state"]).ended
        if event.event == EventKind.STAGE:
            progress.stage_done(data["stage"], float(data["durationMs"]))
    except (ValueError, TypeError, KeyError):
        pass
    return False


def _poll_status(
    session: requests.Session,
    base: str,
    task_id: str,
    deadline: _Deadline,
    progress: _Progress,
) -> None:
    """Long-poll /status until the job ends (at once when the events said so)."""
    asked_once = False
    while True:
        # Long polling: the master answers once the job leaves the state last seen.
        asked = time.monotonic()
        wait = min(LONG_POLL_SECONDS, deadline.remaining()) if asked_once else 0
        params = {"id": task_id, "wait": wait, "state": progress.state or None}
        status = session.get(f"{base}/status", params=params, timeout=wait + 30)
        asked_once = True
        if status.status_code != 200:
            raise SubmitError(_error(status))
        task = status.json()
        changed = progress.state_changed(task["stateName"], f" (attempt {task['attempts']})")
        progress.bar.refresh()
        if progress.state == "failed":
            raise SubmitError(f"job failed: {task['error']}")
        if progress.state == "cancelled":
            raise SubmitError("job cancelled")
        if progress.state == "finished":
            for note in task.get("notes", []):  # metadata removed, an animation kept, ...
                tqdm.write(f"  {note}", file=sys.stderr)
            return
        deadline.check(progress.state)
        if not changed and time.monotonic() - asked < 1:
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

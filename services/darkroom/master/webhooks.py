"""Job webhooks: the URL checked at upload, and the deliveries the masters make when jobs end.

The pending delivery is in the task store, made due in the transaction that ends its job.
Every master runs a few delivery loops; each claims a due delivery under a lease, POSTs the
job's status document, signed (``core/signatures.py``), to the URL checked again at that
moment (``core/ssrf.py``), and reports the outcome. A master that dies mid-attempt leaves the
delivery to be claimed again when the lease runs out: at least once, never lost.

Each master counts its attempts and the deliveries it ended (``WebhookMetrics``):
``darkroom_webhook_attempts_total{result}`` (delivered, refused: the receiver answered
another status, failed: no answer), ``darkroom_webhook_attempt_duration_seconds`` and
``darkroom_webhook_deliveries_ended_total{outcome}`` (delivered, gone: the receiver answered
410, given_up: retried for ``webhook_retry_seconds``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from prometheus_client import CollectorRegistry, Counter, Histogram

from darkroom import __version__
from darkroom.contract.errors import ServiceConflict, ServiceError
from darkroom.contract.webhooks import MAX_ATTEMPT_ERROR_CHARS, Attempt
from darkroom.core.backoff import Backoff
from darkroom.core.config import Config
from darkroom.core.signatures import WebhookSigner
from darkroom.core.ssrf import (
    AddressPolicy,
    BoundedResolver,
    IPAddress,
    Resolver,
    Target,
    TargetError,
    checked_addresses,
    parse_target,
    post,
    resolve,
)
from darkroom.database.client import DatabaseClient

log = logging.getLogger(__name__)

# Retry delays double up to this (before the jitter): an hour, as Standard Webhooks' own
# schedule ends in hours between attempts.
MAX_BACKOFF_SECONDS = 3600.0
# An idle delivery loop asks the database for due deliveries this often.
POLL_SECONDS = 1.0
# Gone: the receiver says it wants no more (the specification's answer to stop retrying).
GONE = 410


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """``Config.settings_for(WebhookSettings)`` builds it; the defaults and reasons are Config's."""

    webhook_secret: str = dataclasses.field(default=Config.webhook_secret, repr=False)
    webhook_allow: str = Config.webhook_allow
    webhook_deny: str = Config.webhook_deny
    webhook_allow_http: bool = Config.webhook_allow_http
    webhook_retry_seconds: float = Config.webhook_retry_seconds
    webhook_backoff_seconds: float = Config.webhook_backoff_seconds
    webhook_timeout_seconds: float = Config.webhook_timeout_seconds
    webhook_concurrency: int = Config.webhook_concurrency


class WebhookGuard:
    """Which webhook URLs may be used, checked at upload and again before every attempt."""

    def __init__(self, settings: WebhookSettings, resolver: Resolver | None = None) -> None:
        self.signer = WebhookSigner(settings.webhook_secret)
        self._policy = AddressPolicy.build(settings.webhook_deny, settings.webhook_allow)
        self._allow_http = settings.webhook_allow_http
        self._resolver = resolver or BoundedResolver(resolve, settings.webhook_timeout_seconds)

    @property
    def enabled(self) -> bool:
        """Whether webhooks are on: only with a secret to sign them with."""
        return bool(self.signer)

    def check(self, url: str) -> tuple[Target, list[IPAddress]]:
        """The URL's target and the addresses to send to; InvalidTarget or RefusedTarget."""
        target = parse_target(url, self._allow_http)
        return target, checked_addresses(target, self._policy, self._resolver)


def retry_delay(attempts: int, base: float, rng: random.Random) -> float:
    """The wait before the next attempt after ``attempts`` failed ones: exponential backoff
    with full jitter (uniform below ``base * 2**(attempts-1)``, capped)."""
    ceiling = min(MAX_BACKOFF_SECONDS, base * 2 ** min(attempts - 1, 32))
    return rng.uniform(0, ceiling)


def status_body(task: dict[str, Any]) -> str:
    """What a webhook sends: the job's ``/status`` document (without its storage detail, as
    ``/status`` answers it), as compact JSON."""
    document = {key: value for key, value in task.items() if key not in ("result", "webhook")}
    return json.dumps(document, separators=(",", ":"))


class WebhookSender:
    """One attempt: check the URL again, sign, POST, and say what came of it."""

    def __init__(
        self,
        guard: WebhookGuard,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guard = guard
        self._timeout = timeout
        self._clock = clock

    def send(self, url: str, message_id: str, body: str) -> Attempt:
        started = self._clock()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Darkroom-Webhooks/{__version__}",
            **self._guard.signer.headers(message_id, int(started), body),
        }
        try:
            target, addresses = self._guard.check(url)
            status = post(target, addresses, body.encode(), headers, self._timeout)
        except TargetError as exc:
            return Attempt(started, error=_short(str(exc)))
        except Exception as exc:  # whatever it was, an attempt recorded: retried, in time given up
            return Attempt(started, error=_short(_reason(exc)))
        return Attempt(started, status=status)


def _reason(exc: Exception) -> str:
    """A failed attempt's error in a few words (urllib3 wraps the cause in its own errors)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # type: ignore[assignment]
    # NewConnectionError is a ConnectTimeoutError too, for urllib3's history: it comes first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection failed: " + str(exc).rsplit(":", 1)[-1].strip()
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _short(text: str) -> str:
    return text[:MAX_ATTEMPT_ERROR_CHARS]


# An attempt waits up to three webhook timeouts (10 s by default): buckets up to a minute.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WebhookMetrics:
    """What a master's delivery loops report (every label from a fixed set)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Counter(
            "darkroom_webhook_attempts",
            "Webhook attempts by result: delivered (2xx), refused (another status), failed "
            "(no answer: refused address, connection, TLS or time-out).",
            ["result"],
            registry=registry,
        )
        self.duration = Histogram(
            "darkroom_webhook_attempt_duration_seconds",
            "Time an attempt took, from its address check to the receiver's status.",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.ended = Counter(
            "darkroom_webhook_deliveries_ended",
            "Deliveries this master ended: delivered, gone (the receiver answered 410) or "
            "given_up (failed until the retry period ran out).",
            ["outcome"],
            registry=registry,
        )
        for result in ("delivered", "refused", "failed"):
            self.attempts.labels(result)  # shown at 0 from the start, for rate() and alerts
        for outcome in ("delivered", "gone", "given_up"):
            self.ended.labels(outcome)

    def attempted(self, attempt: Attempt, seconds: float, retry_in: float | None) -> None:
        """One attempt made and reported; ``retry_in`` None: the delivery ended with it."""
        if attempt.delivered:
            result = "delivered"
        elif attempt.status is None:
            result = "failed"
        else:
            result = "refused"
        self.attempts.labels(result).inc()
        self.duration.observe(seconds)
        if retry_in is not None:
            return
        if attempt.delivered:
            self.ended.labels("delivered").inc()
        elif attempt.status == GONE:
            self.ended.labels("gone").inc()
        else:
            self.ended.labels("given_up").inc()


class Deliveries:
    """The master's delivery loops: ``concurrency`` threads, each claiming one due delivery at
    a time, until ``stop``."""

    def __init__(
        self,
        database: DatabaseClient,
        sender: WebhookSender,
        settings: WebhookSettings,
        stop: threading.Event,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self._database = database
        self._sender = sender
        self._metrics = metrics or WebhookMetrics()
        self._retry_seconds = settings.webhook_retry_seconds
        self._backoff_seconds = settings.webhook_backoff_seconds
        self._concurrency = settings.webhook_concurrency
        # Longer than an attempt can take (resolution, connection, reads), with room to spare.
        self._lease_seconds = max(3 * settings.webhook_timeout_seconds + 10, 30)
        self._stop = stop
        self._rng = rng or random.Random()
        self._clock = clock
        self._threads: list[threading.Thread] = []

    def deliver_one(self) -> bool:
        """Claim a due delivery, make one attempt, report it; False when none was due."""
        delivery = self._database.claim_delivery(self._lease_seconds)
        if delivery is None:
            return False
        task_id = delivery["id"]
        started = time.monotonic()  # not the attempt's epoch time: the wall clock may step
        attempt = self._sender.send(
            delivery["url"], delivery["messageId"], status_body(delivery["task"])
        )
        took = time.monotonic() - started
        retry_in = self._retry_in(delivery, attempt)
        try:
            self._database.report_delivery(task_id, delivery["lease"], attempt, retry_in)
        except ServiceConflict:
            # The attempt outlived its lease and another master took the delivery over.
            log.warning("webhook lease lost", extra={"task": task_id})
            return True
        self._metrics.attempted(attempt, took, retry_in)
        log.info(
            "webhook attempt",
            extra={
                "task": task_id,
                "attempt": delivery["attempts"] + 1,
                "status": attempt.status,
                "error": attempt.error,
                "retry_in": retry_in,
            },
        )
        return True

    def _retry_in(self, delivery: dict[str, Any], attempt: Attempt) -> float | None:
        """When to try again after ``attempt``: None to stop (delivered, gone, out of time)."""
        if attempt.delivered or attempt.status == GONE:
            return None
        delay = retry_delay(delivery["attempts"] + 1, self._backoff_seconds, self._rng)
        if self._clock() + delay > delivery["endedAt"] + self._retry_seconds:
            return None
        return delay

    def _run(self) -> None:
        backoff = Backoff(first=POLL_SECONDS, cap=30.0)
        while not self._stop.is_set():
            try:
                if self.deliver_one():
                    backoff.reset()
                    continue
                self._stop.wait(POLL_SECONDS)
            except ServiceError as exc:  # the database is away: its leases keep the deliveries
                delay = backoff.next()
                log.warning(
                    "webhook deliveries paused",
                    extra={"error": exc.description, "retry_in": delay},
                )
                self._stop.wait(delay)
            except Exception:
                log.exception("webhook delivery failed")
                self._stop.wait(backoff.next())

    def start(self) -> None:
        for number in range(self._concurrency):
            thread = threading.Thread(target=self._run, name=f"webhooks-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loops; an attempt in flight is left to its lease (claimed again later)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))

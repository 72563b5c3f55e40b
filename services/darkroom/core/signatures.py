"""Webhook signatures as the Standard Webhooks specification says, with its own library.

``webhook-signature`` is ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``. Several
secrets (space-separated in ``DARKROOM_WEBHOOK_SECRET``) are the specification's rotation:
each signs, and the header lists their signatures space-separated, so a receiver that knows
any one of them verifies the message while secrets are being changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import standardwebhooks

VerificationError = standardwebhooks.WebhookVerificationError


class WebhookSigner:
    """Signs with every secret of ``secrets``; verifies against any of them."""

    def __init__(self, secrets: str, setting: str = "DARKROOM_WEBHOOK_SECRET") -> None:
        self._webhooks = []
        for number, secret in enumerate(secrets.split(), 1):
            try:
                self._webhooks.append(standardwebhooks.Webhook(secret))
            except (ValueError, standardwebhooks.webhooks.EmptyWebhookSecretError) as exc:
                raise ValueError(
                    f"{setting}: secret {number} is not base64 (whsec_ followed by base64): {exc}"
                ) from None

    def __bool__(self) -> bool:
        return bool(self._webhooks)

    def headers(self, message_id: str, timestamp: int, body: str) -> dict[str, str]:
        """The three headers that go with ``body``, sent at ``timestamp`` (epoch seconds)."""
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
        signatures = [webhook.sign(message_id, moment, body) for webhook in self._webhooks]
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }

    def verify(self, body: str, headers: Mapping[str, str]) -> None:
        """Raise VerificationError unless one of the signatures is one of the secrets', over
        ``body``, with a timestamp within the specification's 5 minutes of now."""
        if not self._webhooks:
            raise VerificationError("no secret to verify with")
        reason = "no matching signature found"
        for webhook in self._webhooks:
            try:
                webhook.verify(body, dict(headers), json_parse=False)
                return
            except VerificationError as exc:
                reason = str(exc)
            except ValueError as exc:  # a signature the library cannot split or decode
                raise VerificationError(f"malformed webhook-signature: {exc}") from None
        raise VerificationError(reason)
